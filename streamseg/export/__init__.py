"""Deployment exports: ONNX (``onnx_export``, ``check``, ``onnx_cli``; ORT expansion of the fused op in ``ort_ops``)
and TensorRT engines (``trt_*``)."""
