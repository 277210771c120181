"""ONNX export and the ONNX Runtime backend: what the file holds, dynamic shapes, parity with PyTorch on real
evalkit frames (demo model; seeded random-init R50-FPN v1 and v2), user checkpoints, `run --backend onnx` on every
evalkit clip, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from streamseg.config import build_config
from streamseg.export.check import Limits, check_onnx, read_frames
from streamseg.export.onnx_export import export_onnx
from streamseg.models import ModelOptions
from streamseg.models.onnx_backend import OnnxMaskRCNN
from streamseg.models.onnx_graph import FORMAT, read_metadata
from streamseg.models.parity import match_detections
from streamseg.models.weights import save_checkpoint
from streamseg.pipeline import Runner
from streamseg.sinks import read_detections_jsonl

from evalkit_clips import CLIP_PATHS as CLIPS

STREAMSEG = [sys.executable, "-m", "streamseg.cli"]


@pytest.fixture(scope="module")
def demo_exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {flavour: export_onnx(folder / f"demo_{flavour}.onnx", ModelOptions(), flavour=flavour)
            for flavour in ("portable", "fused")}


@pytest.fixture(scope="module")
def frames(videos):
    """Real frames of three sizes (640x360, 960x540, 480x360)."""
    return read_frames([str(videos / c) for c in ("traffic/car_traffic_small.mp4", "driving/solidWhiteRight.mp4",
                                                  "surveillance/vtest_pets09_480x360.mp4")])


def test_export_holds_one_checked_graph_with_metadata(demo_exports):
    for flavour, path in demo_exports.items():
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        meta = read_metadata(model)
        assert meta["format"] == FORMAT and meta["flavour"] == flavour and meta["streamseg_version"]
        assert meta["class_names"][:2] == ["__background__", "person"]
        assert meta["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
        assert meta["size"] == {"min_size": 360, "max_size": 640, "size_divisible": 32}
        assert meta["paste_shift"] == 0.5 and meta["paste_mode"] == "subpixel"
        ops = [n.op_type for n in model.graph.node]
        assert "NonMaxSuppression" not in ops and "Loop" not in ops  # NMS and paste live on the host
        fused = [n for n in model.graph.node if n.domain == "streamseg"]
        if flavour == "portable":
            assert not fused and ops.count("RoiAlign") == 8  # 4 levels x 2 heads
        else:
            assert [n.op_type for n in fused] == ["MultiLevelRoIAlign"] * 2 and "RoiAlign" not in ops
            attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in fused]
            assert [a["output_height"] for a in attrs] == [7, 14]
            for a in attrs:
                assert a["sampling_ratio"] == 2 and a["pool_mode"] == 1 and a["aligned"] == 0
                assert list(a["featmap_strides"]) == [4.0, 8.0, 16.0, 32.0] and a["finest_scale"] == 56
                assert a["roi_scale_factor"] == 1.0
            assert all(len(n.input) == 5 for n in fused)  # rois, then P2..P5
        assert {i.name for i in model.graph.input} == {"images", "box_rois", "mask_rois"}
        dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", "", "height", "width"]


def test_dynamic_size_and_batch(demo_exports, frames):
    backend = OnnxMaskRCNN(ModelOptions(weights=str(demo_exports["portable"]), score_threshold=0.2))
    singles = [backend.predict([f])[0] for f in frames[:2]]  # two input sizes, one session
    batched = backend.predict(frames[:2])  # batch of two different sizes (padded together)
    for one, both in zip(singles, batched):
        m = match_detections(one, both)
        assert m.unmatched == 0 and m.box_deviation.max(initial=0) < 0.01
    assert backend.predict([]) == []


@pytest.mark.parametrize("flavour", ["portable", "fused"])
def test_demo_model_parity_on_evalkit_frames(demo_exports, frames, flavour):
    report = check_onnx(demo_exports[flavour], frames)
    assert report.passed, report.table()
    assert report.reference_count >= 60  # score threshold 0: the demo model's cap (30) per frame
    assert report.max_box_deviation <= 1.0 and report.mask_iou_percentiles()["min"] >= 0.99


def test_fused_file_runs_as_the_portable_one_in_onnx_runtime(demo_exports, frames):
    """ONNX Runtime runs a fused node as the portable flavour's operations, built as ONNX nodes at load (no torch
    export): the two files give the same detections."""
    runs = [OnnxMaskRCNN(ModelOptions(weights=str(demo_exports[f]), score_threshold=0.0)).predict(frames)
            for f in ("portable", "fused")]
    for portable, fused in zip(*runs):
        assert len(portable) == len(fused) > 0
        np.testing.assert_allclose(fused.boxes, portable.boxes, atol=1e-4)
        np.testing.assert_allclose(fused.scores, portable.scores, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("arch, flavour", [("v1", "fused"), ("v2", "portable")])
def test_random_r50_parity(arch, flavour, frames, tmp_path):
    """Seeded random-init R50-FPN at a small input: all 100 detections per frame reach the mask head."""
    options = ModelOptions(arch=arch, weights="random:0", min_size=320, max_size=576, rpn_post_nms_top_n=300)
    path = export_onnx(tmp_path / f"{arch}.onnx", options, flavour=flavour)
    report = check_onnx(path, frames[:1])
    assert report.passed, report.table()
    assert report.reference_count == 100


def test_user_checkpoint_with_its_own_classes(tmp_path, frames):
    from streamseg.models.demo import build_demo_maskrcnn

    torch.manual_seed(3)
    model = build_demo_maskrcnn(num_classes=4)
    checkpoint = save_checkpoint(tmp_path / "mine.pth", model, "streamseg_demo_r10_fpn",
                                 ["__background__", "cone", "sign", "barrier"])
    path = export_onnx(tmp_path / "mine.onnx", ModelOptions(weights=str(checkpoint)), flavour="fused")
    meta = read_metadata(onnx.load(str(path)))
    assert meta["class_names"] == ["__background__", "cone", "sign", "barrier"]
    report = check_onnx(path, frames[:1], limits=Limits())
    assert report.passed, report.table()
    [everything] = OnnxMaskRCNN(ModelOptions(weights=str(path), score_threshold=0.0)).predict(frames[:1])
    assert len(everything) > 0
    name = everything.class_names[everything.labels[0]]
    [dets] = OnnxMaskRCNN(ModelOptions(weights=str(path), score_threshold=0.0, classes=(name,))).predict(frames[:1])
    assert len(dets) == (everything.labels == everything.labels[0]).sum()
    assert {dets.class_names[label] for label in dets.labels} == {name}


def test_empty_frame_keeps_shapes(demo_exports, frames):
    """Nothing over the threshold: no box or mask stage runs, and the result is a well-formed empty Detections."""
    backend = OnnxMaskRCNN(ModelOptions(weights=str(demo_exports["fused"]), score_threshold=1.0))
    [dets] = backend.predict(frames[:1])
    assert len(dets) == 0 and dets.boxes.shape == (0, 4) and dets.masks.image_size == (360, 640)


def test_run_backend_onnx_on_every_evalkit_clip(demo_exports, videos, tmp_path):
    backend = OnnxMaskRCNN(ModelOptions(weights=str(demo_exports["fused"])))
    config = build_config({"output_dir": str(tmp_path), "backend": "onnx", "source": {"max_frames": 3},
                           "sinks": {"video": False}})
    with Runner(config, backend) as runner:
        for clip in CLIPS:
            run = runner.process(str(videos / clip))
            assert run.frames_written == 3, clip
            records = list(read_detections_jsonl(run.outputs["detections"]))
            assert [r["frame"] for r in records] == [0, 1, 2], clip


def streamseg(*args, timeout=600):
    return subprocess.run([*STREAMSEG, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_cli_export_check_and_run(tmp_path, videos):
    model = tmp_path / "demo.onnx"
    done = streamseg("export", "onnx", "-o", model, "--roi-align", "fused", "--opset", "18")
    assert done.returncode == 0, done.stderr
    assert read_metadata(onnx.load(str(model)))["opset"] == 18
    clip = videos / "edge_cases" / "asl_again.mkv"
    done = streamseg("export", "check", model, "--source", clip)
    assert done.returncode == 0 and "PASS" in done.stdout, done.stdout + done.stderr
    done = streamseg("run", clip, "-o", tmp_path / "out", "--backend", "onnx", "--weights", model, "--max-frames", "2",
                     "--no-progress", "--preset", "ultrafast")
    assert done.returncode == 0, done.stderr
    assert "CPUExecutionProvider" in done.stderr
    assert len(list(read_detections_jsonl(tmp_path / "out" / "asl_again.detections.jsonl"))) == 2
    # a check that must fail: limits no export can meet
    done = streamseg("export", "check", model, "--source", clip, "--min-mask-iou", "1.01")
    assert done.returncode == 1 and "FAIL" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["export", "check", "missing.onnx"], "ONNX model not found"),
    (["export", "onnx", "-o", "{tmp}/x.onnx", "--roi-align", "fast"], "--roi-align: expected one of portable, fused"),
    (["export", "onnx", "-o", "{tmp}/x.onnx", "--weights", "missing.pth"], "weights file not found"),
    (["export", "onnx", "-o", "{tmp}/x.onnx", "--opset", "11"], "--opset"),
    (["export", "check", "{tmp}/plain.onnx"], "not exported by streamseg"),
    (["run", "clip.mp4", "--backend", "onnx", "--weights", "missing.onnx"], "ONNX model not found"),
])
def test_bad_input_one_line_error(args, message, tmp_path, capsys):
    """In-process through the CLI's own main() (the exit code and stderr line a user sees), without a torch
    import per case; test_cli_export_check_and_run covers the real subprocess."""
    from streamseg.cli import main

    plain = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    code = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("streamseg: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


def test_metadata_is_json_and_names_the_stages(demo_exports):
    props = {p.key: p.value for p in onnx.load(str(demo_exports["portable"])).metadata_props}
    meta = json.loads(props["streamseg"])
    assert set(meta["stages"]) == {"rpn", "box", "mask"}
    assert meta["stages"]["box"]["inputs"][-1] == "box_rois"
    assert np.isclose(meta["rpn"]["nms_thresh"], 0.7) and meta["roi_heads"]["detections_per_img"] == 30


def test_int8_quantizes_the_backbone_stage_only_and_still_detects(demo_exports, tmp_path):
    from streamseg.export.quantize import quantize_onnx
    from streamseg.scenes import Scene, SceneConfig
    from streamseg.scenes.export import write_scene
    from streamseg.types import Frame

    video = write_scene(SceneConfig(seed=901, frames=24), tmp_path / "calibration", preset="ultrafast")["video"]
    path = quantize_onnx(demo_exports["fused"], tmp_path / "int8.onnx", str(video), frames=4)
    model = onnx.load(str(path))
    meta = read_metadata(model)
    assert meta["quantization"]["stage"] == "rpn" and meta["quantization"]["calibration"]["frames"] == 4
    assert meta["flavour"] == "portable"  # the fused nodes were expanded: int8 files are for ONNX Runtime on CPU
    quantized_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    backbone = [n for n in convs if "backbone" in n.name]
    assert backbone and all(n.input[0] in quantized_outputs for n in backbone)
    assert all(n.input[0] not in quantized_outputs for n in convs if "mask_head" in n.name)
    scene = Scene(SceneConfig(seed=3, frames=60))
    rendered = scene.render(45)
    frame = Frame(rendered.image, "scene3", 45, 1.5)
    [reference] = OnnxMaskRCNN(ModelOptions(weights=str(demo_exports["portable"]))).predict([frame])
    [got] = OnnxMaskRCNN(ModelOptions(weights=str(path))).predict([frame])
    m = match_detections(reference, got)
    assert len(reference) >= 2 and len(m.pairs) >= 0.6 * len(reference), (len(reference), len(got), len(m.pairs))
    assert np.median(m.mask_iou) > 0.8
