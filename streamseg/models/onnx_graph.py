"""What running an exported ONNX file needs, without the exporter: reading the file and its metadata, and the
expansion of the fused ``streamseg::MultiLevelRoIAlign`` node into standard ops for ONNX Runtime.

Why the expansion is graph surgery at load time rather than a second graph stored at export. The fused file exists
for the TensorRT plugin; storing the portable subgraph next to it would put two definitions of the op in one file
(and a second copy that parsers such as TensorRT's would also see). Building the standard-op graph directly with
``onnx.helper`` costs milliseconds, needs neither torch nor ``torch.onnx.export``, and emits the same operations,
in the same order and float32 arithmetic, as the portable flavour's export (level choice as torchvision's
``LevelMapper``; per level ``Equal -> NonZero -> Gather -> RoiAlign``; one inverse permutation), so both flavours
give the same numbers in ONNX Runtime. Why not a kernel library: a C++ custom op needs ONNX Runtime's C headers,
which no PyPI wheel ships; onnxruntime-extensions' Python kernels hand outputs back through ``tolist()``
(1.3-1.8 s per box-head node for a kernel that computes in 0.35 s, measured here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from streamseg.errors import ConfigError, WeightsError
from streamseg.models.weights import file_kind
from streamseg.ops.roi_align import DOMAIN, LEVEL_EPS, OP_TYPE, POOL_AVG

METADATA_KEY = "streamseg"
FORMAT = "streamseg.onnx/1"


def load_onnx(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """``onnx.load`` whose errors are one line naming the file: missing, or not an ONNX model (a PyTorch
    checkpoint, a text file, a truncated export), instead of protobuf's traceback."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except DecodeError as err:
        kind = file_kind(path)
        checkpoint = "a PyTorch checkpoint? export it with the 'export onnx' command, or run it with --backend auto"
        hint = {"zip": checkpoint, "pickle": checkpoint, "text file": "text file?",
                "onnx": "truncated or damaged"}.get(kind, kind)
        raise WeightsError(f"{path}: not an ONNX model ({hint})") from err


def read_metadata(model: onnx.ModelProto, origin: str = "model") -> dict:
    """The runner's settings that the export stored in the file (key ``streamseg``, JSON)."""
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ConfigError(f"{origin}: not exported by streamseg (no '{METADATA_KEY}' metadata); make one with the "
                          "'export onnx' command")
    meta = json.loads(props[METADATA_KEY])
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{origin}: metadata format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def fused_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def node_attributes(node: onnx.NodeProto) -> dict:
    """The fused node's attributes, checked against what the expansion implements."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    required = ("output_height", "output_width", "sampling_ratio", "pool_mode", "aligned", "featmap_strides",
                "finest_scale")
    missing = [name for name in required if name not in attrs]
    if missing:
        raise ConfigError(f"{node.name or OP_TYPE}: attributes {missing} missing")
    if attrs["output_height"] != attrs["output_width"]:
        raise ConfigError(f"{node.name}: non-square output {attrs['output_height']}x{attrs['output_width']}")
    if attrs["pool_mode"] != POOL_AVG:
        raise ConfigError(f"{node.name}: pool_mode {attrs['pool_mode']} (only 1 = avg is implemented)")
    if float(attrs.get("roi_scale_factor", 1.0)) != 1.0:
        raise ConfigError(f"{node.name}: roi_scale_factor {attrs['roi_scale_factor']} (only 1.0 is expanded)")
    if len(attrs["featmap_strides"]) != len(node.input) - 1:
        raise ConfigError(f"{node.name}: {len(node.input) - 1} feature maps but featmap_strides "
                          f"{list(attrs['featmap_strides'])}")
    return attrs


class _Builder:
    """Appends nodes and constants whose names all start with ``prefix``."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}{what}_{self.count}"

    def const(self, value, dtype) -> str:
        name = self.name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs) -> str:
        out = output or self.name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.name(op_type + "_node"), **attrs))
        return out


def _expansion(node: onnx.NodeProto, prefix: str) -> _Builder:
    """Standard ops computing ``node`` (module docstring): rois ``[R, 5]``, L feature maps -> ``[R, C, S, S]``."""
    attrs = node_attributes(node)
    rois, features, output = node.input[0], list(node.input[1:]), node.output[0]
    strides = [float(s) for s in attrs["featmap_strides"]]
    size, finest_scale = int(attrs["output_height"]), int(attrs["finest_scale"])
    k_min = math.log2(strides[0])
    b = _Builder(prefix)
    i64, f32 = np.int64, np.float32

    def column(index: int) -> str:
        return b.op("Gather", rois, b.const(index, i64), axis=1)  # [R]

    # level choice, in torchvision's float32 operation order: floor(k0 + log2(sqrt(area) / s0) + eps), clamped
    area = b.op("Mul", b.op("Sub", column(3), column(1)), b.op("Sub", column(4), column(2)))
    ratio = b.op("Div", b.op("Sqrt", area), b.const(4.0 * finest_scale, f32))
    log2 = b.op("Div", b.op("Log", ratio), b.const(math.log(2.0), f32))
    target = b.op("Floor", b.op("Add", b.op("Add", log2, b.const(k_min + 2, f32)), b.const(LEVEL_EPS, f32)))
    target = b.op("Clip", target, b.const(k_min, f32), b.const(k_min + len(features) - 1, f32))
    levels = b.op("Sub", b.op("Cast", target, to=TensorProto.INT64), b.const(int(k_min), i64))

    mode = "half_pixel" if attrs["aligned"] else "output_half_pixel"
    pooled, order = [], []
    for level, (feature, stride) in enumerate(zip(features, strides)):
        index = b.op("Squeeze", b.op("NonZero", b.op("Equal", levels, b.const(level, i64))), b.const([0], i64))
        chosen = b.op("Gather", rois, index, axis=0)  # [n, 5]
        batch = b.op("Cast", b.op("Gather", chosen, b.const(0, i64), axis=1), to=TensorProto.INT64)
        boxes = b.op("Gather", chosen, b.const([1, 2, 3, 4], i64), axis=1)
        pooled.append(b.op("RoiAlign", feature, boxes, batch, mode="avg", output_height=size, output_width=size,
                           sampling_ratio=int(attrs["sampling_ratio"]), spatial_scale=1.0 / stride,
                           coordinate_transformation_mode=mode))
        order.append(index)
    # RoIs were pooled level by level: put them back in their input order (inverse of the concatenated indices)
    order = b.op("Concat", *order, axis=0)
    count = b.op("Gather", b.op("Shape", order), b.const(0, i64), axis=0)
    positions = b.op("Range", b.const(0, i64), count, b.const(1, i64))
    inverse = b.op("ScatterElements", b.op("ConstantOfShape", b.op("Shape", order),
                                           value=numpy_helper.from_array(np.zeros(1, i64))), order, positions, axis=0)
    b.op("Gather", b.op("Concat", *pooled, axis=0), inverse, axis=0, output=output)
    return b


def expand_fused(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``streamseg::MultiLevelRoIAlign`` node replaced by standard ops (or ``model``
    itself when it has none). Needs opset >= 16 (RoiAlign's coordinate_transformation_mode), as every export has."""
    if not fused_nodes(model):
        return model
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    graph = expanded.graph
    nodes = []
    for index, node in enumerate(graph.node):
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            built = _expansion(node, f"mlra{index}/")
            nodes.extend(built.nodes)
            graph.initializer.extend(built.initializers)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    del expanded.opset_import[:]
    expanded.opset_import.extend(o for o in model.opset_import if o.domain != DOMAIN)
    return expanded
