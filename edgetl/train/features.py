"""Linear probing on cached features: run the frozen backbone once, then train only the head.

With a frozen backbone (BatchNorm in eval mode, no augmentation) every epoch would recompute the same
pooled features; computing them once turns each later epoch into a few matrix products, which is why
``linear-probe`` is orders of magnitude faster per epoch than fine-tuning on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from edgetl.data.imagefolder import Sample
from edgetl.data.torch_datasets import BadItem, ImageDataset, make_loader
from edgetl.data.transforms import SpecTransform
from edgetl.lazy import lazy_import
from edgetl.preprocess import PreprocessSpec

torch = lazy_import("torch", "train", purpose="training")


def pooled_features(model: Any, images: Any) -> Any:
    """The vector the classifier sees (after global pooling, before dropout and the head)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def extract_features(
    model: Any,
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    *,
    batch_size: int = 64,
    device: Any = "cpu",
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    channels_last: bool = False,
    amp: bool = False,
) -> tuple[Any, Any, list[BadItem]]:
    """Backbone features of ``samples`` with the deployment preprocessing (no augmentation).

    Args:
        model: a classifier; it is put in eval mode for the pass.
        samples: images to encode.
        spec: the preprocessing spec (the same one saved with the model).
        progress: called with the number of images done after each batch.

    Returns:
        ``(features float32 [N, D] on CPU, labels int64 [N], bad items)``.
    """

    dataset = ImageDataset(samples, SpecTransform(spec))
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers)
    feats, labels, bad = [], [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for images, targets, failed in loader:
            bad += failed
            if images is not None:
                images = images.to(device)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                    out = pooled_features(model, images)
                feats.append(out.float().cpu())
                labels.append(targets)
            if progress is not None:
                progress(len(failed) + (0 if images is None else len(images)))
    model.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), bad
    return torch.cat(feats), torch.cat(labels), bad
