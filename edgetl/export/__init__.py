"""Export a checkpoint to an ONNX bundle, with a parity check and golden samples.

``export_checkpoint`` is the first stage that creates a bundle (docs/architecture.md): ``manifest.json``,
``model.onnx`` (the FP32 reference every later stage compares against) and ``golden/``.
"""

from edgetl.export.exporter import ExportResult, export_checkpoint
from edgetl.export.parity import ParityError

__all__ = ["ExportResult", "ParityError", "export_checkpoint"]
