"""syncd.ops.metrics: names by Prometheus conventions, and values that follow what happened.

The alert rules and the dashboard read these series; a counter that does not move, a gauge
left behind by a finished transfer or a label spelled two ways breaks them silently.
"""

from __future__ import annotations

import platform

from prometheus_client.parser import text_string_to_metric_families

from syncd import __version__
from syncd.errors import AccessDenied, IntegrityError, NoSpace, Unreachable
from syncd.ops.metrics import LeaseState, Metrics, MirrorState, Snapshot, kind_of


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_kind_of_names_error_classes_in_snake_case_without_error_suffix() -> None:
    assert kind_of(IntegrityError("x")) == "integrity"
    assert kind_of(NoSpace("x")) == "no_space"
    assert kind_of(AccessDenied("x")) == "access_denied"
    assert kind_of(Unreachable("x")) == "unreachable"
    assert kind_of(ValueError("x")) == "value"


def test_every_syncd_metric_has_the_prefix_and_a_conventional_suffix() -> None:
    metrics = Metrics()
    metrics.mirror("models", "pull")
    metrics.watch(lambda: Snapshot([MirrorState("models", "pull", 0, 0.0, False)],
                                   [LeaseState("/vol", True, 3)]))
    families = list(text_string_to_metric_families(metrics.render().decode()))
    ours = [f for f in families if not f.name.startswith(("process_", "python_"))]
    assert ours and all(f.name.startswith("syncd_") for f in ours)
    for f in ours:
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
        if f.type == "histogram":
            assert f.name.endswith("_seconds"), f.name
    assert value(metrics, "syncd_build_info", version=__version__,
                 python=platform.python_version(), datacenter="") == 1
    assert value(Metrics("EU-RO-1"), "syncd_build_info", version=__version__,
                 python=platform.python_version(), datacenter="EU-RO-1") == 1


def test_mirror_meter_counts_bytes_objects_and_leaves_nothing_in_flight() -> None:
    metrics = Metrics()
    meter = metrics.mirror("models", "pull")
    meter.begun()
    assert value(metrics, "syncd_transfers_in_flight", mirror="models", direction="pull") == 1
    meter.streamed(1000)
    meter.streamed(24)
    meter.ended(0.5, published=True, verified=True, error=None)
    meter.begun()
    meter.ended(0.1, published=False, verified=False, error=None)  # adopted: nothing moved
    labels = {"mirror": "models", "direction": "pull"}
    assert value(metrics, "syncd_transferred_bytes_total", **labels) == 1024
    assert value(metrics, "syncd_transferred_objects_total", **labels) == 1
    assert value(metrics, "syncd_verified_objects_total", **labels) == 1
    assert value(metrics, "syncd_transfer_duration_seconds_count", **labels) == 1
    assert value(metrics, "syncd_transfers_in_flight", **labels) == 0


def test_mirror_meter_counts_a_verification_failure_as_an_error_of_kind_integrity() -> None:
    metrics = Metrics()
    meter = metrics.mirror("models", "pull")
    assert value(metrics, "syncd_verification_failures_total", mirror="models") == 0
    meter.begun()
    meter.ended(2.0, published=False, verified=False, error=IntegrityError("bad bytes"))
    meter.failed(NoSpace("full"))
    assert value(metrics, "syncd_verification_failures_total", mirror="models") == 1
    errors = {"mirror": "models", "endpoint": "default"}
    assert value(metrics, "syncd_errors_total", **errors, kind="integrity") == 1
    assert value(metrics, "syncd_errors_total", **errors, kind="no_space") == 1
    assert value(metrics, "syncd_transferred_objects_total", mirror="models",
                 direction="pull") == 0


