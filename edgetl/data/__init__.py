"""Datasets: discovery (torch-free), sample datasets, and training pipelines (torch, in submodules)."""

from edgetl.data.imagefolder import (
    IMAGE_EXTENSIONS,
    ClassificationData,
    Sample,
    load_classification_data,
)

__all__ = ["IMAGE_EXTENSIONS", "ClassificationData", "Sample", "load_classification_data"]
