"""syncd.runtime.health: when a mirror or the event loop counts as stalled.

The systemd watchdog and /healthz act on these answers, so a false "stalled" restarts a
healthy daemon and a missed one leaves a stuck daemon serving stale models. A fake clock
makes each boundary exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from syncd.runtime.health import (
    DEAD,
    IDLE,
    LOOP_STUCK_S,
    PASSING,
    STANDBY,
    WAITING,
    Beat,
    Health,
)

STALL_S = 30.0


@dataclass(slots=True)
class Clock:
    """A monotonic clock the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> Health:
    return Health(STALL_S, clock, loop_beat=clock())


# --- Beat ---------------------------------------------------------------------------------------


def test_beat_starts_in_standby_and_never_stalls_there(clock: Clock) -> None:
    """A mirror whose lease another instance holds has nothing to do: not a fault."""
    beat = Beat(STALL_S, clock)
    assert beat.state == STANDBY
    clock.now += 1e6
    assert not beat.stalled()


def test_beat_passing_stalls_after_stall_s_without_progress(clock: Clock) -> None:
    beat = Beat(STALL_S, clock)
    beat.passing()
    assert beat.state == PASSING
    clock.now += STALL_S
    assert not beat.stalled()
    clock.now += 0.001
    assert beat.stalled()


def test_beat_waiting_for_the_targets_turn_never_stalls(clock: Clock) -> None:
    """Mirrors sharing a target take turns: one queued behind a long but live pass of its
    sibling must not turn /healthz red (a liveness probe would restart a healthy daemon)."""
    beat = Beat(STALL_S, clock)
    beat.waiting()
    assert beat.state == WAITING
    clock.now += STALL_S * 100
    assert not beat.stalled()
    beat.passing()  # its turn came: the stall clock starts now, not when it queued
    clock.now += STALL_S
    assert not beat.stalled()
    clock.now += 0.001
    assert beat.stalled()


def test_beat_progress_pushes_the_deadline(clock: Clock) -> None:
    """A long download that keeps moving bytes is alive, however long it takes."""
    beat = Beat(STALL_S, clock)
    beat.passing()
    for _ in range(5):
        clock.now += STALL_S - 1
        beat.progress(1 << 20)
        assert not beat.stalled()
    clock.now += STALL_S + 1
    assert beat.stalled()


def test_beat_idle_stalls_only_after_its_wait_plus_stall_s(clock: Clock) -> None:
    beat = Beat(STALL_S, clock)
    beat.idle(60.0)
    assert beat.state == IDLE
    clock.now += 60.0 + STALL_S
    assert not beat.stalled()
    clock.now += 0.001
    assert beat.stalled()


def test_beat_standby_clears_a_stall(clock: Clock) -> None:
    beat = Beat(STALL_S, clock)
    beat.passing()
    clock.now += STALL_S * 2
    assert beat.stalled()
    beat.standby()
    assert not beat.stalled()


def test_beat_done_counts_passes_failures_and_the_last_success(clock: Clock) -> None:
    beat = Beat(STALL_S, clock)
    beat.done(None)
    ok_at = clock.now
    clock.now += 5
    beat.done("bucket unreachable")
    assert (beat.passes, beat.failures) == (2, 1)
    assert beat.last_ok == ok_at
    assert beat.last_error == "bucket unreachable"
    beat.done(None)
    assert beat.last_error is None
    assert beat.last_ok == clock.now


def test_beat_dead_is_stalled_at_once_whatever_its_deadline(clock: Clock) -> None:
    """A loop that ended will never wake: waiting stall_s (600 s by default) to say so would
    keep a daemon that syncs nothing looking alive to its liveness probe."""
    beat = Beat(STALL_S, clock)
    beat.idle(3600.0)
    beat.dead("RuntimeError: boom")
    assert beat.state == DEAD
    assert beat.died == "RuntimeError: boom"
    assert beat.stalled()


def test_beat_start_revives_a_dead_mirror_for_its_new_loop(clock: Clock) -> None:
    """A reload starts the mirror's loop anew: the new loop is alive, the old death is past."""
    beat = Beat(STALL_S, clock)
    beat.dead("the loop returned while the daemon runs on")
    beat.start()
    assert beat.state == STANDBY
    assert beat.died is None
    assert not beat.stalled()


# --- Health -------------------------------------------------------------------------------------


