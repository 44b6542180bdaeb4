"""`syncd run` as a real subprocess against the real test S3 servers: continuous mirroring,
artifact-atomic publication, settling, manifests, signals, outages and `syncd wait`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from syncd.artifacts import Manifest
from tests.daemons import ART, Setup, version_files
from tests.mirrors import MiB, syncd, tree, wait_for
from tests.seaweedfs import new_seaweedfs_server
from tests.servers import find_free_port, new_moto_server, new_rclone_server


def test_new_artifact_version_appears_whole_while_a_reader_loops(setup: Setup,
                                                                 tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    v1, v2 = version_files("v1", shards=3), version_files("v2", shards=4)
    v2["model-00000.safetensors"] = v1["model-00000.safetensors"]  # unchanged between versions
    setup.publish_artifact("llama", v1)
    # a reader resolves the link, then reads: the old version must outlive it (keep_versions_s)
    keep = ART.replace("keep_versions_s = 0", "keep_versions_s = 30")
    daemon = setup.start(setup.config("pull", vol, extra=keep))
    first = syncd("wait", "llama", "--timeout", "60", "-c", str(setup.tmp / "c.toml"))
    assert first.code == 0, first.stderr
    assert tree(Path(first.stdout.strip())) == v1
    kept_inode = os.stat(vol / "llama" / "model-00000.safetensors").st_ino

    seen: list[str] = []
    mixes: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            here = os.path.realpath(vol / "llama")
            try:
                files = {p.name: p.read_bytes() for p in Path(here).iterdir()}
            except FileNotFoundError:
                mixes.append(f"{here} vanished under a reader")
                continue
            shared = "model-00000.safetensors"  # the same bytes in both versions
            tags = {data.split(b":", 1)[0] for k, data in files.items() if k != shared}
            tag = next(iter(tags)).decode() if len(tags) == 1 else None
            want = {"v1": v1, "v2": v2}.get(tag or "")
            if want is None or (files.keys() != want.keys()) or any(
                    files[k] != want[k] for k in want if k != shared):
                mixes.append(f"{here}: tags {tags}, files {sorted(files)}")
            if not seen or seen[-1] != tag:
                seen.append(str(tag))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        setup.publish_artifact("llama", v2, pause=0.4)  # slowly: passes run in between
        wait_for(lambda: tree(vol / "llama") == v2, what="version 2 on the volume")
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    assert not mixes, mixes[:3]
    assert seen == ["v1", "v2"]
    assert os.stat(vol / "llama" / "model-00000.safetensors").st_ino == kept_inode  # linked
    held = daemon.events("artifact_held")
    assert held, "the half-pushed version was noticed and held back"
    assert len(daemon.events("artifact_published")) == 2
    assert daemon.stop() == 0
    versions = os.listdir(vol / ".syncd" / "artifacts" / "llama")
    assert len(versions) <= 2  # the old one is pruned keep_versions_s after the switch


def test_checkpoint_written_slowly_is_pushed_once_settled_with_its_manifest_last(
        setup: Setup, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    journal = tmp_path / "journal.jsonl"
    cfg = setup.config("push", vol, extra='artifacts = ["step-*"]\nsettle_s = 1.5')
    daemon = setup.start(cfg, SYNCD_LEASE__JOURNAL=str(journal))
    step = vol / "step-100"
    step.mkdir()
    shard = step / "model.safetensors"
    with shard.open("wb") as f:
        for _ in range(6):  # 3 s of writing, pauses shorter than the quiet period
            f.write(os.urandom(256 * 1024))
            f.flush()
            time.sleep(0.5)
            assert not _objects(setup), "nothing is pushed while the checkpoint is written"
    (step / "config.json").write_bytes(b'{"step": 100}')
    wait_for(lambda: "step-100/.syncd-manifest.json" in _objects(setup), what="manifest")
    objects = _objects(setup)
    assert set(objects) == {"step-100/model.safetensors", "step-100/config.json",
                            "step-100/.syncd-manifest.json"}
    body = setup.client.get_object(Bucket=setup.bucket,
                                   Key="models/step-100/model.safetensors")["Body"].read()
    assert body == shard.read_bytes()
    manifest = Manifest.from_bytes(setup.client.get_object(
        Bucket=setup.bucket, Key="models/step-100/.syncd-manifest.json")["Body"].read())
    assert set(manifest.files) == {"model.safetensors", "config.json"}
    assert manifest.files["model.safetensors"].size == shard.stat().st_size
    published = [json.loads(line)["key"] for line in journal.read_text().splitlines()
                 if json.loads(line)["event"] == "publish"]
    assert published[-1] == "step-100/.syncd-manifest.json"
    assert set(published[:-1]) == {"step-100/model.safetensors", "step-100/config.json"}
    assert daemon.stop() == 0


def _objects(setup: Setup) -> dict[str, int]:
    out = {}
    for page in setup.client.get_paginator("list_objects_v2").paginate(
            Bucket=setup.bucket, Prefix="models/"):
        for obj in page.get("Contents", ()):
            key = obj["Key"][len("models/"):]
            if not key.startswith(".syncd/"):
                out[key] = obj["Size"]
    return out


def test_syncd_wait_times_out_then_succeeds_once_published(setup: Setup,
                                                           tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = setup.config("pull", vol, extra=ART)
    early = syncd("wait", "llama", "--timeout", "0.5", "-c", str(cfg))
    assert early.code == 13
    assert early.stderr.startswith("syncd: error: artifact 'llama'")
    assert "not ready after 0.5s" in early.stderr and "Traceback" not in early.stderr
    unknown = syncd("wait", "nope/deeper", "--timeout", "0.5", "-c", str(cfg))
    assert unknown.code == 3 and "no pull mirror" in unknown.stderr
    files = version_files("v1", shards=1)
    setup.publish_artifact("llama", files)
    setup.start(cfg)
    ok = syncd("wait", "llama", "--timeout", "60", "-c", str(cfg))
    assert ok.code == 0, ok.stderr
    assert tree(Path(ok.stdout.strip())) == files
    no_config = syncd("wait", str(vol / "llama"), "--timeout", "5")
    assert no_config.code == 0, no_config.stderr
    assert no_config.stdout == ok.stdout


def test_sigterm_mid_transfer_publishes_nothing_partial_releases_and_exits_0(
        setup: Setup, tmp_path: Path, throttle_proxy: Any) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    setup.put("big.bin", os.urandom(24 * MiB))
    proxy = throttle_proxy(setup.server.port, rate_bytes_per_s=3 * MiB)
    cfg = setup.config("pull", vol, endpoint=proxy.endpoint_url)
    daemon = setup.start(cfg)
    wait_for(lambda: proxy.bytes_to_client > 4 * MiB, what="the download under way")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
    assert not (vol / "big.bin").exists()
    assert daemon.events("lease_released")
    status = syncd("lease", "status", "--json", "-c", str(cfg))
    assert json.loads(status.stdout.splitlines()[0])["state"] in ("released", "free")


def test_sighup_applies_a_valid_config_and_keeps_running_on_an_invalid_one(
        setup: Setup, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = setup.config("pull", vol, prefix="models/a")
    setup.put("a/one.bin", b"1")
    setup.put("b/two.bin", b"2")
    daemon = setup.start(cfg)
    wait_for(lambda: (vol / "one.bin").exists(), what="first sync")
    good = cfg.read_text().replace('prefix = "models/a"', 'prefix = "models/b"')
    cfg.write_text(good)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (vol / "two.bin").exists(), what="the reloaded mirror syncing")
    assert daemon.events("config_reloaded")
    cfg.write_text(good.replace("poll_interval_s = 0.3", "poll_interval_s = -1"))
    daemon.proc.send_signal(signal.SIGHUP)
    rejected = wait_for(lambda: daemon.events("config_rejected"), what="rejection")
    assert "poll_interval_s" in rejected[0]["error"]
    setup.put("b/three.bin", b"3")
    wait_for(lambda: (vol / "three.bin").exists(), what="the old config still syncing")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


@pytest.mark.parametrize("s3", ["moto"], indirect=True)  # about the reload, not S3
def test_sighup_keeps_the_old_config_on_any_failure_to_load(setup: Setup,
                                                             tmp_path: Path) -> None:
    """Each of these ended the daemon (exit 1, so Restart=on-failure looped on the bad file)
    or printed a traceback (issue 18): one `config_rejected` line each, the old config runs."""
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = setup.config("pull", vol)
    good = cfg.read_text()
    setup.put("one.bin", b"1")
    daemon = setup.start(cfg)
    wait_for(lambda: (vol / "one.bin").exists(), what="first sync")
    other = tmp_path / "other"  # a volume whose record JSON is nested past the recursion limit
    (other / ".syncd").mkdir(parents=True)
    (other / ".syncd" / "volume.json").write_text("[" * 100_000)

    def deep(c: Path) -> None:
        c.write_text(good.replace("[daemon]", "[daemon]\nx = " + "[" * 500 + "]" * 500))

    bad = [
        (deep, "nested deeper than the limit of 32"),
        (lambda c: c.write_text(good + "#" * (1 << 20)), "larger than the limit of 1 MiB"),
        (lambda c: c.unlink(), "file not found"),  # vanished
        (lambda c: c.mkdir(), "a directory"),
        (lambda c: (c.rmdir(), c.write_text(good.replace(str(vol), str(other)))),
         "is not a volume record written by syncd (RecursionError"),
    ]
    for i, (spoil, error) in enumerate(bad, 1):
        spoil(cfg)
        daemon.proc.send_signal(signal.SIGHUP)

        def answered(n: int = i) -> bool:
            return daemon.proc.poll() is not None or len(daemon.events("config_rejected")) >= n

        wait_for(answered, what=f"rejection {i}")
        assert daemon.proc.poll() is None, error
        rejected = daemon.events("config_rejected")[-1]
        assert error in rejected["error"] and rejected["kept"] == str(cfg)
    setup.put("two.bin", b"2")
    wait_for(lambda: (vol / "two.bin").exists(), what="the old config still syncing")
    assert not daemon.events("config_reloaded")
    assert daemon.stop() == 0
    log = daemon.log.read_text()
    assert "Traceback" not in log
    assert all(line.startswith("{") for line in log.splitlines())


@pytest.mark.parametrize("kind", ["moto", "rclone", "seaweedfs"])
def test_daemon_rides_out_an_s3_outage_and_catches_up(kind: str, tmp_path: Path) -> None:
    """A server of its own, so that stopping it leaves the shared ones alone."""
    port = find_free_port()
    server = (new_moto_server(port, tmp_path) if kind == "moto"
              else new_rclone_server(port, tmp_path / "data", tmp_path / "srv")
              if kind == "rclone" else new_seaweedfs_server(tmp_path / "weed"))
    server.start()
    try:
        setup = Setup(server, "outage", tmp_path)
        setup.client.create_bucket(Bucket="outage")
        vol = tmp_path / "vol"
        vol.mkdir()
        setup.put("one.bin", b"1")
        daemon = setup.start(setup.config("pull", vol))
        wait_for(lambda: (vol / "one.bin").exists(), what="first sync")
        server.stop()
        wait_for(lambda: len(daemon.events("pass_failed")) >= 2, what="failing passes")
        time.sleep(1.5)
        assert daemon.proc.poll() is None, "a transient outage never ends the daemon"
        server.start()
        if kind == "moto":  # moto keeps buckets in memory: the restart emptied it
            setup.client.create_bucket(Bucket="outage")
            setup.put("one.bin", b"1")
        setup.put("two.bin", b"2")
        wait_for(lambda: (vol / "two.bin").exists(), what="catching up after the outage")
        assert tree(vol) == {"one.bin": b"1", "two.bin": b"2"}
        assert daemon.stop() == 0
    finally:
        for d in setup.daemons:
            if d.proc.poll() is None:
                d.proc.kill()
        server.stop()


def _kept_parts(vol: Path) -> int:
    """Completed parts the interrupted download's progress record names."""
    best = 0
    for sidecar in (vol / ".syncd" / "tmp").glob("resume-*.part.json"):
        try:
            best = max(best, len(json.loads(sidecar.read_bytes()).get("parts", {})))
        except ValueError:
            continue  # being replaced
    return best


