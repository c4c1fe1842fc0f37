"""edgetl: fine-tune lightweight vision models, quantize, compile for Jetson-class devices, and prove
that the deployed model still matches the unquantized one.

Importing this package is cheap and side-effect free: heavy dependencies (torch, onnxruntime,
tensorrt) are imported by the modules that need them, when they need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
