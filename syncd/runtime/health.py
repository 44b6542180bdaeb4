"""Heartbeats of a running daemon: is the event loop turning, is each mirror making progress?

The event loop beats once a second from a task on the loop itself, so a loop stuck in a
blocking call stops beating (a thread outside the loop reports it; the systemd watchdog and
`/healthz` read the same beat). Each mirror loop states what it is doing and by when it should
show life again: a pass that moves no byte for `stall_s`, or a loop that does not wake when it
should, is stalled. A mirror in standby (another instance holds its lease) never is. A mirror
loop that ended while the daemon runs on (a fault that escaped it) is dead, and stalled at once:
it will never wake, and waiting `stall_s` to say so would only keep a broken daemon alive;
under systemd the daemon withholds its watchdog ping meanwhile (`dead`), for the same reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STANDBY, WAITING, PASSING, IDLE, DEAD = "standby", "waiting", "passing", "idle", "dead"
_NEVER_STALLED = (STANDBY, WAITING)
LOOP_STUCK_S = 10.0


@dataclass(slots=True)
class Beat:
    """One mirror loop's heartbeat."""

    stall_s: float
    clock: Callable[[], float] = time.monotonic
    state: str = STANDBY
    deadline: float = 0.0  # past this without news (outside standby) means stalled
    passes: int = 0
    failures: int = 0
    last_ok: float | None = None  # monotonic end of the last pass without error
    last_error: str | None = None
    died: str | None = None  # why the loop ended, once it has

    def start(self) -> None:
        """A new loop for this mirror (the first, or one a reload started): alive again."""
        self.state, self.died = STANDBY, None

    def dead(self, why: str) -> None:
        self.state, self.died = DEAD, why

    def standby(self) -> None:
        self.state = STANDBY

    def waiting(self) -> None:
        """Queued behind another mirror's pass on the same target: as long as that pass is
        alive (its own beat says so), waiting is not a stall."""
        self.state = WAITING

    def passing(self) -> None:
        self.state, self.deadline = PASSING, self.clock() + self.stall_s

    def progress(self, _n: int = 0) -> None:
        """Bytes moved: the pass is alive."""
        self.deadline = self.clock() + self.stall_s

    def done(self, error: str | None) -> None:
        self.passes += 1
        self.last_error = error
        if error is None:
            self.last_ok = self.clock()
        else:
            self.failures += 1

    def idle(self, for_s: float) -> None:
        self.state, self.deadline = IDLE, self.clock() + for_s + self.stall_s

    def stalled(self) -> bool:
        if self.state == DEAD:
            return True
        return self.state not in _NEVER_STALLED and self.clock() > self.deadline


@dataclass(slots=True)
class Health:
    stall_s: float
    clock: Callable[[], float] = time.monotonic
    loop_beat: float = -1.0  # set from `clock` at construction
    mirrors: dict[str, Beat] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loop_beat < 0:
            self.loop_beat = self.clock()

    def beat(self) -> None:
        self.loop_beat = self.clock()

    def mirror(self, name: str) -> Beat:
        if name not in self.mirrors:
            self.mirrors[name] = Beat(self.stall_s, self.clock)
        return self.mirrors[name]

    def loop_stuck_s(self) -> float:
        """How long the event loop has gone without beating, beyond the expected second."""
        return max(0.0, self.clock() - self.loop_beat - 1.0)

    def stalled(self) -> list[str]:
        return sorted(n for n, b in self.mirrors.items() if b.stalled())

    def dead(self) -> dict[str, str]:
        """The mirrors whose loop ended while the daemon runs on, with why: until a reload
        starts them anew, nothing syncs them, so the process must not pass for alive."""
        return {n: b.died for n, b in sorted(self.mirrors.items()) if b.died is not None}

    def ok(self) -> bool:
        return self.loop_stuck_s() < LOOP_STUCK_S and not self.stalled()

    def snapshot(self) -> dict[str, object]:
        now = self.clock()
        return {
            "ok": self.ok(), "loop_stuck_s": round(self.loop_stuck_s(), 1),
            "mirrors": {n: {"state": b.state, "stalled": b.stalled(), "passes": b.passes,
                            "failures": b.failures, "last_error": b.last_error,
                            "died": b.died,
                            "last_ok_age_s": None if b.last_ok is None
                            else round(now - b.last_ok, 1)}
                        for n, b in sorted(self.mirrors.items())},
        }


class LoopWatchdog:
    """A thread that notices when the event loop stops beating (a blocking call on it)."""

    def __init__(self, health: Health, log: Any) -> None:
        self._health = health
        self._log = log
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        stuck = False
        while not self._done.wait(1.0):
            late = self._health.loop_stuck_s()
            if late >= LOOP_STUCK_S and not stuck:
                self._log.error("event_loop_stuck", seconds=round(late, 1))
            stuck = late >= LOOP_STUCK_S

    def stop(self) -> None:
        self._done.set()
