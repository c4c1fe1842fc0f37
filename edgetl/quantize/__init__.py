"""Quantize a bundle's FP32 graph: FP16, or INT8 QDQ with calibration and an accuracy-budget mode."""

from edgetl.quantize.api import QuantizeResult, quantize_bundle
from edgetl.quantize.calibration import METHODS

__all__ = ["METHODS", "QuantizeResult", "quantize_bundle"]
