"""Audit lease journals: was there ever more than one writer at a time?

Pure functions over the lines that `syncd.lease.journal.Journal` writes (one JSON object per
line; docs/leases.md, "The journal", lists them). Give them the journals of every instance
that ran on a target, as paths or as lists of parsed lines, in any order; a journal may hold
several processes (restarts append). They compare CLOCK_MONOTONIC times across processes, so
the instances must have run on one machine (one kernel), as the multi-daemon tests do.

    from tests import journal_audit
    assert not journal_audit.problems([d.journal for d in daemons], halted={"a": killed})

What is checked (each a `Finding`, `kind` in brackets):
- [double holder] no generation of a target is acquired by two writers. A writer is one
  process: instance id, pid and the nonce of its lease holder, so two processes whose
  instance ids collide are still told apart.
- [window went back] a holder's validity windows (`start`, `valid_until` of its "acquired"
  and "renewed" lines) never move back.
- [validity overlaps acquisition] a generation's validity ends (its last `valid_until`, or
  the moment it was fenced by "released" or "lost", whichever is first) no later than the
  next generation of that target is acquired. A takeover whose reason is "holder process is
  gone" proves the previous process dead by then: its validity does not count past it
  (unless `halted` says when that process really ended, which is then checked instead).
- [published without holding] every publication that may have taken effect was made under a
  generation its writer acquired;
- [published outside validity] ... and its last passing fence check (`checked_at`, else its
  begin) lies inside that writer's validity;
- [publications overlap] the publications of a generation (from the earliest begin to the
  latest end) all lie before the first publication of any later generation of the target.

Publications are the `<op>_begin` lines paired with their outcome lines (by writer and
`seq`). Only those that may have taken effect count: outcome "ok" or "unknown", or no
outcome line at all. A begin without an outcome (the process was killed between them, or
its journal failed) may have landed at any moment after its begin: its window runs to
infinity, unless its process is known to have ended, by `halted` or by a successor's
"holder process is gone" takeover naming it. Outcomes "fenced" and "failed" landed nothing.

`halted` maps an instance id to the CLOCK_MONOTONIC moment the test killed it (taken after
the kill, e.g. after `wait()` returned) or froze it (SIGSTOP), or to every moment it was
frozen while holding a lease: whatever it had begun by such a moment is taken to have landed
by then or never, so its window is cut at the first of them inside it. For a frozen process
that is an assumption (a rename that returned, a request whose bytes were in the kernel)
which the test should check on the store, as tests/e2e/test_leases.py does.

Generations are compared per target, as the lease lines name it; publication lines name it
too when they were fenced by a lease (older lines without a target are attributed to the
target where their writer held that generation). Generation numbers must not restart (a
volume's `.syncd/leases` removed by hand restarts them at 1: audit each era on its own).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Line = Mapping[str, Any]
Halted = Mapping[str, float | Sequence[float]]  # instance -> moment(s) it stopped
Journals = Iterable["str | os.PathLike[str] | Iterable[Line]"]

MAY_HAVE_LANDED = ("ok", "unknown", "open")
DEAD = "holder process is gone"


@dataclass(frozen=True, slots=True, order=True)
class Writer:
    """One process that wrote a journal: instance id, pid and its holder nonce."""

    instance: str
    pid: int
    nonce: str

    @classmethod
    def of(cls, line: Line) -> Writer:
        return cls(str(line.get("instance", "")), int(line.get("pid", 0)),
                   str(line.get("nonce", "")))

    def __str__(self) -> str:
        return f"{self.instance} (pid {self.pid}, nonce {self.nonce[:8]})"


@dataclass(frozen=True, slots=True)
class Publication:
    """One write that reached a store's publish or delete, and when it could take effect.
    `outcome`: ok | unknown | fenced | failed, or "open" (a begin line without outcome).
    `end` is math.inf when it may have landed at any later moment."""

    writer: Writer
    op: str
    gen: int
    keys: tuple[str, ...]
    start: float
    end: float
    outcome: str
    checked_at: float | None = None
    target: str | None = None

    @property
    def may_have_landed(self) -> bool:
        return self.outcome in MAY_HAVE_LANDED


@dataclass(slots=True)
class Tenure:
    """One writer's hold of one generation of a target: when it acquired it, why, its
    validity windows (start, valid_until) in journal order, and when it was fenced by a
    release or a loss, if it says so."""

    writer: Writer
    target: str
    gen: int
    acquired_at: float
    reason: str
    previous: Writer | None
    windows: list[tuple[float, float]] = field(default_factory=list)
    fenced_at: float | None = None

    @property
    def valid_until(self) -> float:
        return max((w[1] for w in self.windows), default=self.acquired_at)

    @property
    def end(self) -> float:
        """The last moment this writer may have published under the generation."""
        return min(self.valid_until, math.inf if self.fenced_at is None else self.fenced_at)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    target: str
    gen: int
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.target} generation {self.gen}: {self.detail}"


# --- reading -------------------------------------------------------------------------------

def read(journal: str | os.PathLike[str] | Iterable[Line]) -> list[Line]:
    """The lines of one journal: a file (a missing file is empty; a last line torn by a kill
    is skipped, a torn line elsewhere is an error) or lines already parsed."""
    if not isinstance(journal, str | os.PathLike):
        return list(journal)
    path = Path(journal)
    if not path.exists():
        return []
    raw = path.read_bytes().split(b"\n")
    out: list[Line] = []
    for i, text in enumerate(raw):
        if not text.strip():
            continue
        try:
            out.append(json.loads(text))
        except ValueError:
            if i < len(raw) - 1 and any(r.strip() for r in raw[i + 1:]):
                raise ValueError(f"{path}: line {i + 1} is not JSON: {text[:80]!r}") from None
    return out


def _lines(journals: Journals) -> list[Line]:
    return [line for j in journals for line in read(j)]


# --- what the journals say -----------------------------------------------------------------

def tenures(journals: Journals) -> list[Tenure]:
    """Every acquisition, with its renewals and its end, ordered by target and generation."""
    held: dict[tuple[Writer, str, int], Tenure] = {}
    out: list[Tenure] = []
    for line in _lines(journals):
        event, who = line.get("event"), Writer.of(line)
        if event not in ("acquired", "renewed", "released", "lost"):
            continue
        where = (who, str(line.get("target", "")), int(line["gen"]))
        if event == "acquired":
            previous = (Writer(str(line["previous"]), int(line.get("previous_pid") or 0),
                               str(line.get("previous_nonce") or ""))
                        if line.get("previous") is not None else None)
            tenure = held[where] = Tenure(who, where[1], where[2], float(line["at"]),
                                          str(line.get("reason", "")), previous)
            out.append(tenure)
        elif where not in held:
            continue  # its acquisition is in a journal we were not given
        else:
            tenure = held[where]
        if "valid_until" in line and event in ("acquired", "renewed"):
            tenure.windows.append((float(line["start"]), float(line["valid_until"])))
        if event in ("released", "lost"):
            at = float(line.get("fenced_at") or line["at"])
            tenure.fenced_at = at if tenure.fenced_at is None else min(tenure.fenced_at, at)
    return sorted(out, key=lambda t: (t.target, t.gen, t.acquired_at))


def publications(journals: Journals, halted: Halted | None = None
                 ) -> list[Publication]:
    """Every publication, begin and outcome paired, windows cut by `halted` and by proven
    deaths (module docstring). Ordered by start."""
    lines = _lines(journals)
    halted = dict(halted or {})
    died: dict[Writer, float] = {}  # a successor proved the process dead by then
    for t in tenures([lines]):
        if t.reason == DEAD and t.previous is not None:
            died[t.previous] = min(died.get(t.previous, math.inf), t.acquired_at)
    begins: dict[tuple[Writer, int], Line] = {}
    ends: dict[tuple[Writer, int], Line] = {}
    loose: list[Line] = []  # outcome lines of an older journal format: no begin, no seq
    for line in lines:
        event = str(line.get("event", ""))
        if event.endswith("_begin"):
            begins[(Writer.of(line), int(line["seq"]))] = line
        elif "outcome" in line or (event in ("publish", "delete", "switch")
                                   and "start" in line):
            if "seq" in line:
                ends[(Writer.of(line), int(line["seq"]))] = line
            else:
                loose.append(line)
    out = []
    for ident, begin in begins.items():
        outcome = ends.pop(ident, None)
        out.append(_publication(ident[0], begin, outcome, halted, died))
    for line in [*ends.values(), *loose]:
        out.append(_publication(Writer.of(line), line, line, halted, died))
    return sorted(out, key=lambda p: (p.start, p.end))


def _times(stops: float | Sequence[float] | None) -> list[float]:
    """`halted` values: one moment, or every moment an instance was frozen, in order."""
    if stops is None:
        return []
    return sorted(stops) if isinstance(stops, Sequence) else [float(stops)]


def _publication(who: Writer, begin: Line, outcome: Line | None,
                 halted: Halted, died: Mapping[Writer, float]) -> Publication:
    keys = begin.get("keys") or ([begin["key"]] if "key" in begin else [])
    start = float(begin["start"])
    if outcome is None:
        end, result = died.get(who, math.inf), "open"
    else:
        end = float(outcome["end"])
        result = str(outcome.get("outcome", "fenced" if "_" in outcome["event"] else "ok"))
    for stop in _times(halted.get(who.instance)):
        if start <= stop < end:
            end = stop
            break
    op = str(begin.get("op") or str(begin["event"]).removesuffix("_begin"))
    checked = outcome.get("checked_at") if outcome is not None else None
    target = begin.get("target")
    return Publication(who, op, int(begin["gen"]), tuple(map(str, keys)), start, end, result,
                       float(checked) if checked is not None else None,
                       str(target) if target is not None else None)


# --- the checks ----------------------------------------------------------------------------

def double_holders(journals: Journals) -> list[Finding]:
    """Generations of a target acquired by more than one writer (instance, pid, nonce)."""
    by_gen: dict[tuple[str, int], set[Writer]] = defaultdict(set)
    for t in tenures(journals):
        by_gen[(t.target, t.gen)].add(t.writer)
    return [Finding("double holder", target, gen,
                    "acquired by " + " and ".join(map(str, sorted(writers))))
            for (target, gen), writers in sorted(by_gen.items()) if len(writers) > 1]


def regressions(journals: Journals) -> list[Finding]:
    """Validity windows of one holder that moved back (start or valid_until decreased)."""
    out = []
    for t in tenures(journals):
        for (s1, v1), (s2, v2) in itertools.pairwise(t.windows):
            if s2 < s1 or v2 < v1:
                out.append(Finding("window went back", t.target, t.gen,
                                   f"{t.writer}: [{s1:.3f}, {v1:.3f}] then [{s2:.3f}, {v2:.3f}]"))
    return out


def overlaps(journals: Journals, halted: Halted | None = None) -> list[Finding]:
    """Validity that outlasts the next generation's acquisition, publications outside their
    writer's validity or under a generation it never held, and publications of different
    generations that overlap (module docstring)."""
    lines = _lines(journals)
    halted = dict(halted or {})
    held = tenures([lines])
    out: list[Finding] = []

    by_target: dict[str, list[Tenure]] = defaultdict(list)
    for t in held:
        by_target[t.target].append(t)
    for target, ts in sorted(by_target.items()):
        gens = sorted({t.gen for t in ts})
        for t in ts:
            later = [g for g in gens if g > t.gen]
            if not later:
                continue
            for nxt in (n for n in ts if n.gen == later[0]):
                end = t.end
                if nxt.reason == DEAD and nxt.previous == t.writer:
                    end = min(end, max(_times(halted.get(t.writer.instance)),
                                       default=-math.inf))
                if end > nxt.acquired_at:
                    out.append(Finding(
                        "validity overlaps acquisition", target, t.gen,
                        f"{t.writer} may publish until {end:.3f}, but {nxt.writer} acquired "
                        f"generation {nxt.gen} at {nxt.acquired_at:.3f} ({nxt.reason})"))

    spans: dict[tuple[str, int], tuple[float, float]] = {}
    for p in publications([lines], halted):
        if not p.may_have_landed or p.gen <= 0:
            continue
        mine = [t for t in held if t.writer == p.writer and t.gen == p.gen
                and (p.target is None or t.target == p.target)]
        if not mine:
            out.append(Finding("published without holding", p.target or "?", p.gen,
                               f"{p.writer} {p.op} {_keys(p)} ({p.outcome})"))
            continue
        checked = p.checked_at if p.checked_at is not None else p.start
        for t in mine:
            if checked > t.end:
                out.append(Finding(
                    "published outside validity", t.target, p.gen,
                    f"{p.writer} {p.op} {_keys(p)} ({p.outcome}) passed the fence at "
                    f"{checked:.3f}, its validity ended at {t.end:.3f}"))
            first, last = spans.get((t.target, p.gen), (p.start, p.end))
            spans[(t.target, p.gen)] = (min(first, p.start), max(last, p.end))
    ordered = sorted(spans.items())
    for ((t1, g1), (_, end1)), ((t2, g2), (start2, _)) in itertools.pairwise(ordered):
        if t1 == t2 and end1 > start2:
            out.append(Finding("publications overlap", t1, g1,
                               f"its publications run until {end1:.3f}, those of generation "
                               f"{g2} begin at {start2:.3f}"))
    return out


def problems(journals: Journals, halted: Halted | None = None) -> list[Finding]:
    """Everything this module checks; empty when the journals prove one writer at a time."""
    lines = _lines(journals)
    return [*double_holders([lines]), *regressions([lines]), *overlaps([lines], halted)]


def _keys(p: Publication) -> str:
    shown: Sequence[str] = p.keys[:3]
    return ", ".join(shown) + (f" (+{len(p.keys) - 3})" if len(p.keys) > 3 else "")
