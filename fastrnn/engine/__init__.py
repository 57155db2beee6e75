"""The engine: what every front end (Model, streams, CUDA, ONNX nodes) runs on.

It imports nothing from the layers above it (fastrnn.model, fastrnn.stream, converters).
"""
