"""Every Prometheus metric of syncd, defined once with its labels; none is defined elsewhere.

A `Metrics` owns its registry (with the process and platform collectors), so tests can build
several side by side. Counters and histograms are fed by events: bytes as they stream, a
transfer or pass ending, a lease changing hands. What describes a moment (lease held, objects
pending, replication lag, artifacts by state) is read at scrape time from a `Snapshot` the
daemon hands over, so it is never stale and nothing has to remember to reset it.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from syncd import __version__
from syncd.config import DEFAULT_ENDPOINT

# A small object takes milliseconds; a 4 GiB shard at 200 MB/s takes ~20 s; a first sync of a
# large model can take most of an hour.
DURATION_BUCKETS_S = (0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                      900.0, 1800.0, 3600.0)

TRANSITIONS = ("acquired", "lost", "released")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def kind_of(exc: BaseException) -> str:
    """An error's class as a label value: IntegrityError -> integrity, NoSpace -> no_space."""
    name = type(exc).__name__.removesuffix("Error") or type(exc).__name__
    return _CAMEL.sub("_", name).lower()


@dataclass(frozen=True, slots=True)
class MirrorState:
    """What the last pass left, for a mirror whose lease this instance holds: a standby's
    numbers would be stale, so it reports none and the holder's are the only ones."""

    name: str
    direction: str
    pending: int  # objects (or artifacts) known to differ, not yet synced
    lag_s: float  # age of the oldest of them; 0 when in sync
    stalled: bool
    artifacts: dict[str, int] = field(default_factory=dict)  # state -> count
    refused: int = 0  # keys the last pass refused
    deletes_held: int = 0  # deletes the guard held back in the last pass
    active: bool = True  # this instance holds the mirror's lease


@dataclass(frozen=True, slots=True)
class LeaseState:
    target: str
    held: bool
    generation: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    mirrors: list[MirrorState] = field(default_factory=list)
    leases: list[LeaseState] = field(default_factory=list)
    loop_lag_s: float = 0.0


