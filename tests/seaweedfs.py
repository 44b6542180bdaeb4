"""SeaweedFS as a test server: one ``weed server`` process (master, volume server, filer, S3
gateway) on 127.0.0.1 only, started and stopped by its own pid like the other servers in
tests/servers.py. Its filer is what tests/fuse_mounts.py mounts twice as a shared volume."""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tests.servers import ACCESS_KEY, HOST, SECRET_KEY, S3Server, port_is_bindable, venv_binary

# SeaweedFS: every service of ``weed server`` listens on its HTTP port and, for gRPC, on that
# port + 10000; the gRPC ones also on Unix sockets at fixed paths under /tmp (not configurable
# in weed 4.48).  All ports are picked below the kernel's ephemeral range, so no outgoing
# connection can be sitting on one of them when the server restarts.
WEED_GRPC_OFFSET = 10000
WEED_ROLES = ("master", "volume", "filer", "s3")
_WEED_LOWEST_PORT = 10000
# weed's filer waits 15 s on SIGTERM for its own in-process metadata subscribers (the S3
# gateway's, its own aggregator's) before it closes; everything it acknowledged is already in
# the kernel by then (leveldb journal, volume .dat/.idx appends), so the wait buys nothing.
_WEED_TERM_GRACE_S = 1.0
# One volume per bucket (collection) at a time instead of weed's 7, each at most 64 MB: a
# session makes hundreds of buckets, and every bucket that holds data occupies a volume slot.
_WEED_ENV = {"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
_WEED_VOLUME_SIZE_MB = 64
_WEED_MAX_VOLUMES = 1000


def _ephemeral_port_floor() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
    except (OSError, IndexError):
        return 32768
    return int(low)


def pick_weed_ports(roles: tuple[str, ...] = WEED_ROLES) -> dict[str, int]:
    """Free loopback ports for ``roles``, each with its gRPC twin (port + 10000) free too, all
    below the ephemeral range (and so below 45000)."""
    floor = _ephemeral_port_floor()
    # Below the ephemeral range where there is room; where it starts low (some hosts use
    # 1024), anywhere below 45000 and rely on the bind checks alone.
    high = (floor if floor - WEED_GRPC_OFFSET > _WEED_LOWEST_PORT + 1000 else 45000) \
        - WEED_GRPC_OFFSET
    chosen: dict[str, int] = {}
    taken: set[int] = set()
    rng = random.Random()
    for role in roles:
        for _ in range(200):
            port = rng.randrange(_WEED_LOWEST_PORT, high)
            pair = {port, port + WEED_GRPC_OFFSET}
            if pair & taken or not all(port_is_bindable(p) for p in pair):
                continue
            chosen[role] = port
            taken |= pair
            break
        else:
            raise RuntimeError(f"found no free port pair for weed {role}")
    return chosen


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def weed_volume_server_registered(master_port: int) -> bool:
    """True once the master knows a volume server (and, from its first heartbeat, every volume
    on it).  S3 answers ListBuckets before that; until then reads fail with "volume not
    found" and writes with "no writable volumes" (after a restart for up to ~5 s, the volume
    server's fixed heartbeat retry period)."""
    try:
        with _NO_PROXY_OPENER.open(f"http://{HOST}:{master_port}/dir/status", timeout=2) as r:
            status = json.load(r)
    except (OSError, ValueError):
        return False
    centers = status.get("Topology", {}).get("DataCenters") or []
    return any(rack.get("DataNodes") for dc in centers for rack in dc.get("Racks") or [])


def new_seaweedfs_server(workdir: Path, ports: Mapping[str, int] | None = None) -> S3Server:
    """An (unstarted) single-process SeaweedFS (``weed server``: master, volume server, filer,
    S3 gateway) on 127.0.0.1 only, with its data under ``workdir/data``.

    S3 accepts only ACCESS_KEY/SECRET_KEY, an admin identity from an ``-s3.config`` file.
    ``ports`` maps each of WEED_ROLES to its HTTP port (default: :func:`pick_weed_ports`);
    the filer's is ``server.ports["filer"]`` (for ``weed mount -filer=``).

    Start-up (and restart) takes ~3.2 s, or ~7 s when the volume server's first heartbeat
    reaches the master before its Raft bootstrap check (1.5 s) has made it leader: weed
    server starts the filer after 1 s and the S3 gateway after 2 s, and a volume server
    retries its heartbeat every 5 s.  None of these is a flag.
    """
    http = dict(ports) if ports is not None else pick_weed_ports()
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    identities = workdir / "s3.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "syncd-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}, indent=2), encoding="utf-8")
    command = [
        str(venv_binary("weed")),
        "-logtostderr",  # glog would otherwise write weed.* files into /tmp
        "server",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-dir={data}",
        f"-master.port={http['master']}",
        "-master.telemetry=false",
        # A restarted master waits this long (default 10 s) before it elects itself again.
        "-master.electionTimeout=1s",
        f"-master.volumeSizeLimitMB={_WEED_VOLUME_SIZE_MB}",
        f"-volume.port={http['volume']}",
        f"-volume.max={_WEED_MAX_VOLUMES}",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={http['filer']}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={http['s3']}",
        f"-s3.config={identities}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    all_ports = {role: http[role] for role in WEED_ROLES if role != "s3"}
    all_ports.update({f"{role}.grpc": http[role] + WEED_GRPC_OFFSET for role in WEED_ROLES})
    sockets = tuple(
        Path(f"/tmp/seaweedfs-{role}-grpc-{http[role] + WEED_GRPC_OFFSET}.sock")
        for role in WEED_ROLES
    )
    return S3Server(
        name="seaweedfs",
        port=http["s3"],
        command=command,
        log_path=workdir / "weed.log",
        ports=all_ports,
        env=dict(_WEED_ENV),
        term_grace=_WEED_TERM_GRACE_S,
        leftovers=sockets,
        ready_check=lambda: weed_volume_server_registered(http["master"]),
    )
