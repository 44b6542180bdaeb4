"""The one table of what to do per error class (errors.disposition): a copy's failure stops
the pass only when it dooms every other copy too, and `retryable` is the table's answer,
never a flag a class sets on its own."""

from __future__ import annotations

import pytest

from syncd import errors
from syncd.errors import (
    AccessDenied,
    BucketMissing,
    ConfigError,
    Conflict,
    Disposition,
    IntegrityError,
    Interrupted,
    LeaseHeld,
    LeaseLost,
    LeaseUnsupported,
    NoSpace,
    NotFound,
    NotS3,
    PreconditionFailed,
    SourceChanged,
    StoreError,
    SyncdError,
    TooLarge,
    Unreachable,
    UnsafeKey,
    disposition,
)


def _every_class() -> list[type[SyncdError]]:
    found, todo = [], [SyncdError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == errors.__name__]


@pytest.mark.parametrize(("exc", "expected"), [
    (Unreachable("down", key="a.bin"), Disposition.RETRY),
    (NotS3("a web page", store="s3://b/"), Disposition.RETRY),
    (NoSpace("full", key="a.bin"), Disposition.STOP),
    (LeaseLost("gen 3 is gone"), Disposition.STOP),
    (AccessDenied("bad keys", store="s3://b/"), Disposition.STOP),
    (BucketMissing("no bucket", store="s3://b/"), Disposition.STOP),
    (AccessDenied("one object's ACL", key="a.bin"), Disposition.SKIP),
    (NotFound("deleted since the listing", key="a.bin"), Disposition.SKIP),
    (TooLarge("does not fit", key="a.bin"), Disposition.SKIP),
    (PreconditionFailed("changed", key="a.bin"), Disposition.SKIP),
    (StoreError("odd answer", key="a.bin"), Disposition.SKIP),
    (UnsafeKey("../x"), Disposition.SKIP),
    (IntegrityError("crc mismatch", key="a.bin"), Disposition.RETRY_KEY),
    (Interrupted("reset", key="a.bin"), Disposition.RETRY_KEY),
    (SourceChanged("grew", key="a.bin"), Disposition.RETRY_KEY),
    (Conflict("409", key="lease.json"), Disposition.RETRY_KEY),
], ids=lambda v: type(v).__name__ if isinstance(v, SyncdError) else str(v))
def test_disposition_stops_the_pass_only_for_errors_that_doom_every_copy(
        exc: SyncdError, expected: Disposition) -> None:
    assert disposition(exc) is expected
    assert disposition(exc).stops_pass == (expected in (Disposition.RETRY, Disposition.STOP))


def test_disposition_retryable_is_what_the_lease_keeper_retries() -> None:
    """The keeper retries a backend that is down or held elsewhere, and gives up on one
    that cannot arbitrate or refuses syncd's writes."""
    assert Unreachable("down").retryable and LeaseHeld("held").retryable
    assert Conflict("409").retryable
    for fatal in (LeaseUnsupported("no conditional writes"), AccessDenied("denied"),
                  LeaseLost("lost"), ConfigError("bad field"), NoSpace("full")):
        assert not fatal.retryable and disposition(fatal).stops_pass


@pytest.mark.parametrize("cls", _every_class(), ids=lambda c: c.__name__)
def test_disposition_is_the_only_source_of_retryable(cls: type[SyncdError]) -> None:
    """No class keeps a flag of its own that could disagree with the table."""
    assert "retryable" not in vars(cls) or cls is SyncdError
    exc = cls.__new__(cls)
    exc.key = None  # type: ignore[attr-defined]
    assert exc.retryable == disposition(exc).retryable
