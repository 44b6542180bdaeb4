#!/usr/bin/env bash
# Worker entrypoint for RunPod-style GPU workers: wait until the model is published and
# verified on the network volume, then exec the worker with MODEL_DIR, the directory to load
# it from. The worker never sees half a model, and never starts on a missing one.
#
#   COPY entrypoint.sh /entrypoint.sh
#   ENTRYPOINT ["tini", "-g", "--", "/entrypoint.sh"]   # tini -g: SIGTERM reaches syncd too
#   CMD ["python3", "-u", "handler.py"]                 # reads os.environ["MODEL_DIR"]
#
# Environment:
#   MODEL               the artifact: its path relative to a pull mirror's root ("tiny-llama",
#                       needs SYNCD_CONFIG), or its absolute path on the volume
#                       ("/runpod-volume/models/tiny-llama", needs no config or credentials)
#   MODEL_WAIT_TIMEOUT  seconds to wait for it (default 600); then exit 13, worker not started
#   MODEL_SYNC          "daemon": run `syncd run` in the background first, for workers without
#                       a sidecar (RunPod serverless). Every worker on the volume runs one; the
#                       write lease lets one of them sync while the others stand by, and a
#                       standby takes over when that worker goes away. Needs SYNCD_CONFIG,
#                       SYNCD_DATACENTER and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
#                       "external": a sidecar or another host keeps the volume in sync.
#                       Default: "daemon" when SYNCD_CONFIG is set, else "external".
#                       (Not SYNCD_*: syncd reads every SYNCD_* variable as a config field.)
#
# Needs syncd on PATH and bash 5.1 or newer (wait -n -p). A daemon it started keeps running
# beside the worker after the exec. The worker should load the model from MODEL_DIR at start:
# that directory stays as it is when a newer version is published, for the mirror's
# keep_versions_s, then it is pruned.
set -euo pipefail

readonly NOT_READY=13  # `syncd wait`: not published in time

log() { printf 'entrypoint: %s\n' "$*" >&2; }
fail() { # fail CODE MESSAGE: one line on stderr, then exit
    printf 'entrypoint: error: %s\n' "$2" >&2
    exit "$1"
}

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then
    fail 1 "bash 5.1 or newer is needed, this is $BASH_VERSION"
fi
(($# > 0)) || fail 2 "usage: entrypoint.sh WORKER_COMMAND [ARG...] (with MODEL set)"
[[ -n ${MODEL:-} ]] || fail 2 "MODEL is not set: name the artifact to wait for"
timeout_s=${MODEL_WAIT_TIMEOUT:-600}
command -v syncd >/dev/null || fail 1 "syncd is not on PATH: install it in the worker image"
default_mode=external
[[ -n ${SYNCD_CONFIG:-} ]] && default_mode=daemon
mode=${MODEL_SYNC:-$default_mode}
[[ $mode == daemon || $mode == external ]] ||
    fail 2 "MODEL_SYNC must be 'daemon' or 'external', not '$mode'"

scratch=$(mktemp -d)
daemon_pid=""
wait_pid=""

stop_children() {
    local pid
    for pid in "$wait_pid" "$daemon_pid"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true  # the daemon releases its lease on the way out
        fi
    done
}
trap 'rm -rf "$scratch"' EXIT
# As PID 1 a shell ignores SIGTERM unless it traps it.
trap 'log "stopped while waiting for $MODEL"; stop_children; exit 143' TERM INT

if [[ $mode == daemon ]]; then
    syncd run &
    daemon_pid=$!
    log "started syncd run (pid $daemon_pid)"
fi

log "waiting up to ${timeout_s}s for $MODEL"
syncd wait "$MODEL" --timeout "$timeout_s" >"$scratch/dir" 2>"$scratch/err" &
wait_pid=$!

status=0
finished=$wait_pid
if [[ -n $daemon_pid ]]; then
    wait -n -p finished "$daemon_pid" "$wait_pid" || status=$?
else
    wait "$wait_pid" || status=$?
fi

if [[ $finished == "$daemon_pid" ]]; then
    daemon_pid=""
    stop_children
    fail "$((status ? status : 1))" "syncd run exited with code $status before $MODEL was ready; its log above says why"
fi
wait_pid=""

# syncd's own one-line error, without its "syncd: error: " prefix
reason=$(grep -h '^syncd: error: ' "$scratch/err" | tail -n 1 || true)
reason=${reason#syncd: error: }
if ((status == NOT_READY)); then
    stop_children
    fail "$NOT_READY" "$MODEL is not ready, not starting the worker: ${reason:-timed out after ${timeout_s}s}"
elif ((status != 0)); then
    stop_children
    fail "$status" "syncd wait $MODEL failed with code $status: ${reason:-$(tail -n 1 "$scratch/err")}"
fi

MODEL_DIR=$(<"$scratch/dir")
export MODEL_DIR
log "$MODEL is ready in $MODEL_DIR; starting: $*"
rm -rf "$scratch"
trap - EXIT TERM INT
exec "$@"
