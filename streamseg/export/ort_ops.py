"""ONNX Runtime kernel for ``streamseg::MultiLevelRoIAlign`` (the fused graph flavour).

Why a Python kernel through onnxruntime-extensions rather than a C++ custom-op library: the onnxruntime wheels on
PyPI ship no C/C++ headers, so a native library could not be built by ``make install`` in CI; onnxruntime-extensions
is a PyPI wheel that lets ORT call a Python function for a custom-domain node. The function does no per-element
Python work: it hands ORT's buffers to torchvision's C++ ``roi_align`` once per pyramid level (the same code as the
torch reference, :func:`streamseg.ops.roi_align.multi_level_roi_align_reference`), so its cost is the kernel's plus
~50 us of call overhead per node, one node per head per frame.

One limitation of that route: onnxruntime-extensions' Python ops read only scalar attributes, and
``featmap_strides`` is a float list. :func:`session_options` therefore reads the strides from the model's nodes
itself and binds them to the kernel; one process serves one stride set (every torchvision FPN uses
4, 8, 16, 32), and a model with another set while one is in use is an error, never a silent mismatch.
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import torch

from streamseg.errors import ConfigError
from streamseg.ops.roi_align import DOMAIN, OP_TYPE, multi_level_roi_align_reference

MAX_LEVELS = 5
_lock = threading.Lock()
_bound: list[tuple[float, ...]] = []
"""The featmap_strides bound to the (process-wide) kernel, once registered."""


def fused_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def node_strides(node: onnx.NodeProto) -> tuple[float, ...]:
    for attr in node.attribute:
        if attr.name == "featmap_strides":
            return tuple(float(s) for s in attr.floats)
    raise ConfigError(f"{node.name or OP_TYPE}: featmap_strides attribute missing")


def _register(num_levels: int, strides: tuple[float, ...]) -> None:
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    attrs = {
        "output_height": PyCustomOpDef.dt_int64,
        "output_width": PyCustomOpDef.dt_int64,
        "sampling_ratio": PyCustomOpDef.dt_int64,
        "pool_mode": PyCustomOpDef.dt_int64,
        "aligned": PyCustomOpDef.dt_int64,
        "finest_scale": PyCustomOpDef.dt_int64,
        "roi_scale_factor": PyCustomOpDef.dt_float,
    }

    @onnx_op(op_type=f"{DOMAIN}::{OP_TYPE}", inputs=[PyCustomOpDef.dt_float] * (num_levels + 1),
             outputs=[PyCustomOpDef.dt_float], attrs=attrs)
    def kernel(rois, *features, **kw):
        with torch.inference_mode():
            out = multi_level_roi_align_reference(
                torch.from_numpy(np.ascontiguousarray(rois)),
                [torch.from_numpy(np.ascontiguousarray(f)) for f in features],
                int(kw["output_height"]), int(kw["output_width"]), int(kw["sampling_ratio"]),
                int(kw["pool_mode"]), int(kw["aligned"]), strides, int(kw["finest_scale"]),
                float(kw["roi_scale_factor"]),
            )
        return out.numpy()

    _bound.append(strides)


def session_options(model: onnx.ModelProto, options=None):
    """``onnxruntime.SessionOptions`` able to run ``model``: with the kernel library registered if it has fused
    nodes (whose strides are bound first), unchanged otherwise."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    nodes = fused_nodes(model)
    if not nodes:
        return options
    try:
        from onnxruntime_extensions import get_library_path
    except ImportError as err:
        raise ConfigError(
            "this model has fused MultiLevelRoIAlign nodes: ONNX Runtime runs them with onnxruntime-extensions "
            "(pip install 'streamseg[onnx]'), or export --roi-align portable"
        ) from err
    with _lock:
        for node in nodes:
            strides = node_strides(node)
            levels = len(node.input) - 1
            if len(strides) != levels or levels > MAX_LEVELS:
                raise ConfigError(f"{node.name}: {levels} feature maps but featmap_strides {list(strides)}")
            if not _bound:
                _register(levels, strides)
            elif _bound[0] != strides:
                raise ConfigError(
                    f"{node.name}: featmap_strides {list(strides)} differ from {list(_bound[0])} already bound in this "
                    "process (the Python kernel reads no list attributes); run it in another process"
                )
    options.register_custom_ops_library(get_library_path())
    return options
