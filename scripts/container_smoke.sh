#!/usr/bin/env bash
# Container smoke test for docker/Dockerfile (the CPU image), with no registry and no Docker engine:
#
#   1. base image: a Debian bookworm root (python3 + venv) made with debootstrap and `podman import`ed
#      as localhost/edgetl-ci-base:bookworm (rootfs tarball cached, so later runs skip debootstrap);
#   2. wheelhouse: every pinned wheel downloaded on the host into docker/wheels (cached), because
#      the index is not reachable from inside a build here;
#   3. build: `podman build -f docker/Dockerfile --build-arg BASE_IMAGE=<that> --build-arg PIP_NO_INDEX=1`
#      with no network in the build at all;
#   4. run it with a demo bundle mounted at /models, wait for /v2/health/ready, predict one image
#      through /v1/predict and one through tritonclient (KServe v2);
#   5. SIGTERM the container and check it drains and exits 0 (not killed, not an error).
#
# Usage: scripts/container_smoke.sh [--variant cpu|jetson-standin] [--summary FILE] [--keep]
#   --variant        cpu (default): docker/Dockerfile as described above.
#                    jetson-standin: docker/Dockerfile.jetson built on the same Debian base plus a
#                    stand-in `tensorrt` Python module (no L4T image or arm64 here). It checks the
#                    Jetson build mechanics (apt step, --system-site-packages venv, its lock) and the
#                    entrypoint's first-start compile path: `edgetl compile` runs, fails for want of a
#                    GPU, and the bundle is served with ONNX Runtime. Its apt step needs the network.
#   --summary FILE   also write the JSON summary (timings, image size, checks) to FILE; the README's
#                    image size comes from `--summary benchmarks/results/container_cpu.json`
#   --keep           leave the container running instead of stopping it (for poking at it)
# Environment: EDGETL_CI_CACHE (default /var/cache/edgetl-ci), EDGETL_SMOKE_PORT (default 18080),
#   PYTHON (default: python3 of the active venv; needs edgetl, onnx and tritonclient).
# Needs root and podman, runc, debootstrap (scripts/install_container_tools.sh installs them).
# Exit codes: 0 passed, 1 a check failed, 3 a tool is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDGETL_CI_CACHE:-/var/cache/edgetl-ci}"
PORT="${EDGETL_SMOKE_PORT:-18080}"
PYTHON="${PYTHON:-python3}"
SUITE="bookworm"
MIRROR="${EDGETL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_TAG="localhost/edgetl-ci-base:${SUITE}"
VARIANT="cpu"
CONTAINER="edgetl-smoke-$$"
SUMMARY=""
KEEP=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --variant) VARIANT="$2"; shift 2 ;;
        --summary) SUMMARY="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "container_smoke.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

case "$VARIANT" in
    cpu)
        DOCKERFILE="docker/Dockerfile"; LOCK="docker/requirements-cpu.txt"; EXTRA_PINS=()
        BUILD_NETWORK="none"; IMAGE_TAG="localhost/edgetl:cpu-smoke" ;;
    jetson-standin)
        DOCKERFILE="docker/Dockerfile.jetson"; LOCK="docker/requirements-jetson.txt"
        # The two pins the Jetson image takes from build arguments, at their defaults.
        mapfile -t EXTRA_PINS < <(sed -n 's/^ARG \(ONNXRUNTIME\|CUDA_PYTHON\)=//p' "$ROOT/$DOCKERFILE")
        BUILD_NETWORK="host"; IMAGE_TAG="localhost/edgetl:jetson-standin" ;;
    *) echo "container_smoke.sh: unknown variant $VARIANT" >&2; exit 2 ;;
esac

T0=$(date +%s)
log() { printf '[smoke %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

for tool in podman runc; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing $tool: run scripts/install_container_tools.sh"; exit 3; }
done
[[ ${EUID} -eq 0 ]] || { log "needs root (podman with vfs storage as root)"; exit 3; }

mkdir -p "$CACHE"
# default_ulimits = []: the sandboxed kernels these machines run refuse podman's default nofile limit.
if [[ -z "${CONTAINERS_CONF:-}" ]]; then
    export CONTAINERS_CONF="$CACHE/containers.conf"
    printf '[containers]\ndefault_ulimits = []\n' > "$CONTAINERS_CONF"
fi
pm() { podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs "$@"; }

declare -A TIMES
stage_start() { STAGE_T=$(date +%s); log "$1"; }
stage_end() { TIMES[$1]=$(($(date +%s) - STAGE_T)); }

# -- 1. base image -------------------------------------------------------------------------------------
stage_start "base image $BASE_TAG"
BASE_TAR="$CACHE/base-${SUITE}-python3.tar"
if pm image exists "$BASE_TAG"; then
    log "base image present"
else
    if [[ ! -s "$BASE_TAR" ]]; then
        command -v debootstrap >/dev/null 2>&1 || { log "missing debootstrap: run scripts/install_container_tools.sh"; exit 3; }
        rootfs="$CACHE/rootfs.tmp"
        rm -rf "$rootfs"
        log "debootstrap $SUITE (minbase + python3, python3-venv) from $MIRROR"
        debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$MIRROR" \
            > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap"; }
        # What a slim base leaves out anyway: package caches, docs, man pages, translations.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
        tar --numeric-owner -C "$rootfs" -cf "$BASE_TAR.tmp" .
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$rootfs"
    fi
    pm import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        "$BASE_TAR" "$BASE_TAG" >/dev/null
