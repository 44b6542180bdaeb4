"""The whole plan of one pass, from what was observed: pure, so `--dry-run`, `check` and the
real pass all see the same decisions.

A pass is the flat plan of the files outside any artifact plus one step per artifact: held
(with why), ready, built (into its own version directory, then switched in), removed or kept.
On pull a build lists every file of the wanted version: seeded from the current version where
the record vouches for it (a `Seed`, downloaded instead if the file moved since), else copied,
adopted or kept as already built. On push an artifact that is not complete holds its files;
the others get their manifest written once every file is published. The executors
(`runtime/artifact_pull.py`, `runtime/artifact_push.py`) carry this out and decide nothing
that is not written here; what they learn while doing it (a failed copy) only ever withholds
a planned step (no switch, no manifest, no delete), never adds one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from syncd import artifacts
from syncd.artifacts import Group, Manifest
from syncd.listing import Entry, Listing, Record, fingerprint
from syncd.plan import Action, Adopt, Copy, Delete, Hold, Plan, Policy, Reason, Skip, compute

# A build holds exactly the wanted files: whatever else is in its directory goes.
BUILD_POLICY = Policy(delete=True, max_delete_count=1 << 62, max_delete_fraction=1.0,
                      tree=True)


class Step(StrEnum):
    READY = "ready"  # the volume (pull) or bucket (push) holds the wanted version
    HOLD = "hold"  # not complete at the source: the destination keeps what it has
    BUILD = "build"  # pull: build the wanted version, switch it in when whole
    PUBLISH = "publish"  # push: write the manifest once every file is published
    REMOVE = "remove"  # gone from the source: removed (delete is on)
    KEEP = "keep"  # gone from the source: kept, and why


@dataclass(frozen=True, slots=True)
class Seed:
    """A file the wanted version shares with the current one, by the record: linked or
    copied from the current version; downloaded like a Copy if it changed since."""

    key: str
    src: Entry


@dataclass(slots=True)
class ArtifactPlan:
    name: str
    step: Step
    detail: str | None = None
    version: str | None = None  # the wanted version
    current: str | None = None  # the version the destination has now (LEGACY: a plain dir)
    files: dict[str, Entry] = field(default_factory=dict)  # the wanted files, relative
    manifest: Manifest | None = None
    seeds: list[Seed] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)  # the build's files, as mirror keys
    drop: str | None = None  # an unfinished build of a version the source no longer holds
    pending: bool = False  # held while a new version is still arriving (settling, marker)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.files.values())


@dataclass(slots=True)
class PassPlan:
    loose: Plan
    artifacts: list[ArtifactPlan] = field(default_factory=list)

    def flat(self) -> Plan:
        """Every file action of the pass in one plan (what is counted, printed, checked)."""
        actions: list[Action] = list(self.loose.actions)
        for art in self.artifacts:
            actions.extend(art.plan.actions)
        return Plan(actions, self.loose.refused_deletes)

    def keys(self) -> Iterator[str]:
        """Every key this pass planned for or holds: their record entries stay."""
        yield from (a.key for a in self.loose.actions)
        for art in self.artifacts:
            yield from (a.key for a in art.plan.actions)
            yield from (f"{art.name}/{rel}" for rel in art.files)


def describe_step(art: ArtifactPlan) -> str:
    """One line for a dry run: what happens to the artifact, and why."""
    what = f"artifact {art.name}: {art.step}"
    if art.step is Step.BUILD:
        what += f" {art.version} (from {art.current or 'nothing'}; {len(art.seeds)} seeded)"
    elif art.version is not None:
        what += f" {art.version}"
    return f"{what} ({art.detail})" if art.detail else what


# --- pull -------------------------------------------------------------------------------------


@dataclass(slots=True)
class PulledArtifact:
    """What was read of one artifact before planning."""

    current: str | None  # the version its link names, LEGACY, or None (absent, foreign)
    manifest: Manifest | str | None = None  # the bucket's manifest, why it is unusable, none
    built: Listing | None = None  # the wanted version's directory, if a build was begun
    previous: str | None = None  # the version the last pass wanted
    # how long this daemon has seen the artifact's listing unchanged; None: nobody looked
    # before (a one-shot run, which builds what it lists)
    stable_s: float | None = None


@dataclass(slots=True)
class PullFacts:
    src: Listing
    dst: Listing
    record: Record
    artifacts: dict[str, PulledArtifact]  # by name, for every group of the source
    known: set[str]  # artifacts the volume's status knows (some may be gone from the source)
    settle_s: float = 0.0  # a listing without a manifest must stay unchanged this long
    marker: str | None = None  # or, when set, an artifact without a manifest waits for it


def wanted(group: Group, manifest: Manifest | str | None) -> tuple[dict[str, Entry], str] | str:
    """The files and version the source holds complete, or why it holds none: a manifest
    names them (and the listing must agree), else the listing does."""
    if isinstance(manifest, str):
        return manifest
    if manifest is None:
        return group.files, artifacts.listing_version(group.files)
    why = artifacts.disagreement(manifest, group.files)
    if why is not None:
        return why
    return {k: group.files[k] for k in manifest.files}, manifest.version


def plan_pull(facts: PullFacts, policy: Policy, patterns: tuple[str, ...],
              build_key_bytes: Mapping[str, int | None] | None = None) -> PassPlan:
    """`build_key_bytes[name]`: how long a key of artifact `name` may be inside its version
    directory (that directory's path is longer than the mirror root's)."""
    ours = artifacts.split(facts.src, patterns)
    theirs = artifacts.split(facts.dst, patterns)
    out = PassPlan(compute(ours.loose, theirs.loose, facts.record, policy))
    for name in sorted(ours.groups):
        seen = facts.artifacts[name]
        limit = (build_key_bytes or {}).get(name, policy.max_key_bytes)
        out.artifacts.append(_pull_artifact(ours.groups[name], seen, facts, limit))
    for name in sorted(facts.known - set(ours.groups)):
        out.artifacts.append(_gone(name, policy, facts.src))
    if any(a.pending for a in out.artifacts):
        after_artifacts(out.loose)
    return out


def after_artifacts(loose: Plan) -> None:
    """A loose file may point at a version (a Hugging Face `refs/main` names a snapshot):
    while a new version is still arriving, loose changes wait, and go live in a pass that
    has switched it in, after it."""
    for i, action in enumerate(loose.actions):
        if isinstance(action, Copy | Adopt | Delete):
            loose.actions[i] = Skip(action.key, Reason.AFTER_ARTIFACTS)


def unfinished(group: Group, seen: PulledArtifact, settle_s: float,
               marker: str | None) -> str | None:
    """Why a version named only by the listing may still be mid-upload, or None. A plain
    uploader writes one object at a time, so a listing is whole only when its marker is there
    (written last), or when it has stayed unchanged for the settle period (issue 19)."""
    if marker is not None:
        return None if marker in group.files else f"waiting for its marker {marker}"
    if seen.stable_s is None or seen.stable_s >= settle_s:
        return None
    return (f"settling: listing changed {seen.stable_s:.0f} s ago; built once unchanged "
            f"for {settle_s:g} s")


def _pull_artifact(group: Group, seen: PulledArtifact, facts: PullFacts,
                   max_key_bytes: int | None) -> ArtifactPlan:
    name, current, record = group.name, seen.current, facts.record
    got = wanted(group, seen.manifest)
    if isinstance(got, str):  # its files stay listed: their record entries are kept
        return ArtifactPlan(name, Step.HOLD, got, current=current, files=dict(group.files))
    files, version = got
    manifest = seen.manifest if isinstance(seen.manifest, Manifest) else None
    art = ArtifactPlan(name, Step.READY, version=version, current=current, files=files,
                       manifest=manifest)
    if seen.current == version:
        return art
    why = None if manifest is not None else unfinished(group, seen, facts.settle_s,
                                                       facts.marker)
    if why is not None:  # the current version stays; nothing of the new one is fetched
        return ArtifactPlan(name, Step.HOLD, why, current=current, files=dict(group.files),
                            pending=True)
    art.step, art.detail = Step.BUILD, f"building version {version}"
    if seen.previous and seen.previous not in (version, seen.current):
        art.drop = seen.previous
    want = artifacts.rebase(files, name)
    built = seen.built or Listing()
    plan = compute(want, built, record, replace(BUILD_POLICY, max_key_bytes=max_key_bytes))
    if seen.current is not None:  # files the current version has verified: seed, not fetch
        for i, action in enumerate(plan.actions):
            if isinstance(action, Copy) and action.key not in built.entries:
                rec = record.get(action.key)
                if rec is not None and rec.src == fingerprint(action.src):
                    art.seeds.append(Seed(action.key, action.src))
                    plan.actions[i] = Skip(action.key, Reason.UNCHANGED)
    art.plan = plan
    return art


def _gone(name: str, policy: Policy, src: Listing) -> ArtifactPlan:
    if not policy.delete:
        return ArtifactPlan(name, Step.KEEP, "absent from the source; kept (delete is off)")
    if not src.complete or not src.entries:
        return ArtifactPlan(name, Step.KEEP, "absent from an incomplete or empty listing: kept")
    return ArtifactPlan(name, Step.REMOVE, "absent from the source")


# --- push -------------------------------------------------------------------------------------


@dataclass(slots=True)
class PushFacts:
    src: Listing  # the volume
    dst: Listing  # the bucket, manifests included
    record: Record
    unsettled: set[str]  # volume files still changing (a daemon's observation; none once)
    marker: str | None  # the file that says an artifact is complete, if the mirror has one


def plan_push(facts: PushFacts, policy: Policy, patterns: tuple[str, ...]) -> PassPlan:
    theirs = artifacts.split(facts.dst, patterns)  # with the manifests the bucket holds
    src, dst = _data(facts.src), _data(facts.dst)
    ours = artifacts.split(src, patterns)
    waiting = artifacts.incomplete(ours.groups, facts.unsettled, facts.marker)
    held: dict[str, Reason] = {k: Reason.NOT_SETTLED for k in facts.unsettled
                               if k in ours.loose.entries}
    for split in (ours, theirs):
        for name in waiting:
            if name in split.groups:
                held.update((f"{name}/{rel}", Reason.ARTIFACT_INCOMPLETE)
                            for rel in split.groups[name].files)
    hold: Hold = held.get
    out = PassPlan(compute(src, dst, facts.record, policy, hold))
    for name, group in sorted(ours.groups.items()):
        art = ArtifactPlan(name, Step.PUBLISH, "manifest last, once every file is published",
                           files=dict(group.files))
        if name in waiting:
            art.step, art.detail = Step.HOLD, waiting[name]
        out.artifacts.append(art)
    for name, group in sorted(theirs.groups.items()):
        if name in ours.groups or group.manifest is None:
            continue
        if policy.delete and facts.src.complete and facts.src.entries:
            out.artifacts.append(ArtifactPlan(name, Step.REMOVE,
                                              "absent from the volume: its manifest goes"))
        else:
            out.artifacts.append(ArtifactPlan(name, Step.KEEP, "absent from the volume; its "
                                              "manifest is kept (delete is off or the "
                                              "listing incomplete)"))
    return out


def _data(listing: Listing) -> Listing:
    """A listing without manifests: those are syncd's, never data to copy or delete."""
    return replace(listing, entries={k: e for k, e in listing.entries.items()
                                     if not artifacts.is_manifest(k)})
