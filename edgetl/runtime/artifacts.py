"""Which artifact of a bundle to run: the one resolver every stage asks.

Precision names, what ``best`` means, which engines fit this machine, whether a validation is needed, and
the order to fall back in are decided here and nowhere else. The runtime (`edgetl.runtime.select`), the
TensorRT backend's ONNX Runtime fallback, the golden check, ``edgetl info``, ``edgetl validate`` and
``edgetl compile`` all call it, so "int8" or "best" means the same thing in each.

Precision names: ``fp32``, ``fp16``, ``int8``. ``mixed`` (an INT8 graph with some layers kept in float by the
accuracy budget) belongs to the INT8 family: asking for ``int8`` finds it, and validating either counts for
both. An engine's precision is the one its compatibility key records.

``best`` is the first precision of the target's `BEST_ORDER` (fastest first) that has an artifact which
passes the target's gate:

========================  =====================  ==========================================================
target                    order                  gate
========================  =====================  ==========================================================
``tensorrt`` (engines)    int8, fp16, fp32       the engine fits this GPU and TensorRT (`edgetl.runtime.compat`)
                                                 and did not fail its golden check when it was compiled
``gpu`` (ONNX Runtime)    fp16, int8, fp32       INT8 only once ``edgetl validate`` passed it
``cpu`` (ONNX Runtime)    int8, fp32             INT8 only once validated, and only in the CPU format (or
                                                 where validation measured it faster); FP16 graphs are slow
                                                 on CPUs and never chosen there
========================  =====================  ==========================================================

``edgetl compile --precision best`` asks for the same name at build time: an engine with every precision
enabled (TensorRT picks per layer), recorded under the precision it ends up as, so the table above then
ranks it like any other engine.

When several artifacts qualify for a precision, the first in manifest order wins (for engines: an exact
GPU/TensorRT match before a compatible one). The fallback order of ``auto`` is `edgetl.runtime.select`'s:
a TensorRT engine, else ONNX Runtime on GPU providers, else ONNX Runtime on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgetl.bundle.manifest import Artifact, Bundle
from edgetl.bundle.validation import current, passed_artifacts
from edgetl.errors import BadInputError, BundleError
from edgetl.runtime import compat

log = logging.getLogger("edgetl.runtime")

#: Precision names a user may ask for; ``best`` lets the resolver choose.
PRECISIONS = ("fp32", "fp16", "int8")
PRECISION_CHOICES = ("best", *PRECISIONS)
#: Precisions that count as INT8.
INT8_FAMILY = ("int8", "mixed")


@dataclass(frozen=True)
class BestRule:
    """What ``best`` means on one target.

    Args:
        order: precisions, fastest first.
        int8_needs_validation: an INT8 ONNX graph is chosen only once ``edgetl validate`` passed it.
        int8_needs_cpu_format: an INT8 ONNX graph is chosen only in the CPU format (or where validation
            measured it faster than FP32 here).
    """

    order: tuple[str, ...]
    int8_needs_validation: bool = False
    int8_needs_cpu_format: bool = False


#: The one table of what ``best`` means; the module docstring explains each row.
BEST_ORDER: dict[str, BestRule] = {
    "tensorrt": BestRule(("int8", "fp16", "fp32")),
    "gpu": BestRule(("fp16", "int8", "fp32"), int8_needs_validation=True),
    "cpu": BestRule(("int8", "fp32"), int8_needs_validation=True, int8_needs_cpu_format=True),
}

_WHY = {"fp16": "FP16 is the fastest safe precision on a GPU", "int8": "the INT8 model passed validation",
        "fp32": "FP32 reference"}


def family(precision: str) -> str:
    """``int8`` for every INT8-family precision, else the precision itself."""
    return "int8" if precision in INT8_FAMILY else precision


def check_precision(precision: str, *, allowed: tuple[str, ...] = PRECISION_CHOICES) -> str:
    """``precision`` if it is one of ``allowed`` (``mixed`` is read as ``int8``), else `BadInputError`."""
    name = family(precision) if precision == "mixed" and "int8" in allowed else precision
    if name not in allowed:
        raise BadInputError(f"unknown precision {precision!r}; expected one of {', '.join(allowed)}")
    return name


def artifact_precision(artifact: Artifact) -> str:
    """The precision an artifact runs at: an engine's compatibility key, else the manifest's entry."""
    if artifact.kind == "engine":
        return str(artifact.compat.get("precision") or artifact.precision)
    return artifact.precision


def matching(bundle: Bundle, kind: str | tuple[str, ...], precision: str | None = None) -> list[Artifact]:
    """Artifacts of ``kind`` whose precision is in ``precision``'s family, in manifest order.

    Args:
        bundle: an opened bundle.
        kind: ``onnx``, ``engine``, ``checkpoint``, or a tuple of them.
        precision: a precision name; ``None``, ``all`` or ``best``: every artifact of the kind.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    found = [a for a in bundle.artifacts if a.kind in kinds]
    if precision in (None, "all", "best"):
        return found
    wanted = family(precision)
    return [a for a in found if family(artifact_precision(a)) == wanted or family(a.precision) == wanted]


