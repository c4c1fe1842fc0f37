#!/bin/sh
# edgetl container entrypoint.
#
# 1. When TensorRT imports in this image (Jetson and CUDA images), every bundle under the models
#    directory that has no engine for this GPU gets one: `edgetl compile BUNDLE`. Engines land inside
#    the bundle, i.e. in the mounted volume, so the next start (and every container sharing the
#    volume) finds them and skips this step. A failed compile is logged and the bundle is still
#    served through ONNX Runtime.
# 2. exec `edgetl serve --models DIR --host 0.0.0.0 --port 8000 [ARGS]`: the daemon replaces this
#    shell, so it is PID 1 and receives SIGTERM/SIGINT from the container runtime directly.
#
# Arguments: none or flags (`--max-concurrency 4`) are appended to `edgetl serve`; anything else is run
# as a command instead (`edgetl info`, `sh`).
#
# Environment:
#   EDGETL_MODELS         models directory (default /models)
#   EDGETL_HOST           listen address (default 0.0.0.0)
#   EDGETL_PORT           listen port (default 8000)
#   EDGETL_COMPILE        auto (default: compile when TensorRT imports) | 0 (never)
#   EDGETL_COMPILE_ARGS   flags for `edgetl compile` (default "--precision best": INT8 from the QDQ
#                         graph when the bundle has one, else FP16)
#   EDGETL_SERVE_ARGS     extra flags for `edgetl serve`, e.g. "--max-concurrency 4"
#   EDGETL_CONFIG         a YAML file of `edgetl serve` options (passed as --config when it exists;
#                         flags still override it)
# Logs go to stdout (stderr is merged into it), one line per event.
set -eu

MODELS_DIR="${EDGETL_MODELS:-/models}"
HOST="${EDGETL_HOST:-0.0.0.0}"
PORT="${EDGETL_PORT:-8000}"
COMPILE="${EDGETL_COMPILE:-auto}"
PYTHON="${EDGETL_PYTHON:-python3}"

log() {
    printf '%s edgetl-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"
}

# Exit 0 when the bundle already has an engine this GPU and TensorRT can run, 1 when it has none,
# anything else when the question could not be answered (then compiling is the safe choice).
has_matching_engine() {
    "$PYTHON" - "$1" <<'PY'
import sys

from edgetl.bundle.manifest import open_bundle
from edgetl.runtime.artifacts import select_engine

artifact, reason = select_engine(open_bundle(sys.argv[1], verify=False))
print(reason)
sys.exit(0 if artifact is not None else 1)
PY
}

child=""
on_signal() {
    log "stopping: signal received during engine compilation"
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    exit 143
}

compile_bundle() {
    bundle="$1"
    log "compiling a TensorRT engine for $bundle (first start on this device; cached in the volume)"
    # shellcheck disable=SC2086 # EDGETL_COMPILE_ARGS is a list of flags on purpose
    edgetl compile "$bundle" ${EDGETL_COMPILE_ARGS:---precision best} 2>&1 &
    child=$!
    if wait "$child"; then
        log "engine ready for $bundle"
    else
        log "WARNING: engine compilation failed for $bundle (exit $?); serving it with ONNX Runtime"
    fi
    child=""
}

# Containers sharing one models volume take turns (one engine build at a time on the device), and
# each checks for engines only once it holds the lock, so a bundle is compiled once, not per container.
# The lock file has a hidden name: the daemon ignores it.
lock_models() {
    lock="$MODELS_DIR/.edgetl-compile.lock"
    if command -v flock >/dev/null 2>&1 && [ -w "$MODELS_DIR" ]; then
        exec 9>"$lock"
        if ! flock -w 3600 9; then
            log "WARNING: another container held $lock for an hour; going on without it"
        fi
    fi
}

compile_missing_engines() {
    case "$COMPILE" in
        0 | no | false | off)
            log "engine compilation disabled (EDGETL_COMPILE=$COMPILE)"
            return 0
            ;;
    esac
    if ! "$PYTHON" -c "import tensorrt" >/dev/null 2>&1; then
        log "TensorRT not available in this image: serving with ONNX Runtime"
        return 0
    fi
    trap on_signal TERM INT
    lock_models
    # The daemon's layouts: DIR itself, DIR/<name>/ and DIR/<name>/<version>/.
    for manifest in "$MODELS_DIR"/manifest.json "$MODELS_DIR"/*/manifest.json "$MODELS_DIR"/*/*/manifest.json; do
        [ -f "$manifest" ] || continue
        bundle="$(dirname "$manifest")"
        if reason="$(has_matching_engine "$bundle" 2>&1)"; then
            log "engine found for $bundle: $reason"
            continue
        fi
        if [ ! -w "$bundle" ]; then
            log "WARNING: $bundle is read-only, cannot cache an engine there; serving it with ONNX Runtime"
            continue
        fi
        compile_bundle "$bundle"
    done
    if [ -w "$MODELS_DIR" ] && command -v flock >/dev/null 2>&1; then
        exec 9>&-
    fi
    trap - TERM INT
}

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    # A command, not serve flags: run it as is (a shell, `edgetl info`, a one-off compile).
    exec "$@"
fi

if [ ! -d "$MODELS_DIR" ]; then
    log "ERROR: models directory $MODELS_DIR does not exist: mount a volume with bundles there"
    exit 2
fi

compile_missing_engines

if [ -n "${EDGETL_CONFIG:-}" ]; then
    if [ -f "$EDGETL_CONFIG" ]; then
        set -- --config "$EDGETL_CONFIG" "$@"
    else
        log "WARNING: EDGETL_CONFIG=$EDGETL_CONFIG does not exist; starting with defaults"
    fi
fi

log "starting: edgetl serve --models $MODELS_DIR --host $HOST --port $PORT $* ${EDGETL_SERVE_ARGS:-}"
# shellcheck disable=SC2086 # EDGETL_SERVE_ARGS is a list of flags on purpose
exec edgetl serve --models "$MODELS_DIR" --host "$HOST" --port "$PORT" "$@" ${EDGETL_SERVE_ARGS:-} 2>&1
