"""The SyncdError tree: every failure a user can see, sorted by what the caller should do.

Foreign exceptions (botocore, OSError) are translated into this tree at the store edge, so the
CLI can print one line and pick an exit code without knowing which library failed. Messages
name the bucket, key or path involved and never a credential.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    ERROR = 1  # unexpected failure
    USAGE = 2  # bad command line
    CONFIG = 3  # invalid configuration
    DRIFT = 4  # `syncd check` found differences
    UNREACHABLE = 5  # endpoint could not be reached
    ACCESS = 6  # wrong credentials or permission denied
    NOT_FOUND = 7  # bucket or volume root missing
    NO_SPACE = 8  # destination full
    INTEGRITY = 9  # bytes did not match the checksum the source vouches for
    PARTIAL = 10  # some objects failed on their own (each reported); the rest was synced
    REFUSED = 11  # the plan was refused (delete guard); copies went ahead
    LEASE = 12  # write lease could not be held
    NOT_READY = 13  # `syncd wait`: the artifact was not published in time


class SyncdError(Exception):
    """Base of every error syncd reports; `hint` tells the operator what to do next."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    @property
    def retryable(self) -> bool:
        """Trying again later may succeed; from the table (`disposition`)."""
        return disposition(self).retryable


class ConfigError(SyncdError):
    exit_code = ExitCode.CONFIG

    def __init__(
        self, message: str, *, file: str | None = None, field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ": ".join(p for p in (file, field) if p)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file = file
        self.field = field


class ListenFailed(SyncdError):
    """The HTTP endpoint could not bind. Often passing (the previous process still holds the
    port during a restart), so it exits 1 and systemd's Restart=on-failure tries again,
    unlike a config error, which no restart can fix."""


class StoreError(SyncdError):
    """A store operation failed; `store` names the bucket or volume, `key` the object."""

    def __init__(
        self, message: str, *, store: str = "", key: str | None = None, hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.store = store
        self.key = key


class Unreachable(StoreError):
    exit_code = ExitCode.UNREACHABLE


class NotS3(Unreachable):
    """The endpoint answered, but not as S3: a web page, JSON, an empty body or XML of another
    kind where S3 sends a ListBucketResult, a PUT without the ETag S3 always returns. Usually
    a wrong endpoint_url or a proxy's page; S3 is not reached at that URL, so exit 5, and
    retried like an endpoint that is down (a proxy's page may go away). Never read as an
    empty listing or a stored object (issue 18)."""


class AccessDenied(StoreError):
    exit_code = ExitCode.ACCESS


class NotFound(StoreError):
    exit_code = ExitCode.NOT_FOUND


class BucketMissing(NotFound):
    """The bucket itself, not one key: never "absent, so create it"."""


class NoSpace(StoreError):
    exit_code = ExitCode.NO_SPACE


class TooLarge(StoreError):
    """One object cannot fit in the destination's free space (less its reserve): refused on
    its own, so everything that fits still moves; exit 10 like any per-file failure."""

    exit_code = ExitCode.PARTIAL


class PreconditionFailed(StoreError):
    """The store rejected a conditional write: someone else changed the object first."""


class Conflict(PreconditionFailed):
    """Another conditional write to the same object was in flight (S3 409): try again."""


class Interrupted(StoreError):
    """A transfer's byte stream broke part-way (reset, timeout): that object fails and is
    retried later; the endpoint itself answered, so the rest of the pass goes on."""


class NativeError(Interrupted):
    """The native engine failed without an S3 answer (connection, timeout, a reply it could
    not read): syncd's own path takes the download over."""


class SourceChanged(StoreError):
    """The source changed while it was read; nothing was published, try again later."""


class IntegrityError(StoreError):
    """Bytes did not match the checksum the source vouches for. Never published."""

    exit_code = ExitCode.INTEGRITY


class UnsafeKey(SyncdError):
    """An object key that would escape the volume root; skipped and counted, never written."""


class PlanRefused(SyncdError):
    """A guard refused part of a plan (deletes); copies went ahead, deletes wait."""

    exit_code = ExitCode.REFUSED


class PartialFailure(SyncdError):
    """Some actions failed; each was reported on its own line."""

    exit_code = ExitCode.PARTIAL


class NotReady(SyncdError):
    """An artifact is not (yet) published and verified on the volume."""

    exit_code = ExitCode.NOT_READY


class LeaseError(SyncdError):
    exit_code = ExitCode.LEASE


class LeaseHeld(LeaseError):
    """Another instance holds the lease: it may be free later."""


class LeaseLost(LeaseError):
    """Terminal for the holder: it must stop writing at once."""


class LeaseUnsupported(LeaseError):
    """The store cannot arbitrate a lease safely (e.g. ignores conditional writes)."""



class Disposition(StrEnum):
    """What the caller does with an error (rclone's fserrors sorts errors the same way).
    SKIP and RETRY_KEY concern one key: it fails on its own line, the rest of the pass goes
    on. RETRY and STOP concern the whole store or lease: the pass stops and reports it."""

    SKIP = "skip"  # this key fails; it fails again until something about it changes
    RETRY_KEY = "retry_key"  # this key fails; a later attempt may well succeed
    RETRY = "retry"  # the pass stops; after a backoff it may succeed (endpoint down, lease held)
    STOP = "stop"  # the pass stops; no retry helps until an operator acts

    @property
    def stops_pass(self) -> bool:
        return self in (Disposition.RETRY, Disposition.STOP)

    @property
    def retryable(self) -> bool:
        return self in (Disposition.RETRY_KEY, Disposition.RETRY)


_D = Disposition
# The one table. A class's nearest ancestor in it decides. Store errors may answer twice:
# about one key, and about the whole store (no key: credentials, the bucket or volume root).
#   class                (about one key,  about the store)
_TABLE: dict[type[SyncdError], tuple[Disposition, Disposition]] = {
    SyncdError:            (_D.SKIP,      _D.SKIP),
    ConfigError:           (_D.STOP,      _D.STOP),
    Unreachable:           (_D.RETRY,     _D.RETRY),  # NotS3 too: a proxy's page may go away
    NoSpace:               (_D.STOP,      _D.STOP),  # not TooLarge: that one object only
    AccessDenied:          (_D.SKIP,      _D.STOP),
    NotFound:              (_D.SKIP,      _D.STOP),  # BucketMissing never names a key
    Conflict:              (_D.RETRY_KEY, _D.RETRY_KEY),
    Interrupted:           (_D.RETRY_KEY, _D.RETRY_KEY),
    SourceChanged:         (_D.RETRY_KEY, _D.RETRY_KEY),
    IntegrityError:        (_D.RETRY_KEY, _D.RETRY_KEY),  # never published
    LeaseError:            (_D.STOP,      _D.STOP),  # LeaseUnsupported, an unwritable lease
    LeaseHeld:             (_D.RETRY,     _D.RETRY),
    LeaseLost:             (_D.STOP,      _D.STOP),  # terminal for the holder
}


def disposition(exc: SyncdError) -> Disposition:
    """What to do about `exc`: the table's row for its nearest listed ancestor."""
    for cls in type(exc).__mro__:
        row = _TABLE.get(cls)
        if row is not None:
            return row[0] if getattr(exc, "key", None) is not None else row[1]
    raise AssertionError("SyncdError is in the table")


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report for a failed TaskGroup: the first SyncdError leaf, else the first
    leaf. Sibling tasks cancelled because of it are not the story."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, SyncdError)), leaves[0])
