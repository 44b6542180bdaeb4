"""The contenders and how each one is invoked.

Every tool runs as its own subprocess against the same endpoint. A first transfer into a
fresh destination uses the tool's copy command; a re-sync (no-op and W5) uses its sync
command. Credentials go in the environment only (never argv, never a file of ours that a
tool could rewrite): AWS_* for syncd and s5cmd, RCLONE_CONFIG_BENCH_* for rclone.

- ``syncd``: default settings, a generated TOML config, ``syncd sync --once -c CFG``; for
  W7 (the daemon at rest) ``syncd run -c CFG``.
- ``s5cmd`` / ``s5cmd-tuned``: ``cp`` / ``sync``; tuned adds ``--numworkers 32`` and
  ``-c 2 -p 64``.
- ``rclone`` / ``rclone-tuned``: ``copy`` / ``sync`` to a remote defined purely by
  environment variables; tuned adds more transfers/checkers/streams and ``--checksum`` on
  re-syncs.
- ``boto3-crt``: boto3's CRT transfer manager (bench/crt_peer.py), one download_file /
  upload_file per object with default settings; it has no sync, so it joins copies only.
- ``limit``: not a sync tool: parallel ranged GETs by curl on presigned URLs, written to
  /dev/null: what the server can serve (pull of large objects only).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.crt_peer import NOT_APPLICABLE as CRT_NOT_APPLICABLE
from bench.server import Credentials, clean_env, find_binary, tool_version

PEERS = ("s5cmd", "s5cmd-tuned", "rclone", "rclone-tuned", "boto3-crt")
COPY_ONLY = frozenset({"boto3-crt", "limit"})  # families without a sync command
CRT_SCRIPT = Path(__file__).resolve().parent / "crt_peer.py"

# syncd with its native engine off (`transfer.native = false`): the engine measured against
# syncd's own data path in the same run (issue 20); not a peer
OWN_PATH = "syncd-own"
ALL_TOOLS = ("syncd", OWN_PATH, *PEERS, "limit")
DEFAULT_TOOLS = tuple(t for t in ALL_TOOLS if t != OWN_PATH)  # syncd-own: asked for by name
LIMIT_RANGES = 4
LIMIT_MIN_RANGED = 8 * 1024 * 1024  # objects at least this big get 4 ranged GETs
SYNCD_MIRROR = "bench"
SYNCD_DATACENTER = "bench"
RCLONE_TUNED = ["--transfers", "16", "--checkers", "16", "--multi-thread-streams", "2",
                "--multi-thread-cutoff", "64M", "--s3-upload-concurrency", "4",
                "--s3-chunk-size", "32M"]
S5CMD_TUNED_GLOBAL = ["--numworkers", "32"]
S5CMD_TUNED_CMD = ["-c", "2", "-p", "64"]

_SUMMARY = re.compile(
    r"^\[(?P<name>[^\]]+)\] (?P<files>\d+) files, (?P<mb>[\d.]+) MB copied in "
    r"(?P<secs>[\d.]+)s .*?; (?P<verified>\d+) verified, (?P<unverified>\d+) size-only; "
    r"(?P<adopted>\d+) adopted, (?P<deleted>\d+) deleted, (?P<refused>\d+) refused, "
    r"(?P<failed>\d+) failed", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class S3Loc:
    bucket: str
    prefix: str  # no leading or trailing '/'

    @property
    def slash(self) -> str:
        return f"{self.prefix}/"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/"


@dataclass(frozen=True, slots=True)
class Target:
    """Where and as whom the tools connect."""

    endpoint_url: str
    creds: Credentials
    workdir: Path

    def aws_env(self) -> dict[str, str]:
        return clean_env(self.creds.aws_env(self.workdir))


@dataclass(frozen=True, slots=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    notes: dict[str, str] = field(default_factory=dict)
    na_exit: int | None = None  # this exit code means "not applicable here", not a failure


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    family: str  # syncd | s5cmd | rclone | boto3-crt | limit
    binary: Path | None
    tuned: bool = False

    @property
    def available(self) -> bool:
        return self.binary is not None

    @property
    def is_peer(self) -> bool:
        return self.name in PEERS

    @property
    def syncs(self) -> bool:
        """Has a sync command: joins no-op and re-sync rows, not only fresh copies."""
        return self.family not in COPY_ONLY

    def version(self) -> str:
        if self.binary is None:
            return "not found"
        if self.family == "boto3-crt":
            return tool_version([str(self.binary), "-c", "import awscrt, boto3; print("
                                 "f'boto3 {boto3.__version__}, awscrt {awscrt.__version__}')"])
        flag = {"syncd": ["--version"], "s5cmd": ["version"], "rclone": ["version"],
                "limit": ["--version"]}[self.family]
        return tool_version([str(self.binary), *flag])

    # --- commands ---------------------------------------------------------------------

    def _syncd_env(self, target: Target) -> dict[str, str]:
        env = _syncd_env(target)
        env["SYNCD_TRANSFER__NATIVE"] = "false" if self.name == OWN_PATH else "true"
        return env

    def pull(self, target: Target, src: S3Loc, dest: Path, *, resync: bool,
             conf_dir: Path, tag: str) -> Invocation:
        assert self.binary is not None
        exe = str(self.binary)
        if self.family == "syncd":
            cfg = write_syncd_config(conf_dir / f"syncd-{tag}.toml", target, src, dest, "pull")
            return Invocation([exe, "sync", "--once", "-c", str(cfg)], self._syncd_env(target))
        if self.family == "s5cmd":
            return Invocation(self._s5cmd(target, "sync" if resync else "cp",
                                          f"{src.url}*", f"{dest}/"), target.aws_env())
        if self.family == "rclone":
            return Invocation(self._rclone("sync" if resync else "copy",
                                           f"bench:{src.bucket}/{src.prefix}", str(dest),
                                           resync),
                              rclone_env(target, conf_dir))
        if self.family == "boto3-crt":
            return self._crt(target, "pull", src, dest)
        raise ValueError(f"{self.name} has no pull command (use limit_invocation)")

    def push(self, target: Target, src: Path, dest: S3Loc, *, resync: bool,
             conf_dir: Path, tag: str) -> Invocation:
        assert self.binary is not None
        exe = str(self.binary)
        if self.family == "syncd":
            cfg = write_syncd_config(conf_dir / f"syncd-{tag}.toml", target, dest, src, "push")
            return Invocation([exe, "sync", "--once", "-c", str(cfg)], self._syncd_env(target))
        if self.family == "s5cmd":
            # cp 'dir/*' keeps the tree below dir; sync takes the directory itself.
            source = f"{src}/" if resync else f"{src}/*"
            return Invocation(self._s5cmd(target, "sync" if resync else "cp", source,
                                          dest.url), target.aws_env())
        if self.family == "rclone":
            return Invocation(self._rclone("sync" if resync else "copy", str(src),
                                           f"bench:{dest.bucket}/{dest.prefix}", resync),
                              rclone_env(target, conf_dir))
        if self.family == "boto3-crt":
            return self._crt(target, "push", dest, src)
        raise ValueError(f"{self.name} cannot push")

    def daemon(self, target: Target, src: S3Loc, dest: Path, *, conf_dir: Path) -> Invocation:
        """``syncd run``: the pull mirror of ``pull()`` with default ``[daemon]`` settings
        (poll interval, grace), its HTTP endpoint on a port of the kernel's choosing (it can
        never collide), and nothing of a systemd around the harness."""
        if self.family != "syncd" or self.binary is None:
            raise ValueError(f"{self.name} has no daemon mode")
        cfg = write_syncd_config(conf_dir / "syncd-run.toml", target, src, dest, "pull")
        env = _syncd_env(target)
        env["SYNCD_HTTP__LISTEN"] = "127.0.0.1:0"
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        return Invocation([str(self.binary), "run", "-c", str(cfg)], env)

    def _crt(self, target: Target, direction: str, loc: S3Loc, local: Path) -> Invocation:
        assert self.binary is not None
        return Invocation([str(self.binary), str(CRT_SCRIPT), direction, target.endpoint_url,
                           loc.bucket, loc.prefix, str(local)], target.aws_env(),
                          na_exit=CRT_NOT_APPLICABLE)

    def _s5cmd(self, target: Target, command: str, src: str, dest: str) -> list[str]:
        assert self.binary is not None
        argv = [str(self.binary), "--endpoint-url", target.endpoint_url]
        if self.tuned:
            argv += S5CMD_TUNED_GLOBAL
        argv.append(command)
        if self.tuned:
            argv += S5CMD_TUNED_CMD
        return [*argv, src, dest]

    def _rclone(self, command: str, src: str, dest: str, resync: bool) -> list[str]:
        assert self.binary is not None
        argv = [str(self.binary), command, src, dest]
        if self.tuned:
            argv += RCLONE_TUNED
            if resync:
                argv.append("--checksum")
        return argv


def byte_compile_syncd() -> None:
    """Measure syncd as an installed package runs: from bytecode. An editable install
    under PYTHONDONTWRITEBYTECODE (common in containers) would otherwise compile every
    module from source on each start, ~60 ms that no user pays."""
    import compileall

    import syncd

    compileall.compile_dir(str(Path(syncd.__file__).parent), quiet=2)


def make_tools(names: list[str], *, curl: Path | None = None) -> list[Tool]:
    """The named tools, each with its binary (None when it is not installed)."""
    syncd = find_binary("syncd")
    if {"syncd", OWN_PATH} & set(names) and syncd is not None:
        byte_compile_syncd()
    s5cmd = find_binary("s5cmd")
    rclone = find_binary("rclone")
    if curl is None:
        curl = find_binary("curl")
    elif not (curl.is_file() and os.access(curl, os.X_OK)):
        curl = None
    table = {
        "syncd": Tool("syncd", "syncd", syncd),
        OWN_PATH: Tool(OWN_PATH, "syncd", syncd),
        "s5cmd": Tool("s5cmd", "s5cmd", s5cmd),
        "s5cmd-tuned": Tool("s5cmd-tuned", "s5cmd", s5cmd, tuned=True),
        "rclone": Tool("rclone", "rclone", rclone),
        "rclone-tuned": Tool("rclone-tuned", "rclone", rclone, tuned=True),
        "boto3-crt": Tool("boto3-crt", "boto3-crt", _crt_python()),
        "limit": Tool("limit", "limit", curl),
    }
    return [table[n] for n in names]


def _crt_python() -> Path | None:
    """This interpreter, when it has boto3's CRT extra (awscrt) installed."""
    import importlib.util

    return Path(sys.executable) if importlib.util.find_spec("awscrt") else None


