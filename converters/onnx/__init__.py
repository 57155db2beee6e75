"""ONNX in (work in progress)."""
