"""The pure planner: two listings + what syncd recorded + the mirror's policy -> actions.

No I/O, clock or logging here, so `--dry-run` prints exactly what a real run would do and the
tests can state invariants over arbitrary listings (tests/test_plan.py):
- no key that `keys.unsafe_reason` rejects is ever copied or deleted;
- nothing is deleted when the source listing is incomplete or deletes are off;
- deletes beyond the guard are all held back, never partly applied;
- an empty source listing deletes nothing (a wrong prefix or a wiped bucket is not a plan);
- a key the caller holds back (a file still being written, an incomplete artifact) is neither
  copied nor deleted;
- on a destination that is a tree (a volume), a path that changes between file and directory
  is replaced only by deletes this plan makes anyway, run before the copy that needs the path
  (reason `path_replaced`); when those deletes are not allowed the copy is refused with its
  reason instead of failing every pass.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from syncd.keys import is_directory_marker, selected, unsafe_reason
from syncd.listing import Entry, Listing, Record, fingerprint

T = TypeVar("T")


class Reason(StrEnum):
    NEW = "new"
    SIZE_CHANGED = "size_changed"
    SOURCE_CHANGED = "source_changed"
    DESTINATION_CHANGED = "destination_changed"
    UNRECORDED = "unrecorded"
    UNCHANGED = "unchanged"
    ABSENT_FROM_SOURCE = "absent_from_source"
    DELETE_DISABLED = "delete_disabled"
    LISTING_INCOMPLETE = "listing_incomplete"
    DELETE_GUARD = "delete_guard"
    UNSAFE_KEY = "unsafe_key"
    PATH_CONFLICT = "path_conflict"
    SOURCE_EMPTY = "source_empty"
    NOT_SETTLED = "not_settled"
    ARTIFACT_INCOMPLETE = "artifact_incomplete"
    PATH_REPLACED = "path_replaced"  # a delete that clears the path a copy needs
    PATH_TOO_LONG = "path_too_long"
    UNREADABLE = "unreadable"  # under a path the destination could not read
    AFTER_ARTIFACTS = "after_artifacts"  # a loose file waits for a version still settling


@dataclass(frozen=True, slots=True)
class Copy:
    key: str
    reason: Reason
    src: Entry


@dataclass(frozen=True, slots=True)
class Adopt:
    """The destination may already hold these bytes: hash it, compare with what the source
    vouches for, and record it on a match instead of transferring (copy on a mismatch)."""

    key: str
    reason: Reason
    src: Entry
    dst: Entry


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    reason: Reason
    dst: Entry


@dataclass(frozen=True, slots=True)
class Skip:
    key: str
    reason: Reason


@dataclass(frozen=True, slots=True)
class Refuse:
    key: str
    reason: Reason
    detail: str


Action = Copy | Adopt | Delete | Skip | Refuse


@dataclass(frozen=True, slots=True)
class Policy:
    """The mirror's rules, and two facts of its destination: `tree` when it is a directory
    tree (a path is a file or a directory, never both), `max_key_bytes` when keys longer than
    that would make its absolute paths exceed PATH_MAX."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    delete: bool = False
    max_delete_count: int = 1000
    max_delete_fraction: float = 0.5
    tree: bool = False
    max_key_bytes: int | None = None


