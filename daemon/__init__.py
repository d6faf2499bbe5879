"""The dmsfsd daemon: FUSE mount and control API over the dmsfs core."""
