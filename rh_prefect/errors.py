"""One exception hierarchy for the whole package.

Every error a user can trigger is an :class:`RhError`; each message says what went wrong *and* what to do
next. Messages never contain secret values: credentials are held in ``SecretStr`` fields and only their
field names are ever mentioned.
"""

from __future__ import annotations


class RhError(Exception):
    """Base class of every error raised by rh_prefect."""


class InvalidName(RhError, ValueError):
    """A resource name cannot be used (bad characters, empty, reserved)."""


class InvalidPath(RhError, ValueError):
    """A path or a key inside a folder is not acceptable (``..``, NUL, absolute where relative is needed)."""


class UnknownSystem(RhError, ValueError):
    """The ``system=`` argument names no known storage system."""


class NotFound(RhError, LookupError):
    """A named resource, file, bucket or path does not exist."""


class AlreadyExists(RhError, FileExistsError):
    """A write would overwrite something and ``overwrite=False`` was asked for."""


class ReadOnlySystem(RhError, PermissionError):
    """A write was attempted on a system that is read-only (GitHub)."""


class SystemUnavailable(RhError, ConnectionError):
    """A host or endpoint did not answer (cluster down, server unreachable).

    ``transient`` says whether trying again soon may help. True (the default): a connection to an endpoint that
    answered before was lost, and the retry policy retries. False: the endpoint has not answered once in this
    process (a wrong address or port, a host that is down), so it fails at once instead of making the user wait
    through retries.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class CredentialsError(RhError, PermissionError):
    """Credentials are missing or were refused."""


class HostKeyMismatch(RhError, PermissionError):
    """An SSH host presented a key that is not the one we trust."""


class IntegrityError(RhError):
    """Stored bytes do not match their recorded checksum or size."""


class TransferError(RhError):
    """A copy failed for some files; ``failures`` maps each relative path to its error."""

    def __init__(self, message: str, failures: dict[str, BaseException] | None = None):
        super().__init__(message)
        self.failures = dict(failures or {})


class SchemaMismatch(RhError, ValueError):
    """Rows appended to a table do not have the table's columns and types; the message names the differences."""


class InvalidArgument(RhError, ValueError, TypeError):
    """An argument's value or type is not acceptable (e.g. ``batch_size <= 0``, an unknown format or write mode,
    an int where bytes are needed). Also a ``TypeError``, so ``except TypeError`` around a call keeps working."""


class MissingDependency(RhError, ImportError):
    """An optional package is needed for this operation; the message gives the ``pip install`` command."""


class ReadOnlyVersion(RhError, PermissionError):
    """A write, rollback, save or delete was attempted through a Table or Blob loaded at a fixed version
    (``version=...``): such a resource only reads that version."""


class Cancelled(RhError):
    """A copy was cancelled (its flow run, from Prefect) while it ran: it stopped before its next file. Files it
    committed stay, none is half-written; run the copy again to resume it."""
