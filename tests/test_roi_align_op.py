"""The multi-level RoIAlign op: level choice (torchvision's, epsilon boundary), the CPU reference against torchvision
and against a from-the-definition implementation, the registered torch op, and both ONNX flavours in ONNX Runtime."""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from streamseg.export.onnx_export import RoIAlignSpec, portable_multi_level_roi_align
from streamseg.models.onnx_graph import expand_fused
from streamseg.ops.roi_align import level_of, multi_level_roi_align_reference

STRIDES = (4.0, 8.0, 16.0, 32.0)
IMAGE = (128, 192)  # (H, W) of the padded input the pyramid comes from


def pyramid(batch=2, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, channels, IMAGE[0] // int(s), IMAGE[1] // int(s), generator=g) for s in STRIDES]


def random_rois(count, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * torch.tensor([IMAGE[1] - 10, IMAGE[0] - 10])
    wh = torch.rand(count, 2, generator=g) ** 2 * torch.tensor([IMAGE[1], IMAGE[0]]) * 1.5 + 0.5  # 0.5 px .. past the edge
    index = torch.randint(0, batch, (count, 1), generator=g).float()
    return torch.cat([index, xy, xy + wh], dim=1)


def boundary_boxes() -> torch.Tensor:
    """Squares at the origin whose side (= sqrt(area)) sits at, just below and just above every level boundary
    (112, 224, 448 px), including sides between where torchvision's formula (epsilon outside the log) and
    mmdeploy's (inside) put the boundary: ~8e-5 px wide at 112 in float32."""
    sides = [edge * (1 + k * 1e-8) for edge in (112.0, 224.0, 448.0)
             for k in (-100000, -1000, -300, -80, -70, -60, -50, -40, -20, 0, 20, 100000)]
    side = torch.tensor(sides, dtype=torch.float32)
    zero = torch.zeros_like(side)
    return torch.stack([zero, zero, zero, side, side], dim=1)


def test_level_choice_equals_torchvision_including_the_epsilon_boundary():
    rois = torch.cat([boundary_boxes(), random_rois(500)])
    mapper = LevelMapper(k_min=2, k_max=5)
    expected = mapper([rois[:, 1:]])
    assert torch.equal(level_of(rois, 4), expected)
    # mmdeploy's formula (epsilon inside the log) disagrees just below a boundary: the test can tell them apart
    boxes = boundary_boxes()[:, 1:]
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    mmdeploy = torch.clamp(torch.floor(torch.log2(scale / 56 + 1e-6)), 0, 3).long()
    assert not torch.equal(mmdeploy, level_of(boundary_boxes(), 4))
    # every level is reached
    assert set(level_of(rois, 4).tolist()) == {0, 1, 2, 3}


def test_reference_equals_torchvision_multiscale_roi_align_exactly():
    features = pyramid()
    rois = torch.cat([random_rois(300), boundary_boxes()])
    for size, sampling in ((7, 2), (14, 2), (7, 0)):
        pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], size, sampling)
        per_image = [rois[rois[:, 0] == b, 1:] for b in range(2)]
        expected = pooler({str(i): f for i, f in enumerate(features)}, per_image, [IMAGE, IMAGE])
        ours = multi_level_roi_align_reference(torch.cat([rois[rois[:, 0] == b] for b in range(2)]), features,
                                               size, size, sampling)
        assert torch.equal(ours, expected), (size, sampling)


def bilinear(feature: np.ndarray, y: float, x: float) -> np.ndarray:
    """One RoIAlign sample as the RoIAlign papers/kernels define it: zero outside [-1, H] x [-1, W], clamped inside."""
    _, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1]
            + ly * (1 - lx) * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def roi_align_by_definition(rois, features, out, sampling_ratio, aligned):
    """Slow, independent implementation of the op (float64 numpy) straight from the contract."""
    levels = level_of(rois, len(features)).numpy()
    result = np.zeros((len(rois), features[0].shape[1], out, out))
    for r, (roi, level) in enumerate(zip(rois.numpy().astype(np.float64), levels)):
        feature = features[level][int(roi[0])].numpy().astype(np.float64)
        scale = 1.0 / STRIDES[level]
        offset = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (roi[1:] * scale) - offset
        w, h = x2 - x1, y2 - y1
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bin_h, bin_w = h / out, w / out
        gy = sampling_ratio if sampling_ratio > 0 else math.ceil(h / out)
        gx = sampling_ratio if sampling_ratio > 0 else math.ceil(w / out)
        count = max(gy * gx, 1)
        for py in range(out):
            for px in range(out):
                acc = np.zeros(feature.shape[0])
                for iy in range(gy):
                    for ix in range(gx):
                        y = y1 + py * bin_h + (iy + 0.5) * bin_h / gy
                        x = x1 + px * bin_w + (ix + 0.5) * bin_w / gx
                        acc += bilinear(feature, y, x)
                result[r, :, py, px] = acc / count
    return result


