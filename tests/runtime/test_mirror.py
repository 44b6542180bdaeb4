"""syncd.runtime.mirror's memory of what is still unsynced: the replication-lag metric.

Lag is the age of the oldest change the daemon knows it has not synced. It must keep its
first-seen time across passes (a file that fails every pass is old, not new each time), drop
what was synced, and grow while whole passes fail.
"""

from __future__ import annotations

from syncd import status
from syncd.errors import IntegrityError, Unreachable
from syncd.listing import Entry
from syncd.plan import Copy, Plan, Reason, Skip
from syncd.runtime.mirror import note_pending
from syncd.runtime.passes import FAILING, Memory
from syncd.status import ArtifactStatus, MirrorStatus
from syncd.transfer import Stats


def _plan(*held: str) -> Plan:
    return Plan([Copy("done.bin", Reason.NEW, Entry("done.bin", 1)),
                 *(Skip(k, Reason.NOT_SETTLED) for k in held),
                 Skip("same.bin", Reason.UNCHANGED)])


def _stats(*failed: str) -> Stats:
    stats = Stats()
    stats.errors = [IntegrityError("bad", key=k) for k in failed]
    return stats


def test_in_sync_means_no_pending_and_no_lag() -> None:
    memory = Memory()
    note_pending(memory, _plan(), _stats(), MirrorStatus("m"), now=10.0)
    assert memory.count_pending() == 0 and memory.lag_s(50.0) == 0.0


def test_pending_keys_keep_their_first_seen_time_across_passes() -> None:
    memory = Memory()
    note_pending(memory, _plan("ckpt.bin"), _stats("bad.bin"), MirrorStatus("m"), now=10.0)
    assert memory.count_pending() == 2 and memory.lag_s(15.0) == 5.0
    note_pending(memory, _plan(), _stats("bad.bin"), MirrorStatus("m"), now=20.0)
    assert memory.count_pending() == 1 and memory.lag_s(30.0) == 20.0  # still since t=10
    note_pending(memory, _plan(), _stats(), MirrorStatus("m"), now=40.0)
    assert memory.lag_s(41.0) == 0.0


def test_artifacts_not_at_their_wanted_version_are_pending_and_counted_by_state() -> None:
    st = MirrorStatus("m", artifacts={
        "llama": ArtifactStatus(status.BUILDING, "m-1", "m-2"),
        "bert": ArtifactStatus(status.READY, "m-5", "m-5"),
        "old": ArtifactStatus(status.GONE)})
    memory = Memory()
    note_pending(memory, _plan(), _stats(), st, now=1.0)
    assert set(memory.pending) == {"artifact:llama"}
    assert memory.artifacts == {"building": 1, "ready": 1}


def test_failing_passes_age_from_the_first_failure_and_clear_on_success() -> None:
    memory = Memory()
    memory.failing(100.0)
    memory.failing(130.0)  # a second failure does not reset the clock
    assert memory.lag_s(160.0) == 60.0 and memory.count_pending() == 0
    assert FAILING in memory.pending
    note_pending(memory, _plan(), _stats(), MirrorStatus("m"), now=170.0)
    assert memory.lag_s(171.0) == 0.0


def test_errors_without_a_key_add_no_pending_entry() -> None:
    memory = Memory()
    stats = Stats()
    stats.errors = [Unreachable("endpoint down")]
    note_pending(memory, _plan(), stats, MirrorStatus("m"), now=1.0)
    assert memory.pending == {}
