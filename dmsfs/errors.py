"""The dmsfs error tree.

Every error the core raises on purpose is a DmsfsError.  Each class carries its
own mapping, used in exactly one place per interface: ``errno`` by the FUSE
adapter, ``status`` and ``code`` by the control API, ``exit_code`` by dmsctl.
The class docstring is the default message.
"""

from __future__ import annotations

import errno as _errno


class DmsfsError(Exception):
    """Internal error."""

    errno: int = _errno.EIO
    code: str = "internal"
    status: int = 500
    exit_code: int = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.code).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class NotFound(DmsfsError):
    """No such file, directory or object."""

    errno, code, status = _errno.ENOENT, "not_found", 404


class Exists(DmsfsError):
    """Already exists."""

    errno, code, status = _errno.EEXIST, "exists", 409


class NotEmpty(DmsfsError):
    """Directory not empty."""

    errno, code, status = _errno.ENOTEMPTY, "not_empty", 409


class NotADirectory(DmsfsError):
    """Not a directory."""

    errno, code, status = _errno.ENOTDIR, "not_a_directory", 400


class IsADirectory(DmsfsError):
    """Is a directory."""

    errno, code, status = _errno.EISDIR, "is_a_directory", 400


class InvalidArgument(DmsfsError):
    """Invalid argument."""

    errno, code, status = _errno.EINVAL, "invalid", 400


class InvalidName(InvalidArgument):
    """Name reserved or invalid."""

    code = "invalid_name"


class SchemaRejected(InvalidArgument):
    """The data does not match the dataset's schema."""

    code = "schema_rejected"


class NameTooLong(DmsfsError):
    """File name longer than 255 bytes."""

    errno, code, status = _errno.ENAMETOOLONG, "name_too_long", 400


class ReadOnly(DmsfsError):
    """Read-only: snapshots and read-only mounts cannot change."""

    errno, code, status = _errno.EROFS, "read_only", 409


class PermissionDenied(DmsfsError):
    """Permission denied."""

    errno, code, status = _errno.EACCES, "permission_denied", 403


class NotPermitted(DmsfsError):
    """Operation not permitted."""

    errno, code, status = _errno.EPERM, "not_permitted", 403


class CrossDataset(DmsfsError):
    """Cannot move across datasets."""

    errno, code, status = _errno.EXDEV, "cross_dataset", 400


class NoAttribute(DmsfsError):
    """No such extended attribute."""

    errno, code, status = _errno.ENODATA, "no_attribute", 404


class NotSupported(DmsfsError):
    """Operation not supported."""

    errno, code, status = _errno.EOPNOTSUPP, "not_supported", 400


class NoSpace(DmsfsError):
    """No space left on the local disk."""

    errno, code, status = _errno.ENOSPC, "no_space", 507


class Corrupt(DmsfsError):
    """A stored object is damaged."""

    errno, code, status = _errno.EIO, "corrupt", 500


class StoreError(DmsfsError):
    """The object store failed."""

    errno, code, status = _errno.EIO, "store_error", 503


class NoSuchObject(NotFound):
    """No such object in the store."""

    errno, code = _errno.EIO, "no_such_object"


class LeaseHeld(DmsfsError):
    """Another daemon holds the store's writer lease."""

    code, status = "lease_held", 409


class StoreConfigError(DmsfsError):
    """The store cannot be opened with this configuration."""

    code, exit_code = "store_config", 2


class UsageError(DmsfsError):
    """Usage error."""

    errno, code, status, exit_code = _errno.EINVAL, "usage", 400, 2


class Unreachable(DmsfsError):
    """The daemon cannot be reached."""

    code, status, exit_code = "unreachable", 503, 2


def out_of_space(exc: BaseException) -> bool:
    """Whether exc says a local disk is full (a condition to wait out, not a bug)."""
    return isinstance(exc, NoSpace) or (
        isinstance(exc, OSError) and exc.errno in (_errno.ENOSPC, _errno.EDQUOT))


def from_code(code: str) -> type[DmsfsError]:
    """The error class a control-API error code names (DmsfsError if unknown)."""
    return _BY_CODE.get(code, DmsfsError)


def _all(cls: type[DmsfsError]) -> list[type[DmsfsError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _all(sub))]


_BY_CODE = {cls.code: cls for cls in _all(DmsfsError)}
