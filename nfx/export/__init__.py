"""Export: ONNX (export + verification + metadata) and ONNX Runtime prediction."""
