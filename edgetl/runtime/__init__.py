"""The device runtime: bundle + backend + pre/post-processing. Never imports torch.

    >>> import edgetl.runtime
    >>> predictor = edgetl.runtime.load("my-bundle")          # auto: TensorRT -> ORT GPU -> ORT CPU
    >>> predictor.predict("cat.jpg").label
    >>> predictor.describe()["why"]
    >>> edgetl.runtime.check("my-bundle")["passed"]          # golden smoke test of every artifact
"""

from edgetl.runtime.golden import check
from edgetl.runtime.info import bundle_info
from edgetl.runtime.predictor import Predictor, load
from edgetl.runtime.results import ClassificationResult, PredictionError

__all__ = ["ClassificationResult", "PredictionError", "Predictor", "bundle_info", "check", "load"]