@pytest.mark.parametrize("aligned", [0, 1])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_reference_matches_the_definition(aligned, sampling_ratio):
    features = pyramid(channels=2)
    rois = torch.cat([random_rois(40, seed=5), boundary_boxes()[::6]])
    ours = multi_level_roi_align_reference(rois, features, 5, 5, sampling_ratio, aligned=aligned)
    np.testing.assert_allclose(ours.numpy(), roi_align_by_definition(rois, features, 5, sampling_ratio, aligned),
                               atol=1e-5)


def test_registered_torch_op_and_empty_rois():
    features = pyramid()
    rois = random_rois(20)
    op = torch.ops.streamseg.multi_level_roi_align
    got = op(rois, features, 7, 7, 2, 1, 0, list(STRIDES), 56, 1.0)
    assert torch.equal(got, multi_level_roi_align_reference(rois, features, 7, 7, 2))
    empty = op(torch.zeros((0, 5)), features, 7, 7, 2, 1, 0, list(STRIDES), 56, 1.0)
    assert empty.shape == (0, 3, 7, 7) and empty.dtype == torch.float32
    with torch._subclasses.fake_tensor.FakeTensorMode():  # the fake (shape) kernel that tracing uses
        fake = op(torch.empty((9, 5)), [torch.empty(1, 4, 16, 16)] * 4, 14, 14, 2, 1, 0, list(STRIDES), 56, 1.0)
        assert tuple(fake.shape) == (9, 4, 14, 14)


def test_roi_scale_factor_and_bad_attributes():
    features = pyramid()
    rois = random_rois(10)
    centre = (rois[:, 1:3] + rois[:, 3:5]) / 2
    half = (rois[:, 3:5] - rois[:, 1:3]) / 2 * 1.5
    grown = torch.cat([rois[:, :1], centre - half, centre + half], 1)
    assert torch.allclose(multi_level_roi_align_reference(rois, features, 7, 7, 2, roi_scale_factor=1.5),
                          multi_level_roi_align_reference(grown, features, 7, 7, 2))
    with pytest.raises(ValueError, match="pool_mode"):
        multi_level_roi_align_reference(rois, features, 7, 7, 2, pool_mode=0)
    with pytest.raises(ValueError, match="featmap_strides"):
        multi_level_roi_align_reference(rois, features, 7, 7, 2, featmap_strides=(4.0, 8.0))


def fused_node_model(size, sampling_ratio, aligned) -> onnx.ModelProto:
    """One streamseg::MultiLevelRoIAlign node with the contract's inputs and attributes."""
    names = ["rois"] + [f"p{i}" for i in range(4)]
    node = helper.make_node(
        "MultiLevelRoIAlign", names, ["out"], domain="streamseg", output_height=size, output_width=size,
        sampling_ratio=sampling_ratio, pool_mode=1, aligned=aligned, featmap_strides=list(STRIDES), finest_scale=56,
        roi_scale_factor=1.0)
    graph = helper.make_graph(
        [node], "fused", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("streamseg", 1)],
                             ir_version=9)


def run_ort(model: onnx.ModelProto, rois, features) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = dict(zip([i.name for i in session.get_inputs()], [rois.numpy(), *[f.numpy() for f in features]]))
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("aligned", [0, 1])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_fused_node_in_onnx_runtime_matches_the_reference(aligned, sampling_ratio):
    features = pyramid()
    rois = torch.cat([random_rois(200), boundary_boxes()])
    expanded = expand_fused(fused_node_model(7, sampling_ratio, aligned))
    assert not any(n.domain == "streamseg" for n in expanded.graph.node)
    got = run_ort(expanded, rois, features)
    expected = multi_level_roi_align_reference(rois, features, 7, 7, sampling_ratio, aligned=aligned)
    np.testing.assert_allclose(got, expected.numpy(), atol=2e-6)
    empty = run_ort(expanded, torch.zeros((0, 5)), features)
    assert empty.shape == (0, 3, 7, 7)


def test_portable_flavour_in_onnx_runtime_matches_the_reference():
    spec = RoIAlignSpec(14, 2)

    class Op(torch.nn.Module):
        def forward(self, rois, *features):
            return portable_multi_level_roi_align(rois, features, spec)

    features = pyramid()
    rois = torch.cat([random_rois(100), boundary_boxes()])
    buffer = io.BytesIO()
    names = [f"p{i}" for i in range(4)]
    torch.onnx.export(Op(), (rois[:5], *features), buffer, dynamo=False, opset_version=17,
                      input_names=["rois", *names], output_names=["out"],
                      dynamic_axes={"rois": {0: "r"}, "out": {0: "r"}, **{n: {2: "h" + n, 3: "w" + n} for n in names}})
    model = onnx.load_from_string(buffer.getvalue())
    assert {n.op_type for n in model.graph.node} >= {"RoiAlign", "NonZero"}
    assert sum(n.op_type == "RoiAlign" for n in model.graph.node) == 4
    got = run_ort(model, rois, features)
    np.testing.assert_allclose(got, multi_level_roi_align_reference(rois, features, 14, 14, 2).numpy(), atol=2e-6)
    assert run_ort(model, torch.zeros((0, 5)), features).shape == (0, 3, 14, 14)