fi
if [[ $VARIANT == jetson-standin ]]; then
    # The L4T images carry TensorRT's Python bindings in the system dist-packages; so does this one,
    # as a module that imports and reports a version and nothing more.
    STANDIN_TAG="localhost/edgetl-ci-trt-standin:${SUITE}"
    if ! pm image exists "$STANDIN_TAG"; then
        printf 'FROM %s\nRUN mkdir -p /usr/lib/python3/dist-packages/tensorrt && echo "__version__ = \\"0.0-standin\\"" > /usr/lib/python3/dist-packages/tensorrt/__init__.py\n' \
            "$BASE_TAG" > "$CACHE/Containerfile.standin"
        pm build --layers=false --network none -t "$STANDIN_TAG" -f "$CACHE/Containerfile.standin" "$CACHE" \
            > "$CACHE/standin.log" 2>&1 || { tail -20 "$CACHE/standin.log" >&2; die "stand-in base"; }
    fi
    BASE_TAG="$STANDIN_TAG"
fi
stage_end base

# -- 2. wheelhouse -------------------------------------------------------------------------------------
stage_start "wheelhouse (host download, pinned, no dependencies resolved beyond the lock)"
pyver="$(pm run --rm --network none "$BASE_TAG" python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
wheels="$CACHE/wheels-$VARIANT-cp$pyver"
stamp="$( (cat "$ROOT/$LOCK" "$ROOT/docker/requirements-build.txt"; echo "${EXTRA_PINS[*]}") | sha256sum | cut -c1-16)"
if [[ -f "$wheels/.complete-$stamp" ]]; then
    log "wheels cached in $wheels"
else
    mkdir -p "$wheels"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --python-version "$pyver" --implementation cp \
        --dest "$wheels" \
        -r "$ROOT/$LOCK" -r "$ROOT/docker/requirements-build.txt" "${EXTRA_PINS[@]}" \
        2> >(grep -v "is neither a file nor a directory" >&2) \
        || die "pip download of the pinned wheels"
    touch "$wheels/.complete-$stamp"