def test_health_mirror_returns_one_beat_per_name_on_the_shared_clock(
    health: Health, clock: Clock
) -> None:
    beat = health.mirror("a")
    assert health.mirror("a") is beat
    assert beat.stall_s == STALL_S
    beat.passing()
    clock.now += STALL_S + 1
    assert beat.stalled()


def test_health_loop_stuck_s_allows_the_one_second_beat_interval(
    health: Health, clock: Clock
) -> None:
    clock.now += 1.0
    assert health.loop_stuck_s() == 0.0
    clock.now += 2.5
    assert health.loop_stuck_s() == pytest.approx(2.5)
    health.beat()
    assert health.loop_stuck_s() == 0.0


def test_health_not_ok_once_the_loop_is_stuck_for_loop_stuck_s(
    health: Health, clock: Clock
) -> None:
    clock.now += 1.0 + LOOP_STUCK_S - 0.01
    assert health.ok()
    clock.now += 0.01
    assert not health.ok()
    health.beat()
    assert health.ok()


def test_health_stalled_lists_stalled_mirrors_sorted(health: Health, clock: Clock) -> None:
    for name in ("zeta", "alpha", "mid"):
        health.mirror(name).passing()
    health.mirror("mid").idle(600.0)
    health.mirror("standby")
    clock.now += STALL_S + 1
    health.beat()
    assert health.stalled() == ["alpha", "zeta"]
    assert not health.ok()


def test_health_ok_with_a_beating_loop_and_no_stalled_mirror(
    health: Health, clock: Clock
) -> None:
    health.mirror("a").passing()
    health.mirror("b")
    clock.now += STALL_S
    health.beat()
    assert health.stalled() == []
    assert health.ok()


def test_health_snapshot_reports_each_mirror(health: Health, clock: Clock) -> None:
    a, b = health.mirror("b"), health.mirror("a")
    a.passing()
    a.done(None)
    a.done("access denied")
    b.idle(10.0)
    clock.now += STALL_S + 12.34
    assert health.snapshot() == {
        "ok": False,
        "loop_stuck_s": round(STALL_S + 12.34 - 1.0, 1),
        "mirrors": {
            "a": {"state": IDLE, "stalled": True, "passes": 0, "failures": 0,
                  "last_error": None, "died": None, "last_ok_age_s": None},
            "b": {"state": PASSING, "stalled": True, "passes": 2, "failures": 1,
                  "last_error": "access denied", "died": None,
                  "last_ok_age_s": round(STALL_S + 12.34, 1)},
        },
    }
    mirrors = health.snapshot()["mirrors"]
    assert isinstance(mirrors, dict)
    assert list(mirrors) == ["a", "b"]  # sorted, for a stable /healthz body


def test_health_not_ok_and_says_why_once_a_mirror_loop_died(health: Health) -> None:
    health.mirror("alive").passing()
    health.mirror("gone").dead("Fault: injected")
    health.beat()
    assert not health.ok()
    assert health.stalled() == ["gone"]
    mirrors = health.snapshot()["mirrors"]
    assert isinstance(mirrors, dict)
    assert mirrors["gone"]["state"] == DEAD
    assert mirrors["gone"]["died"] == "Fault: injected"
    assert mirrors["alive"]["died"] is None


def test_health_dead_names_each_dead_loop_with_why_until_a_new_loop_starts(
    health: Health, clock: Clock
) -> None:
    health.mirror("stuck").passing()
    health.mirror("gone").dead("Fault: injected")
    health.mirror("also").dead("the loop returned while the daemon runs on")
    clock.now += STALL_S + 1  # stalled is not dead: the watchdog ping goes on for it
    assert health.dead() == {"also": "the loop returned while the daemon runs on",
                             "gone": "Fault: injected"}
    health.mirror("gone").start()  # a reload's new loop
    health.mirror("also").start()
    assert health.dead() == {}


def test_health_snapshot_of_a_healthy_daemon_without_mirrors(health: Health) -> None:
    assert health.snapshot() == {"ok": True, "loop_stuck_s": 0.0, "mirrors": {}}


def test_health_counts_loop_silence_from_construction_on_its_own_clock() -> None:
    clock = Clock(now=0.0)
    health = Health(STALL_S, clock)
    clock.now += 1.0 + LOOP_STUCK_S + 5
    assert health.loop_stuck_s() == pytest.approx(LOOP_STUCK_S + 5)
