"""Export: ONNX with onnxruntime parity, TensorRT engines, Triton model repositories."""