# --- syncd ---------------------------------------------------------------------------------


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def write_syncd_config(path: Path, target: Target, loc: S3Loc, volume: Path,
                       direction: str) -> Path:
    """A config with one mirror and default [transfer] settings: syncd as shipped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by python -m bench; credentials come from AWS_* only\n"
        f"datacenter = {_q(SYNCD_DATACENTER)}\n\n"
        "[s3]\n"
        f"endpoint_url = {_q(target.endpoint_url)}\n"
        f"region = {_q(target.creds.region)}\n"
        'addressing_style = "path"\n\n'
        "[[mirrors]]\n"
        f"name = {_q(SYNCD_MIRROR)}\n"
        f"bucket = {_q(loc.bucket)}\n"
        f"prefix = {_q(loc.prefix)}\n"
        f"direction = {_q(direction)}\n"
        # the harness's own server (rclone) ignores conditional writes, so it cannot hold an
        # S3 lease; the volume lease costs a few local file operations per run
        'lease = "volume"\n'
        f"volumes = {{ {SYNCD_DATACENTER} = {_q(str(volume.resolve()))} }}\n"
    )
    return path


def _syncd_env(target: Target) -> dict[str, str]:
    env = target.aws_env()
    env["SYNCD_LOG_FORMAT"] = "json"
    return env


def parse_syncd_summary(stdout: str) -> dict[str, float] | None:
    """The numbers of syncd's summary line ``[name] N files, X MB copied in ...``."""
    m = _SUMMARY.search(stdout)
    if m is None:
        return None
    return {k: float(v) if k in ("mb", "secs") else int(v)
            for k, v in m.groupdict().items() if k != "name"}


