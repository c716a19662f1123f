"""Export training runs to ONNX model packs (needs the ``train`` extra: torch, MONAI, onnx)."""
