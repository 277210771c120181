"""Deployment exports: ONNX (``onnx_export``, ``check``, ``quantize``, ``onnx_cli``) and TensorRT engines (``trt_*``).
What running the results needs lives in :mod:`streamseg.models` (``onnx_graph``, ``trt_runtime``): inference never
imports this package."""