def test_a_download_killed_midway_resumes_without_fetching_completed_bytes(
        setup: Setup, tmp_path: Path, throttle_proxy: Any) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    size = 40 * MiB
    data = os.urandom(size)
    setup.put("big.bin", data)
    slow = throttle_proxy(setup.server.port, rate_bytes_per_s=4 * MiB)
    cfg1 = setup.config("pull", vol, endpoint=slow.endpoint_url, transfer="concurrency = 2")
    first = setup.start(cfg1, "first")  # two parts at a time: they complete one pair by one
    wait_for(lambda: _kept_parts(vol) >= 3, what="three parts on disk")
    first.stop(signal.SIGKILL)
    assert not (vol / "big.bin").exists()
    fast = throttle_proxy(setup.server.port)  # counts the bytes of the second run
    cfg = setup.config("pull", vol, endpoint=fast.endpoint_url, name="c2.toml")
    second = setup.start(cfg, "second")
    wait_for(lambda: (vol / "big.bin").exists(), what="the download finished")
    assert (vol / "big.bin").read_bytes() == data
    (published,) = [e for e in second.events("copy_published") if e["key"] == "big.bin"]
    resumed = published["resumed"]
    assert resumed >= 3 * 5 * MiB  # three 5 MiB parts were kept
    done = wait_for(lambda: second.events("pass_done"), what="the pass summary")
    assert done[0]["resumed"] == resumed
    assert done[0]["streamed"] == size - resumed  # only the missing bytes were downloaded
    assert fast.bytes_to_client < size - resumed + 1 * MiB  # ... as the wire saw it too
    assert second.stop() == 0