def validated_precisions(bundle: Bundle) -> set[str]:
    """Precisions of the artifacts whose current validation record passed (`edgetl.bundle.validation`)."""
    passed = passed_artifacts(bundle)
    found = {a.precision for a in bundle.artifacts if a.path in passed}
    if found & set(INT8_FAMILY):
        found |= set(INT8_FAMILY)
    return found


def int8_fast_on_cpu(bundle: Bundle, artifact: Artifact) -> bool:
    """Whether ONNX Runtime's CPU kernels run this INT8 graph faster than FP32: the CPU format (uint8
    activations, fused into QLinearConv) does; the TensorRT format (symmetric int8 activations) keeps separate
    Q/DQ nodes there and runs at about 0.7x FP32, unless a validation on this bundle measured otherwise."""
    if (artifact.info or {}).get("activation_type", "int8") == "uint8":
        return True
    speedup = (current(bundle).get(artifact.path) or {}).get("speedup_p50")
    return isinstance(speedup, (int, float)) and speedup > 1.0


def select_onnx(bundle: Bundle, precision: str = "best", *, on_gpu: bool = False) -> tuple[Artifact, str]:
    """The ONNX graph to run at ``precision`` on ONNX Runtime's GPU providers or its CPU, and why.

    Raises:
        BundleError: the bundle has no ONNX graph, or none of the requested precision (exit 2).
    """
    onnx = bundle.find(kind="onnx")
    if not onnx:
        raise BundleError(f"{bundle.root}: the bundle has no ONNX model", hint="run `edgetl export` first")
    if precision != "best":
        found = matching(bundle, "onnx", check_precision(precision, allowed=PRECISIONS))
        if not found:
            have = sorted({a.precision for a in onnx})
            raise BundleError(
                f"{bundle.root}: no {precision} ONNX model in the bundle (it has: {', '.join(have)})",
                hint=f"run `edgetl quantize {bundle.root} --precision {precision}` or pick another --precision",
            )
        return found[0], f"{precision} requested"
    rule = BEST_ORDER["gpu" if on_gpu else "cpu"]
    validated = validated_precisions(bundle)
    skipped = []
    for prec in rule.order:
        found = matching(bundle, "onnx", prec)
        if not found:
            continue
        if prec == "int8" and rule.int8_needs_validation and "int8" not in validated:
            skipped.append("the INT8 model has not passed `edgetl validate`")
            continue
        if prec == "int8" and rule.int8_needs_cpu_format and not int8_fast_on_cpu(bundle, found[0]):
            skipped.append("the INT8 model is in the TensorRT format (symmetric activations), which ONNX Runtime "
                           "runs slower than FP32 on a CPU; `edgetl quantize --target cpu` makes the CPU format")
            continue
        why = _WHY[prec] + (f" ({'; '.join(skipped)})" if skipped else "")
        return found[0], why
    return onnx[0], "first ONNX model in the bundle"


def fallback_onnx(bundle: Bundle, precision: str = "best") -> Artifact:
    """The ONNX graph that stands in for an engine that cannot run here: the requested precision's graph
    when the bundle has one, else the FP32 reference (TensorRT's execution provider builds from it)."""
    if precision not in ("best", "fp32"):
        found = matching(bundle, "onnx", precision)
        if found:
            return found[0]
    return bundle.reference_onnx()


