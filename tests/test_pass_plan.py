"""The pull plan of an artifact that has no manifest (issue 19, item 3): a plain uploader
writes one object at a time, so a listing is built only once its marker is there or once it
has stayed unchanged for the settle period; until then the current version stays."""

from __future__ import annotations

from syncd import artifacts
from syncd.artifacts import FileRecord, Manifest
from syncd.listing import Entry, Listing
from syncd.pass_plan import PulledArtifact, PullFacts, Step, plan_pull
from syncd.plan import Policy, Reason
from syncd.runtime.passes import Sightings

PATTERNS = ("*",)
SHARDS = {"llama/a.bin": 10, "llama/b.bin": 20}


def _listing(sizes: dict[str, int]) -> Listing:
    return Listing.of(Entry(k, n, etag=f"e{n}") for k, n in sizes.items())


def _facts(sizes: dict[str, int], seen: PulledArtifact, *, settle_s: float = 60.0,
           marker: str | None = None) -> PullFacts:
    return PullFacts(_listing(sizes), Listing(), {}, {"llama": seen}, set(),
                     settle_s=settle_s, marker=marker)


def _step(facts: PullFacts) -> tuple[Step, str | None]:
    (art,) = plan_pull(facts, Policy(), PATTERNS).artifacts
    return art.step, art.detail


def _version(sizes: dict[str, int]) -> str:
    files = artifacts.split(_listing(sizes), PATTERNS).groups["llama"].files
    return artifacts.listing_version(files)


def test_pull_plan_holds_a_listing_seen_changing_within_the_settle_period() -> None:
    step, detail = _step(_facts(SHARDS, PulledArtifact("v-old", stable_s=3.2)))
    assert step is Step.HOLD
    assert detail == "settling: listing changed 3 s ago; built once unchanged for 60 s"


def test_pull_plan_holds_the_first_listing_a_daemon_sees_of_a_new_version() -> None:
    assert _step(_facts(SHARDS, PulledArtifact(None, stable_s=0.0)))[0] is Step.HOLD


def test_pull_plan_builds_a_listing_unchanged_for_the_settle_period() -> None:
    step, _ = _step(_facts(SHARDS, PulledArtifact("v-old", stable_s=60.0)))
    assert step is Step.BUILD


def test_pull_plan_builds_what_a_one_shot_run_lists() -> None:
    """`sync --once` saw no earlier listing: it builds what is there (documented)."""
    assert _step(_facts(SHARDS, PulledArtifact("v-old")))[0] is Step.BUILD


def test_pull_plan_keeps_the_current_version_ready_while_its_listing_settles() -> None:
    step, _ = _step(_facts(SHARDS, PulledArtifact(_version(SHARDS), stable_s=0.0)))
    assert step is Step.READY


def test_pull_plan_holds_an_artifact_waiting_for_its_marker() -> None:
    seen = PulledArtifact("v-old", stable_s=1e9)  # settled or not, the marker decides
    assert _step(_facts(SHARDS, seen, marker="_COMPLETE")) == (
        Step.HOLD, "waiting for its marker _COMPLETE")
    assert _step(_facts(SHARDS, PulledArtifact("v-old"), marker="_COMPLETE"))[0] is Step.HOLD


def test_pull_plan_builds_once_the_marker_is_listed_even_while_settling() -> None:
    sizes = {**SHARDS, "llama/_COMPLETE": 0}
    plan = plan_pull(_facts(sizes, PulledArtifact("v-old", stable_s=0.0), marker="_COMPLETE"),
                     Policy(), PATTERNS)
    (art,) = plan.artifacts
    assert art.step is Step.BUILD
    assert set(art.files) == {"a.bin", "b.bin", "_COMPLETE"}


def test_pull_plan_builds_from_a_manifest_without_settling_or_marker() -> None:
    manifest = Manifest("llama", {k.removeprefix("llama/"): FileRecord(n, f"e{n}", f"x:{n}")
                                  for k, n in SHARDS.items()})
    seen = PulledArtifact("v-old", manifest, stable_s=0.0)
    plan = plan_pull(_facts(SHARDS, seen, marker="_COMPLETE"), Policy(), PATTERNS)
    (art,) = plan.artifacts
    assert (art.step, art.version) == (Step.BUILD, manifest.version)


def test_pull_plan_hold_keeps_the_files_listed_and_fetches_nothing() -> None:
    plan = plan_pull(_facts(SHARDS, PulledArtifact("v-old", stable_s=1.0)), Policy(), PATTERNS)
    (art,) = plan.artifacts
    assert art.current == "v-old" and art.version is None
    assert not plan.flat().actions
    assert set(plan.keys()) == set(SHARDS)


def test_sightings_measure_how_long_each_artifact_listing_stayed_the_same() -> None:
    seen = Sightings()
    assert seen.stable_s({"a": "l-1", "b": "l-1"}, 100.0) == {"a": 0.0, "b": 0.0}
    assert seen.stable_s({"a": "l-1", "b": "l-2"}, 130.0) == {"a": 30.0, "b": 0.0}
    assert seen.stable_s({"b": "l-2"}, 140.0) == {"b": 10.0}  # "a" is forgotten
    assert seen.stable_s({"a": "l-1", "b": "l-2"}, 150.0) == {"a": 0.0, "b": 20.0}


def test_loose_files_wait_while_a_new_version_of_an_artifact_is_still_settling() -> None:
    """A loose pointer (Hugging Face `refs/main`) must not go live before the version it
    names; that version is held while settling, so the pointer's change waits too."""
    src = Listing.of([Entry("refs/main", 4, etag="r2"), Entry("snap/b/w.bin", 9, etag="b")])
    dst = Listing.of([Entry("refs/main", 4, mtime_ns=1, inode=1)])
    settling = PulledArtifact(None, stable_s=1.0)
    facts = PullFacts(src, dst, {}, {"snap/b": settling}, set(), settle_s=120.0)
    plan = plan_pull(facts, Policy(tree=True), ("snap/*",))
    assert [a.step for a in plan.artifacts] == [Step.HOLD]
    assert [(a.key, a.reason) for a in plan.loose.actions] == [
        ("refs/main", Reason.AFTER_ARTIFACTS)]
    settled = PulledArtifact(None, stable_s=500.0)
    facts = PullFacts(src, dst, {}, {"snap/b": settled}, set(), settle_s=120.0)
    plan = plan_pull(facts, Policy(tree=True), ("snap/*",))
    assert [a.step for a in plan.artifacts] == [Step.BUILD]
    assert [type(a).__name__ for a in plan.loose.actions] == ["Adopt"]
