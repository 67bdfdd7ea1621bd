"""Other formats and frameworks: checkpoints, ONNX, Keras weights, the PyTorch adapter.
Imports core only."""