def select_engine(bundle: Bundle, precision: str = "best", *, device: int = 0) -> tuple[Artifact | None, str]:
    """Pick the bundle's engine that runs on this GPU and TensorRT, or say why none does.

    Args:
        bundle: an opened bundle.
        precision: ``best`` (`BEST_ORDER["tensorrt"]`) or ``fp32|fp16|int8``.
        device: CUDA device index whose compute capability is compared.

    Returns:
        ``(artifact, reason)``; ``artifact`` is None when nothing matches, and ``reason`` then lists
        every engine with what differs.
    """
    engines = bundle.find(kind="engine")
    if not engines:
        return None, "the bundle has no TensorRT engines (build them on the device with `edgetl compile`)"
    if precision == "best":
        rank = {p: i for i, p in enumerate(BEST_ORDER["tensorrt"].order)}
        wanted = sorted(engines, key=lambda a: rank.get(family(artifact_precision(a)), len(rank)))
    else:
        wanted = matching(bundle, "engine", check_precision(precision, allowed=PRECISIONS))
        if not wanted:
            have = ", ".join(sorted({artifact_precision(a) for a in engines}))
            return None, f"the bundle has no {precision} TensorRT engine (it has: {have})"
    trt_version = compat.tensorrt_version()
    gpu = compat.probe_device(device)
    rejected, fits = [], []
    for artifact in wanted:
        golden = artifact.info.get("golden") or {}
        if golden.get("passed") is False:
            rejected.append(f"{artifact.path}: failed its golden-sample check at compile time")
            continue
        verdict = compat.check_compat(artifact.compat, gpu, trt_version)
        if verdict.ok:
            fits.append((artifact, verdict))
        else:
            rejected.append(f"{artifact.path}: {verdict.reason}")
            if compat.needs_host_code(artifact.compat) and not compat.host_code_allowed():
                log.warning("skipping TensorRT engine %s: it runs host code, which %s=0 forbids here; another "
                            "engine or ONNX Runtime is used instead", artifact.path, compat.HOST_CODE_ENV)
    if fits:
        # Keep the precision preference; within it, an exact GPU/TensorRT match wins.
        best_rank = family(artifact_precision(fits[0][0]))
        same = [f for f in fits if family(artifact_precision(f[0])) == best_rank]
        artifact, verdict = next((f for f in same if f[1].exact), same[0])
        return artifact, verdict.reason
    return None, "no TensorRT engine runs here: " + "; ".join(rejected)


def artifact_at(bundle: Bundle, path: str | Path) -> Artifact | None:
    """The bundle's artifact stored at ``path`` (a file path, or the artifact's path or file name)."""
    for art in bundle.artifacts:
        if art.path == str(path) or Path(art.path).name == str(path):
            return art
    target = Path(path)
    if target.exists():
        return next((a for a in bundle.artifacts if bundle.path_of(a).resolve() == target.resolve()), None)
    return None


def select_named(bundle: Bundle, which: str) -> tuple[Path, str]:
    """A precision name (``fp32``, ``fp16``, ``int8``, ``mixed``) or a model path -> ``(file, precision label)``.

    The ONNX graph of a precision is the one `matching` finds first; a path may be any model file, inside
    the bundle or not (its label is then ``onnx``, ``engine`` or ``checkpoint`` from its suffix).

    Raises:
        BadInputError: no graph of that precision, or no such file (exit 2).
    """
    if which in (*PRECISIONS, "mixed"):
        if which == "fp32":
            art = bundle.reference_onnx()
            return bundle.path_of(art), "fp32"
        found = matching(bundle, "onnx", which)
        if not found:
            raise BadInputError(f"{bundle.root}: no {which} ONNX model in the bundle",
                                hint=f"run `edgetl quantize {bundle.root} --precision {family(which)}`")
        return bundle.path_of(found[0]), found[0].precision
    path = Path(which)
    if not path.is_absolute() and not path.exists():
        path = bundle.root / which
    if not path.is_file():
        raise BadInputError(f"model not found: {which}", hint="pass fp32, fp16, int8, or a .onnx/.engine/.pt path")
    art = artifact_at(bundle, path)
    if art is not None:
        return path, art.precision
    return path, {".engine": "engine", ".pt": "checkpoint"}.get(path.suffix, "onnx")
