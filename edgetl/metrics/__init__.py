"""Scores shared by every stage that measures a model: classification (top-k, agreement, latency) and
detection (COCO mAP, box agreement). Plain numpy (pycocotools for mAP, imported lazily); no stage logic,
so training, quantization, compile and validation can all use it without importing each other."""