def test_an_artifact_with_a_marker_file_is_pushed_only_once_the_marker_appears(
        setup: Setup, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    (vol / "ckpt-1").mkdir(parents=True)
    cfg = setup.config("push", vol, extra='artifacts = ["ckpt-*"]\nmarker = "_COMPLETE"\n'
                                          "settle_s = 0")
    (vol / "loose.txt").write_bytes(b"not in any artifact")
    (vol / "ckpt-1" / "weights.bin").write_bytes(os.urandom(300_000))
    daemon = setup.start(cfg)
    wait_for(lambda: "loose.txt" in _objects(setup), what="the loose file pushed")
    time.sleep(1.5)  # several passes
    assert not any(k.startswith("ckpt-1/") for k in _objects(setup))
    (vol / "ckpt-1" / "_COMPLETE").write_bytes(b"")
    wait_for(lambda: "ckpt-1/.syncd-manifest.json" in _objects(setup), what="the manifest")
    assert set(_objects(setup)) == {"loose.txt", "ckpt-1/weights.bin", "ckpt-1/_COMPLETE",
                                    "ckpt-1/.syncd-manifest.json"}
    assert daemon.stop() == 0


def test_a_change_event_pushes_long_before_the_next_rescan(setup: Setup, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = setup.config("push", vol, extra="settle_s = 0.5")
    cfg.write_text(cfg.read_text().replace("poll_interval_s = 0.3", "poll_interval_s = 120"))
    daemon = setup.start(cfg)
    wait_for(lambda: daemon.events("pass_done"), what="the first pass")
    time.sleep(0.5)
    (vol / "new.bin").write_bytes(b"written after the first pass")
    started = time.monotonic()
    wait_for(lambda: "new.bin" in _objects(setup), timeout=20, what="the event-driven push")
    assert time.monotonic() - started < 20  # the rescan is two minutes away
    assert daemon.stop() == 0


def test_a_failing_mirror_never_stops_the_others(setup: Setup, tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    cfg = setup.config("pull", good)
    cfg.write_text(cfg.read_text() + f"""
[[mirrors]]
name = "broken"
bucket = "no-such-bucket-{os.urandom(4).hex()}"
direction = "pull"
volumes = {{ dc1 = "{bad}" }}
""")
    setup.put("one.bin", b"1")
    daemon = setup.start(cfg)
    wait_for(lambda: (good / "one.bin").exists(), what="the good mirror syncing")
    wait_for(lambda: len([e for e in daemon.events("pass_failed")
                          if e.get("mirror") == "broken"]) >= 2, what="the broken one retrying")
    setup.put("two.bin", b"2")
    wait_for(lambda: (good / "two.bin").exists(), what="the good mirror still syncing")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