fi
find "$ROOT/docker/wheels" -maxdepth 1 -name '*.whl' -delete
cp "$wheels"/*.whl "$ROOT/docker/wheels/"
stage_end wheels

# -- 3. build ------------------------------------------------------------------------------------------
stage_start "build $DOCKERFILE on $BASE_TAG (build network: $BUILD_NETWORK)"
revision="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
# Whether the build context differed from that commit (uncommitted changes in what the image copies).
dirty="$(git -C "$ROOT" status --porcelain -- edgetl pyproject.toml README.md docker 2>/dev/null | grep -c . || true)"
# --layers=false: one commit per stage. With vfs storage every layer is a full copy of the root, so a
# layered build is 3-5x slower here and its cache rarely survives a source change anyway.
pm build --format docker --network "$BUILD_NETWORK" --layers=false \
    --build-arg BASE_IMAGE="$BASE_TAG" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg REVISION="$revision" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    -f "$ROOT/$DOCKERFILE" -t "$IMAGE_TAG" "$ROOT" > "$CACHE/build.log" 2>&1 \
    || { tail -40 "$CACHE/build.log" >&2; die "podman build"; }
pm image prune --force >/dev/null 2>&1 || true   # the previous run's image, now untagged
image_bytes="$(pm image inspect --format '{{.Size}}' "$IMAGE_TAG")"
base_bytes="$(pm image inspect --format '{{.Size}}' "$BASE_TAG")"
log "image $IMAGE_TAG: $((image_bytes / 1000000)) MB (base $((base_bytes / 1000000)) MB)"
stage_end build

# -- 4. run and predict --------------------------------------------------------------------------------
stage_start "run with a demo bundle mounted at /models"
work="$(mktemp -d "${TMPDIR:-/tmp}/edgetl-smoke.XXXXXX")"
# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
    if [[ $KEEP -eq 0 ]]; then
        pm rm --force --ignore "$CONTAINER" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
"$PYTHON" "$ROOT/scripts/make_smoke_bundle.py" "$work/assets" > "$work/assets.json" || die "making the demo bundle"
mkdir -p "$work/models"
mv "$work/assets/colors" "$work/models/colors"
"$PYTHON" - "$work/assets.json" "$work/models/colors" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["bundle"] = sys.argv[2]
json.dump(doc, open(sys.argv[1], "w"))
PY
# The image runs as uid 10001; the volume must be writable for it (engine cache, daemon state).
chown -R 10001:10001 "$work/models"

# Host networking: no CNI bridge or port forwarding needed in the sandbox; the port comes from the env.
# (podman's healthcheck timer needs systemd, absent here: its complaint goes to run.err, and the
# image's HEALTHCHECK is exercised below with `podman healthcheck run` instead.)
pm run --detach --name "$CONTAINER" --network host \
    --env EDGETL_PORT="$PORT" \
    --volume "$work/models:/models" \
    "$IMAGE_TAG" >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; die "podman run"; }
client_ok=1
"$PYTHON" "$ROOT/scripts/smoke_client.py" --url "http://127.0.0.1:$PORT" --bundle-info "$work/assets.json" \
    --timeout 180 > "$work/client.json" || client_ok=0
cat "$work/client.json" >&2
health="$(pm inspect --format '{{.Config.Healthcheck.Test}}' "$CONTAINER" 2>/dev/null || true)"
healthcheck_ok=0
if pm healthcheck run "$CONTAINER" 2>>"$work/run.err"; then healthcheck_ok=1; else cat "$work/run.err" >&2; fi
stage_end run

# -- 5. SIGTERM ----------------------------------------------------------------------------------------
exit_code=-1
stop_seconds=-1
if [[ $KEEP -eq 0 ]]; then
    stage_start "SIGTERM and wait for a clean exit"
    t_stop=$(date +%s)
    pm kill --signal TERM "$CONTAINER" >/dev/null
    exit_code="$(timeout 60 podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs wait "$CONTAINER" || echo timeout)"
    stop_seconds=$(($(date +%s) - t_stop))
    stage_end stop
fi
pm logs "$CONTAINER" > "$CACHE/last-run.log" 2>&1 || true
log "container log (last 15 lines of $CACHE/last-run.log):"
tail -15 "$CACHE/last-run.log" >&2

total=$(($(date +%s) - T0))
summary="$("$PYTHON" - "$work/client.json" <<PY
import json, sys
try:
    client = json.load(open(sys.argv[1]))
except Exception as exc:
    client = {"checks": {"client": False}, "error": str(exc)}
doc = {
    "variant": "$VARIANT", "image": "$IMAGE_TAG", "base_image": "$BASE_TAG",
    "revision": "$revision", "uncommitted_files": int("${dirty:-0}"),
    "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "image_bytes": int("$image_bytes"), "base_bytes": int("$base_bytes"),
    "seconds": {"base": ${TIMES[base]}, "wheels": ${TIMES[wheels]}, "build": ${TIMES[build]},
                "run": ${TIMES[run]}, "stop": ${TIMES[stop]:-0}, "total": $total},
    "healthcheck": "$health", "healthcheck_ok": bool($healthcheck_ok),
    "client": client, "exit_code": "$exit_code", "stop_seconds": $stop_seconds,
}
checks = dict(client.get("checks", {}))
checks["healthcheck"] = bool($healthcheck_ok)
if "$VARIANT" == "jetson-standin":
    log = open("$CACHE/last-run.log", encoding="utf-8", errors="replace").read()
    checks["compile_attempted_then_onnxruntime"] = (
        "compiling a TensorRT engine for /models/colors" in log and "serving it with ONNX Runtime" in log
    )
if $KEEP == 0:
    checks["sigterm_exit_0"] = "$exit_code" == "0"
doc["checks"] = checks
doc["passed"] = all(checks.values()) and bool($client_ok)
print(json.dumps(doc, indent=2))
PY
)"
echo "$summary"
[[ -n "$SUMMARY" ]] && printf '%s\n' "$summary" > "$SUMMARY"
if grep -q '"passed": true' <<< "$summary"; then
    log "PASSED in ${total}s"
    exit 0
fi
die "see the summary above and $CACHE/last-run.log"