# --- rclone --------------------------------------------------------------------------------


def rclone_env(target: Target, conf_dir: Path) -> dict[str, str]:
    """A remote named ``bench`` defined purely by environment variables."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    empty = conf_dir / "rclone-empty.conf"
    empty.touch()
    env = clean_env({"AWS_EC2_METADATA_DISABLED": "true"})
    env.update({
        "RCLONE_CONFIG": str(empty),
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": target.endpoint_url,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": target.creds.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": target.creds.secret_key,
        "RCLONE_CONFIG_BENCH_REGION": target.creds.region,
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    })
    if target.creds.session_token:
        env["RCLONE_CONFIG_BENCH_SESSION_TOKEN"] = target.creds.session_token
    return env


# --- the limit: curl ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RangedGet:
    key: str
    start: int
    end: int  # inclusive; -1 with start 0 for an empty object
    ranged: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def plan_ranges(objects: Mapping[str, int]) -> list[RangedGet]:
    """4 ranged GETs per large object, one GET per small one."""
    gets = []
    for key, size in sorted(objects.items()):
        if size >= LIMIT_MIN_RANGED:
            step = -(-size // LIMIT_RANGES)
            for start in range(0, size, step):
                gets.append(RangedGet(key, start, min(size, start + step) - 1, ranged=True))
        else:
            gets.append(RangedGet(key, 0, size - 1))
    return gets


def limit_invocation(tool: Tool, gets: list[RangedGet], presign: Callable[[str], str],
                     conf_dir: Path, tag: str) -> Invocation:
    """curl reading a config file (URLs stay out of argv), all transfers in parallel."""
    assert tool.binary is not None
    conf_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, get in enumerate(gets):
        if i:
            lines.append("next")
        report = f"{i} %{{http_code}} %{{size_download}}\n"  # one line per transfer
        lines += [
            f"url = {_q(presign(get.key))}",
            'output = "/dev/null"',
            "silent", "show-error", "fail",
            'noproxy = "*"',
            f"write-out = {_q(report)}",
        ]
        if get.ranged:
            lines.append(f'range = "{get.start}-{get.end}"')
    cfg = conf_dir / f"curl-{tag}.conf"
    cfg.write_text("\n".join(lines) + "\n")
    cfg.chmod(0o600)
    argv = [str(tool.binary), "--parallel", "--parallel-max", str(min(300, len(gets))),
            "--config", str(cfg)]
    return Invocation(argv, clean_env())


def check_limit_output(stdout: str, gets: list[RangedGet]) -> list[str]:
    """Problems with curl's per-transfer report (status and bytes of every GET)."""
    seen: dict[int, tuple[str, int]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            seen[int(parts[0])] = (parts[1], int(parts[2]))
    problems = []
    for i, get in enumerate(gets):
        if i not in seen:
            problems.append(f"no result for GET {get.key} {get.start}-{get.end}")
            continue
        code, size = seen[i]
        # A ranged GET should answer 206; rclone serve s3 answers 200 with a Content-Range
        # and only the range's bytes, so the size decides.
        if code not in ("200", "206") or size != get.length:
            problems.append(f"GET {get.key} {get.start}-{get.end}: HTTP {code}, {size} bytes "
                            f"(expected {get.length})")
    return problems