def test_mirror_errors_carry_the_endpoint_and_the_info_series_says_what_it_connects() -> None:
    metrics = Metrics()
    meter = metrics.mirror("ckpt", "push", endpoint="r2", endpoint_url="https://r2.example",
                           bucket="runs", prefix="a/")
    meter.failed(Unreachable("no route"))
    assert value(metrics, "syncd_errors_total", mirror="ckpt", endpoint="r2",
                 kind="unreachable") == 1
    info = {"mirror": "ckpt", "direction": "push", "bucket": "runs", "prefix": "a/"}
    assert value(metrics, "syncd_mirror_info", **info, endpoint="r2",
                 endpoint_url="https://r2.example") == 1
    # A reload that moves the mirror to another endpoint replaces its info series.
    metrics.mirror("ckpt", "push", endpoint="default", bucket="runs", prefix="a/")
    assert value(metrics, "syncd_mirror_info", **info, endpoint="r2",
                 endpoint_url="https://r2.example") is None
    assert value(metrics, "syncd_mirror_info", **info, endpoint="default", endpoint_url="") == 1
    metrics.mirror_gone("ckpt")
    assert value(metrics, "syncd_mirror_info", **info, endpoint="default", endpoint_url="") is None


def test_passes_set_last_success_only_when_ok() -> None:
    metrics = Metrics()
    meter = metrics.mirror("ckpt", "push")
    meter.passed(1.0, result="failed")
    assert value(metrics, "syncd_last_success_timestamp_seconds", mirror="ckpt") == 0
    meter.passed(1.0, result="ok")
    assert (value(metrics, "syncd_last_success_timestamp_seconds", mirror="ckpt") or 0) > 0
    meter.passed(1.0, result="fenced")
    for result, n in (("ok", 1), ("failed", 1), ("fenced", 1)):
        assert value(metrics, "syncd_sync_passes_total", mirror="ckpt", result=result) == n
    assert value(metrics, "syncd_sync_duration_seconds_count", mirror="ckpt",
                 direction="push") == 3


def test_live_state_is_read_at_scrape_time() -> None:
    state = {"lag": 0.0, "held": True}
    metrics = Metrics()
    metrics.watch(lambda: Snapshot(
        [MirrorState("models", "pull", 3 if state["lag"] else 0, state["lag"], False,
                     {"ready": 2, "building": 1}, refused=2, deletes_held=7)],
        [LeaseState("s3://b/models", bool(state["held"]), 4)], loop_lag_s=0.25))
    assert value(metrics, "syncd_replication_lag_seconds", mirror="models") == 0
    state.update(lag=42.5, held=False)
    assert value(metrics, "syncd_replication_lag_seconds", mirror="models") == 42.5
    assert value(metrics, "syncd_pending_objects", mirror="models") == 3
    assert value(metrics, "syncd_lease_held", target="s3://b/models") == 0
    assert value(metrics, "syncd_lease_generation", target="s3://b/models") == 4
    assert value(metrics, "syncd_artifacts", mirror="models", state="building") == 1
    assert value(metrics, "syncd_mirror_stalled", mirror="models") == 0
    assert value(metrics, "syncd_event_loop_lag_seconds") == 0.25
    assert value(metrics, "syncd_refused_keys", mirror="models") == 2
    assert value(metrics, "syncd_deletes_held", mirror="models") == 7
    assert value(metrics, "syncd_mirror_active", mirror="models") == 1


def test_a_standby_reports_no_stale_pass_state_for_a_mirror_it_does_not_hold() -> None:
    metrics = Metrics()
    metrics.watch(lambda: Snapshot([MirrorState("models", "pull", 4, 900.0, False,
                                                {"ready": 1}, 1, 1, active=False)]))
    assert value(metrics, "syncd_mirror_active", mirror="models") == 0
    assert value(metrics, "syncd_mirror_stalled", mirror="models") == 0
    for name in ("syncd_pending_objects", "syncd_replication_lag_seconds",
                 "syncd_refused_keys", "syncd_deletes_held"):
        assert value(metrics, name, mirror="models") is None, name


def test_lease_transitions_are_counted_by_target_and_kind_from_zero() -> None:
    metrics = Metrics()
    metrics.lease_known("/vol")
    assert value(metrics, "syncd_lease_transitions_total", target="/vol", transition="lost") == 0
    for t in ("acquired", "lost", "acquired", "released"):
        metrics.lease_changed("/vol", t)
    assert value(metrics, "syncd_lease_transitions_total", target="/vol",
                 transition="acquired") == 2
    assert value(metrics, "syncd_lease_transitions_total", target="/vol", transition="lost") == 1


def test_two_registries_never_share_series() -> None:
    a, b = Metrics(), Metrics()
    a.mirror("m", "pull").streamed(5)
    b.mirror("m", "pull")
    assert value(b, "syncd_transferred_bytes_total", mirror="m", direction="pull") == 0
