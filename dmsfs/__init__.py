"""dmsfs: a dataset management system used through a FUSE filesystem."""

__version__ = "0.1.0"