class _Live(Collector):
    """Gauges computed at scrape time from the daemon's own state."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # values depend on the daemon's state: collected fresh on every scrape

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._source()
        pending = GaugeMetricFamily(
            "syncd_pending_objects", "Objects (or whole artifacts) known to differ between "
            "source and destination that the last pass did not sync.", labels=["mirror"])
        lag = GaugeMetricFamily(
            "syncd_replication_lag_seconds", "Age of the oldest unsynced change, from when "
            "syncd first saw it (or from the first failed pass); 0 when in sync.",
            labels=["mirror"])
        stalled = GaugeMetricFamily(
            "syncd_mirror_stalled", "1 when a mirror's pass has made no progress for stall_s.",
            labels=["mirror"])
        arts = GaugeMetricFamily(
            "syncd_artifacts", "Artifacts of a pull mirror by state (ready, building, held, "
            "failed).", labels=["mirror", "state"])
        refused = GaugeMetricFamily(
            "syncd_refused_keys", "Keys the last pass refused to touch (unsafe names such as "
            "'../x' or absolute paths, path conflicts).", labels=["mirror"])
        held_back = GaugeMetricFamily(
            "syncd_deletes_held", "Deletes the delete guard held back in the last pass.",
            labels=["mirror"])
        active = GaugeMetricFamily(
            "syncd_mirror_active", "1 while this instance holds the mirror's lease and works "
            "on it; its pending, lag, artifact and refusal series exist only then.",
            labels=["mirror"])
        for m in snap.mirrors:
            stalled.add_metric([m.name], 1.0 if m.stalled else 0.0)
            active.add_metric([m.name], 1.0 if m.active else 0.0)
            if not m.active:
                continue
            pending.add_metric([m.name], m.pending)
            lag.add_metric([m.name], m.lag_s)
            refused.add_metric([m.name], m.refused)
            held_back.add_metric([m.name], m.deletes_held)
            for state, n in sorted(m.artifacts.items()):
                arts.add_metric([m.name, state], n)
        held = GaugeMetricFamily(
            "syncd_lease_held", "1 while this instance holds the write lease of a target.",
            labels=["target"])
        gen = GaugeMetricFamily(
            "syncd_lease_generation", "Generation of the target's lease this instance last "
            "held (0: never held); it fences every write.", labels=["target"])
        for lease in snap.leases:
            held.add_metric([lease.target], 1.0 if lease.held else 0.0)
            gen.add_metric([lease.target], lease.generation)
        loop = GaugeMetricFamily(
            "syncd_event_loop_lag_seconds", "How late the event loop's once-a-second "
            "heartbeat is; a blocked loop stops every mirror.", value=snap.loop_lag_s)
        yield from (pending, lag, stalled, active, arts, refused, held_back, held, gen, loop)


class Metrics:
    def __init__(self, datacenter: str = "") -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no rule reads `_created`
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("syncd_build", "The running syncd's version.", registry=r).info(
            {"version": __version__, "python": platform.python_version(),
             "datacenter": datacenter})
        md = ["mirror", "direction"]
        self.bytes = Counter(
            "syncd_transferred_bytes", "Bytes received from the source as they stream, "
            "including attempts that failed verification.", md, registry=r)
        self.objects = Counter(
            "syncd_transferred_objects", "Objects published (verified, then made visible).",
            md, registry=r)
        self.verified = Counter(
            "syncd_verified_objects", "Published objects whose bytes matched a checksum the "
            "source vouches for.", md, registry=r)
        self.unverified = Counter(
            "syncd_unverified_files", "Published files checked by size only, since the "
            "source vouches for no checksum, by why (no_checksum, encrypted, weak_etag, "
            "parts_unknown).", ["mirror", "reason"], registry=r)
        self.deleted = Counter(
            "syncd_deleted_objects", "Objects deleted from the destination.", md, registry=r)
        self.errors = Counter(
            "syncd_errors", "Errors by kind (unreachable, access_denied, no_space, integrity, "
            "...), per object or per pass, with the S3 endpoint the mirror uses here.",
            ["mirror", "endpoint", "kind"], registry=r)
        self.mirror_info = Gauge(
            "syncd_mirror_info", "Always 1: what a mirror connects in this datacenter, to "
            "join on `mirror`.", ["mirror", "direction", "endpoint", "endpoint_url", "bucket",
                                  "prefix"], registry=r)
        self._info_labels: dict[str, tuple[str, ...]] = {}
        self.verification_failures = Counter(
            "syncd_verification_failures", "Objects whose received bytes did not match the "
            "source's checksum (never published).", ["mirror"], registry=r)
        self.passes = Counter(
            "syncd_sync_passes", "Sync passes by result (ok, partial, failed, fenced).",
            ["mirror", "result"], registry=r)
        self.pass_crashes = Counter(
            "syncd_pass_crashes", "Passes ended by an unexpected error (a bug, not a store or "
            "lease error); each is logged, counted as a failed pass and retried with backoff.",
            ["mirror"], registry=r)
        self.transfer_seconds = Histogram(
            "syncd_transfer_duration_seconds", "Time to stage, verify and publish one object.",
            md, buckets=DURATION_BUCKETS_S, registry=r)
        self.pass_seconds = Histogram(
            "syncd_sync_duration_seconds", "Time of one sync pass (list, plan, transfer, "
            "publish).", md, buckets=DURATION_BUCKETS_S, registry=r)
        self.in_flight = Gauge(
            "syncd_transfers_in_flight", "Objects being transferred right now.", md,
            registry=r)
        self.last_success = Gauge(
            "syncd_last_success_timestamp_seconds", "Unix time of the end of the mirror's "
            "last pass without errors.", ["mirror"], registry=r)
        self.lease_transitions = Counter(
            "syncd_lease_transitions", "Lease changes of this instance (acquired, lost, "
            "released).", ["target", "transition"], registry=r)

    def watch(self, source: Callable[[], Snapshot]) -> None:
        """Serve the daemon's live state (one source per registry)."""
        self.registry.register(_Live(source))

    def mirror(self, name: str, direction: str, *, endpoint: str = DEFAULT_ENDPOINT,
               endpoint_url: str = "", bucket: str = "", prefix: str = "") -> MirrorMeter:
        """The mirror's meter; its info series replaces the one of an earlier config."""
        labels = (name, direction, endpoint, endpoint_url, bucket, prefix)
        old = self._info_labels.get(name)
        if old is not None and old != labels:
            self.mirror_info.remove(*old)
        self._info_labels[name] = labels
        self.mirror_info.labels(*labels).set(1)
        return MirrorMeter(self, name, direction, endpoint)

    def mirror_gone(self, name: str) -> None:
        """A mirror a reload removed: its info series goes (its counters stay, as counters
        should)."""
        old = self._info_labels.pop(name, None)
        if old is not None:
            self.mirror_info.remove(*old)

    def lease_known(self, target: str) -> None:
        """Every transition of a target starts at 0, so the first one shows in increase()."""
        for transition in TRANSITIONS:
            self.lease_transitions.labels(target, transition)

    def lease_changed(self, target: str, transition: str) -> None:
        self.lease_transitions.labels(target, transition).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MirrorMeter:
    """One mirror's metrics, labels bound; `transfer.Transfer` and the daemon feed it."""

    def __init__(self, metrics: Metrics, name: str, direction: str,
                 endpoint: str = DEFAULT_ENDPOINT) -> None:
        m, labels = metrics, (name, direction)
        self._endpoint = endpoint
        self._bytes = m.bytes.labels(*labels)
        self._objects = m.objects.labels(*labels)
        self._verified = m.verified.labels(*labels)
        self._deleted = m.deleted.labels(*labels)
        self._seconds = m.transfer_seconds.labels(*labels)
        self._pass_seconds = m.pass_seconds.labels(*labels)
        self._in_flight = m.in_flight.labels(*labels)
        self._last_success = m.last_success.labels(name)
        self._integrity = m.verification_failures.labels(name)
        self._errors, self._passes, self._name = m.errors, m.passes, name
        self._unverified = m.unverified
        self._crashes = m.pass_crashes.labels(name)
        self._integrity.inc(0)  # present from the start: alerts compare with earlier values
        self._crashes.inc(0)
        self._in_flight.set(0)

    def streamed(self, n: int) -> None:
        self._bytes.inc(n)

    def begun(self) -> None:
        self._in_flight.inc()

    def ended(self, seconds: float, *, published: bool, verified: bool,
              error: BaseException | None) -> None:
        self._in_flight.dec()
        if published:
            self._objects.inc()
            self._seconds.observe(seconds)
            if verified:
                self._verified.inc()
        if error is not None:
            self.failed(error)

    def unverified(self, reason: str) -> None:
        self._unverified.labels(self._name, reason or "no_checksum").inc()

    def failed(self, error: BaseException) -> None:
        kind = kind_of(error)
        self._errors.labels(self._name, self._endpoint, kind).inc()
        if kind == "integrity":
            self._integrity.inc()

    def crashed(self) -> None:
        """A pass ended by an unexpected error (it counts as a failed pass as well)."""
        self._crashes.inc()

    def deleted(self, n: int) -> None:
        self._deleted.inc(n)

    def passed(self, seconds: float, *, result: str) -> None:
        self._passes.labels(self._name, result).inc()
        self._pass_seconds.observe(seconds)
        if result == "ok":
            self._last_success.set(time.time())