@dataclass(slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    refused_deletes: str | None = None  # why the delete guard held deletes back

    def of_type(self, kind: type[T]) -> Iterator[T]:
        return (a for a in self.actions if isinstance(a, kind))

    @property
    def copies(self) -> list[Copy]:
        return list(self.of_type(Copy))

    @property
    def adopts(self) -> list[Adopt]:
        return list(self.of_type(Adopt))

    @property
    def deletes(self) -> list[Delete]:
        return list(self.of_type(Delete))

    @property
    def refused(self) -> list[Refuse]:
        return list(self.of_type(Refuse))

    @property
    def copy_bytes(self) -> int:
        return sum(a.src.size for a in self.copies)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:
            name = type(a).__name__.lower()
            out[name] = out.get(name, 0) + 1
        return out


def _directories(keys: Iterator[str]) -> set[str]:
    dirs: set[str] = set()
    for key in keys:
        parts = key.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return dirs


def _compare(src: Entry, dst: Entry, record: Record) -> Action:
    rec = record.get(src.key)
    if rec is not None and rec.src == fingerprint(src):
        if rec.dst == fingerprint(dst):
            return Skip(src.key, Reason.UNCHANGED)
        if src.size == dst.size:
            return Adopt(src.key, Reason.DESTINATION_CHANGED, src, dst)
        return Copy(src.key, Reason.DESTINATION_CHANGED, src)
    if src.size != dst.size:
        return Copy(src.key, Reason.SIZE_CHANGED, src)
    if rec is not None and rec.dst == fingerprint(dst):  # still the old bytes syncd put there
        return Copy(src.key, Reason.SOURCE_CHANGED, src)
    # Unrecorded, or the destination moved too: maybe a pass published the new bytes and died
    # before its record was saved. Hash and compare; copy only if they differ.
    return Adopt(src.key, Reason.SOURCE_CHANGED if rec else Reason.UNRECORDED, src, dst)


Hold = Callable[[str], Reason | None]


def _hold_nothing(key: str) -> Reason | None:
    return None


def compute(src: Listing, dst: Listing, record: Record, policy: Policy,
            hold: Hold | None = None) -> Plan:
    """Actions that make `dst` mirror `src`, each with its reason; `hold(key)` names the keys
    to leave alone this time, and why."""
    plan = Plan()
    hold = hold or _hold_nothing

    def wanted(key: str) -> bool:
        return not is_directory_marker(key) and selected(key, policy.include, policy.exclude)

    for raw, detail in sorted(src.refused.items()):
        plan.actions.append(Refuse(raw, Reason.UNSAFE_KEY, detail))
    src_keys = [k for k in src.entries if wanted(k)]
    dirs = _directories(iter(src_keys))
    for key in sorted(src_keys):
        entry = src.entries[key]
        why = unsafe_reason(key)
        if why is not None:
            plan.actions.append(Refuse(key, Reason.UNSAFE_KEY, why))
        elif policy.max_key_bytes is not None and len(key.encode()) > policy.max_key_bytes:
            plan.actions.append(Refuse(
                key, Reason.PATH_TOO_LONG,
                f"its path on the destination would exceed PATH_MAX ({policy.max_key_bytes} "
                "bytes are left for keys under this root)"))
        elif key in dirs:
            plan.actions.append(Refuse(key, Reason.PATH_CONFLICT, "also a directory in the source"))
        elif (held := hold(key)) is not None:
            plan.actions.append(Skip(key, held))
        elif _unreadable_above(key, dst.unreadable) is not None:
            plan.actions.append(Skip(key, Reason.UNREADABLE))  # unknown there: not written
        elif (theirs := dst.get(key)) is None:
            plan.actions.append(Copy(key, Reason.NEW, entry))
        else:
            plan.actions.append(_compare(entry, theirs, record))

    # A key the source refused still exists there: it is not "absent", so never deleted.
    extras = sorted(k for k in dst.entries
                    if k not in src.entries and k not in src.refused and wanted(k))
    deletes: list[Delete] = []
    for key in extras:
        if unsafe_reason(key) is not None:
            continue
        if (held := hold(key)) is not None:
            plan.actions.append(Skip(key, held))
        elif (_unreadable_above(key, dst.unreadable) is not None
              or _unreadable_above(key, src.unreadable) is not None):
            plan.actions.append(Skip(key, Reason.UNREADABLE))
        elif not policy.delete:
            plan.actions.append(Skip(key, Reason.DELETE_DISABLED))
        elif not src.complete or not dst.complete:
            plan.actions.append(Skip(key, Reason.LISTING_INCOMPLETE))
        elif not src_keys:
            plan.actions.append(Skip(key, Reason.SOURCE_EMPTY))
            plan.refused_deletes = "the source listing is empty: nothing is deleted on its word"
        else:
            deletes.append(Delete(key, Reason.ABSENT_FROM_SOURCE, dst.entries[key]))

    mirrored = sum(1 for k in dst.entries if wanted(k))  # the fraction of what this mirror owns
    plan.refused_deletes = plan.refused_deletes or _delete_guard(len(deletes), mirrored, policy)
    if plan.refused_deletes is None:
        plan.actions.extend(deletes)
    else:
        plan.actions.extend(Skip(d.key, Reason.DELETE_GUARD) for d in deletes)
    if policy.tree:
        _replace_paths(plan, dst)
    return plan


def _unreadable_above(key: str, unreadable: Mapping[str, str]) -> str | None:
    """The unreadable path at or above `key`, if any: what lies there is unknown, so nothing
    under it is deleted on the listing's word."""
    if not unreadable:
        return None
    parts = key.split("/")
    for i in range(1, len(parts) + 1):
        path = "/".join(parts[:i])
        if path in unreadable:
            return path
    return None


def _replace_paths(plan: Plan, dst: Listing) -> None:
    """Copies whose path is a directory on the destination, or lies under a file there: the
    deletes that clear the way run first (reason `path_replaced`); a copy whose way this plan
    does not clear is refused, with what is in the way."""
    dst_dirs = _directories(iter(dst.entries))
    ordered = sorted(dst.entries)
    deleting = {a.key: i for i, a in enumerate(plan.actions) if isinstance(a, Delete)}
    held = {a.key: str(a.reason) for a in plan.actions if isinstance(a, Skip | Refuse)}
    for i, action in enumerate(plan.actions):
        if not isinstance(action, Copy):
            continue
        key = action.key
        blockers = [p for p in _parents(key) if p in dst.entries]
        if key in dst_dirs:
            start = bisect.bisect_left(ordered, f"{key}/")
            for other in ordered[start:]:
                if not other.startswith(f"{key}/"):
                    break
                blockers.append(other)
        if not blockers:
            continue
        kept = [b for b in blockers if b not in deleting]
        if kept:
            why = held.get(kept[0], "not planned for deletion")
            plan.actions[i] = Refuse(key, Reason.PATH_CONFLICT,
                                     f"{kept[0]} is in the way on the destination ({why})")
            continue
        for b in blockers:
            j = deleting[b]
            old = plan.actions[j]
            assert isinstance(old, Delete)
            plan.actions[j] = Delete(old.key, Reason.PATH_REPLACED, old.dst)


def _parents(key: str) -> Iterator[str]:
    parts = key.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def _delete_guard(count: int, dst_count: int, policy: Policy) -> str | None:
    if count == 0:
        return None
    if count > policy.max_delete_count:
        return f"{count} deletes exceed max_delete_count={policy.max_delete_count}"
    fraction = count / max(dst_count, 1)
    if fraction > policy.max_delete_fraction:
        return (
            f"{count} of {dst_count} files ({fraction:.0%}) exceed "
            f"max_delete_fraction={policy.max_delete_fraction}"
        )
    return None
