"""Typed prediction results, each convertible to plain JSON with ``to_dict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClassificationResult:
    """The prediction for one image of a classifier.

    Args:
        label: name of the best class.
        index: its output index.
        score: its probability (after the bundle's post-processing, softmax by default).
        top_k: the best ``k`` classes as ``(label, score)``, best first.
    """

    label: str
    index: int
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "index": self.index,
            "score": self.score,
            "top_k": [{"label": lab, "score": s} for lab, s in self.top_k],
        }


@dataclass(frozen=True)
class PredictionError:
    """Stands in for the result of an input that could not be predicted (``on_error="return"``).

    Args:
        source: a printable name of the input (path or ``<bytes>`` / ``<array>``...).
        error: what went wrong and how to fix it.
    """

    source: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "error": self.error}


def result_to_dict(result: Any) -> dict[str, Any]:
    """JSON form of any result type, detection results included (they live in another module)."""
    if hasattr(result, "to_dict"):
        return result.to_dict()
    import dataclasses

    if dataclasses.is_dataclass(result):
        out = {}
        for f in dataclasses.fields(result):
            value = getattr(result, f.name)
            out[f.name] = value.tolist() if hasattr(value, "tolist") else value
        return out
    raise TypeError(f"cannot convert {type(result).__name__} to a dict")
