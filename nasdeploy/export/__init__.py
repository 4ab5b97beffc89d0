"""Export: ONNX with onnxruntime parity, ExecuTorch programs, INT8, TensorRT engines, Triton model repositories.

The entry points are nasdeploy.export.api (export_model, quantize_model, export_target) and, per search
space, the adapter its table entry names; nasdeploy.export.formats lists the formats without loading torch.
"""
