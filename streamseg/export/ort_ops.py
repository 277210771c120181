"""How ONNX Runtime runs ``streamseg::MultiLevelRoIAlign`` (the fused graph flavour): by expansion.

Before a session is created, each fused node is replaced, in memory, by the op's definition in standard ONNX ops:
the graph that the portable flavour exports (:func:`streamseg.export.onnx_export.portable_multi_level_roi_align`,
traced once per distinct attribute set and spliced in with its names prefixed). The file on disk keeps its single
fused node per head, which is what the TensorRT plugin of the same name consumes.

Why not a kernel library (measured here, 1000 RoIs on an 800x1344 pyramid, 2 threads):

* a C++ custom-op library needs ONNX Runtime's C headers, which no PyPI wheel ships, so ``make install`` in CI could
  not build it;
* onnxruntime-extensions' Python custom ops (PyPI) do run the torch reference inside ORT, but return outputs to ORT
  through ``ndarray.tolist()``: 1.3-1.8 s per box-head node for a kernel that computes in 0.35 s;
* the expansion runs ORT's own RoiAlign kernel on each level's RoIs only: as fast as the torch reference kernel
  (side by side on a loaded machine: 1.0-1.5 s against 1.0-2.1 s) and bit-identical to it on that input.
"""

from __future__ import annotations

import io
import threading

import onnx
import torch

from streamseg.errors import ConfigError
from streamseg.ops.roi_align import DOMAIN, OP_TYPE

_lock = threading.Lock()
_traced: dict[tuple, onnx.GraphProto] = {}
"""Attribute set -> the traced standard-op graph of the op (pure function of the key: safe to share)."""


def fused_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def node_attributes(node: onnx.NodeProto) -> dict:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    required = ("output_height", "output_width", "sampling_ratio", "pool_mode", "aligned", "featmap_strides",
                "finest_scale")
    missing = [name for name in required if name not in attrs]
    if missing:
        raise ConfigError(f"{node.name or OP_TYPE}: attributes {missing} missing")
    if attrs["output_height"] != attrs["output_width"]:
        raise ConfigError(f"{node.name}: non-square output {attrs['output_height']}x{attrs['output_width']}")
    if attrs["pool_mode"] != 1:
        raise ConfigError(f"{node.name}: pool_mode {attrs['pool_mode']} (only 1 = avg is implemented)")
    if float(attrs.get("roi_scale_factor", 1.0)) != 1.0:
        raise ConfigError(f"{node.name}: roi_scale_factor {attrs['roi_scale_factor']} (only 1.0 is expanded)")
    if len(attrs["featmap_strides"]) != len(node.input) - 1:
        raise ConfigError(f"{node.name}: {len(node.input) - 1} feature maps but featmap_strides "
                          f"{list(attrs['featmap_strides'])}")
    return attrs


def _trace(key: tuple, opset: int) -> onnx.GraphProto:
    """The op for one attribute set as a standalone standard-op graph: inputs rois, f0..f{L-1}; output y."""
    from streamseg.export.onnx_export import RoIAlignSpec, portable_multi_level_roi_align

    size, sampling_ratio, aligned, strides, finest_scale = key
    spec = RoIAlignSpec(size, sampling_ratio, strides, aligned, finest_scale)

    class Op(torch.nn.Module):
        def forward(self, rois, *features):
            return portable_multi_level_roi_align(rois, features, spec)

    features = [torch.rand(1, 8, 64 // int(s), 96 // int(s)) for s in strides]  # the graph is size-agnostic
    rois = torch.tensor([[0.0, 1, 2, 30, 40], [0, 4, 4, 60, 60]])
    names = [f"f{i}" for i in range(len(strides))]
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            Op(), (rois, *features), buffer, dynamo=False, opset_version=opset, input_names=["rois", *names],
            output_names=["y"],
            dynamic_axes={"rois": {0: "r"}, "y": {0: "r"}, **{n: {0: "n", 2: f"h{n}", 3: f"w{n}"} for n in names}},
        )
    return onnx.load_from_string(buffer.getvalue()).graph


def expand_fused(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``streamseg::MultiLevelRoIAlign`` node replaced by standard ops (or ``model``
    itself when it has none)."""
    if not fused_nodes(model):
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    graph = expanded.graph
    new_nodes = []
    for index, node in enumerate(graph.node):
        if not (node.domain == DOMAIN and node.op_type == OP_TYPE):
            new_nodes.append(node)
            continue
        attrs = node_attributes(node)
        key = (int(attrs["output_height"]), int(attrs["sampling_ratio"]), int(attrs["aligned"]),
               tuple(float(s) for s in attrs["featmap_strides"]), int(attrs["finest_scale"]))
        with _lock:
            if key not in _traced:
                _traced[key] = _trace(key, opset)
        sub = _traced[key]
        prefix = f"mlra{index}/"
        rename = {"rois": node.input[0], "y": node.output[0],
                  **{f"f{i}": name for i, name in enumerate(node.input[1:])}}

        def mapped(name: str) -> str:
            return name if not name else rename.get(name, prefix + name)

        for init in sub.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = mapped(init.name)
            graph.initializer.append(copy)
        for sub_node in sub.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(sub_node)
            copy.name = prefix + (sub_node.name or sub_node.op_type)
            copy.input[:] = [mapped(n) for n in sub_node.input]
            copy.output[:] = [mapped(n) for n in sub_node.output]
            new_nodes.append(copy)
    del graph.node[:]
    graph.node.extend(new_nodes)
    del expanded.opset_import[:]
    expanded.opset_import.extend(o for o in model.opset_import if o.domain != DOMAIN)
    return expanded

