"""Model files as users get them wrong (issue 13, items 8, 10 and 12): each mistake is one line naming the file and
what is wrong, exit 1, never a traceback; a checkpoint that says what it is loads as that."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamseg.cli import main
from streamseg.models.demo import DEMO_WEIGHTS

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
ONE_FRAME = ["--max-frames", "1", "--no-video", "--no-progress"]


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path_factory, monkeypatch):
    """--backend auto exports checkpoints into the ONNX cache: one for this module, not the user's."""
    monkeypatch.setenv("STREAMSEG_ONNX_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))


@pytest.fixture
def clip(videos):
    return str(videos / "traffic" / "car_traffic_small.mp4")


@pytest.fixture
def demo_copy(tmp_path):
    """The shipped demo checkpoint under another name, as a user passes it."""
    return shutil.copy(DEMO_WEIGHTS, tmp_path / "demo.pth")


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("hello\n")  # torch.load: KeyError('101')
    return path


def one_line_error(code: int, capsys, *names) -> str:
    """The CLI's contract for user errors: exit 1, stderr exactly one 'streamseg: error:' line naming ``names``."""
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamseg: error:"), err
    assert all(str(name) in lines[0] for name in names), err
    return lines[0]


# -- item 8: files that are not what the command reads

def test_export_check_of_a_text_file(text_file, clip, capsys):
    """onnx.load's protobuf DecodeError used to escape as a traceback."""
    line = one_line_error(main(["export", "check", str(text_file), "--source", clip]), capsys, text_file)
    assert "not an ONNX model (text file?)" in line


def test_export_check_of_a_checkpoint(demo_copy, clip, capsys):
    """The likeliest wrong file: the checkpoint instead of its export."""
    line = one_line_error(main(["export", "check", str(demo_copy), "--source", clip]), capsys, demo_copy)
    assert "not an ONNX model (a PyTorch checkpoint?" in line


def test_onnx_backend_with_a_text_file(text_file, clip, tmp_path, capsys):
    code = main(["run", clip, "-o", str(tmp_path), "--backend", "onnx", "--weights", str(text_file), *ONE_FRAME])
    assert "not an ONNX model (text file?)" in one_line_error(code, capsys, text_file)


def test_export_onnx_under_a_regular_file(tmp_path, capsys):
    """mkdir's FileExistsError used to escape after the model was built; now nothing is built."""
    blocker = tmp_path / "notes"
    blocker.write_text("a file, not a folder")
    target = blocker / "x.onnx"
    line = one_line_error(main(["export", "onnx", "-o", str(target)]), capsys, target)
    assert f"{blocker} is a file, not a folder" in line


def test_weights_that_are_a_text_file(text_file, clip, tmp_path, capsys):
    """torch.load's KeyError on a text file used to print as 'cannot read weights FILE: 101'."""
    weights = text_file.rename(tmp_path / "model.pth")
    code = main(["run", clip, "-o", str(tmp_path), "--weights", str(weights), *ONE_FRAME])
    assert "not a PyTorch checkpoint (text file?)" in one_line_error(code, capsys, weights)


# -- item 10: a checkpoint loads as what it is

def test_demo_checkpoint_on_a_coco_pipeline(demo_copy, clip, tmp_path, capsys):
    """--weights without --arch takes the checkpoint's architecture over the pipeline file's 'v1'."""
    code = main(["run", "--pipeline", str(PIPELINES / "traffic.toml"), clip, "-o", str(tmp_path),
                 "--weights", str(demo_copy), "--classes", "car", *ONE_FRAME])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "car_traffic_small.detections.jsonl").is_file()


def test_classes_the_checkpoint_lacks(demo_copy, clip, tmp_path, capsys, caplog):
    """traffic.toml keeps cars, trucks and buses; the demo model knows only cars of them: the run goes on with
    cars after one warning naming the weights and the classes left out. None known at all: one line."""
    with caplog.at_level(logging.WARNING):
        code = main(["run", "--pipeline", str(PIPELINES / "traffic.toml"), clip, "-o", str(tmp_path),
                     "--weights", str(demo_copy), *ONE_FRAME])
    assert code == 0, capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if "model.classes" in r.getMessage()]
    assert len(warnings) == 1 and str(demo_copy) in warnings[0] and "truck, bus, motorcycle" in warnings[0]
    records = [json.loads(line) for line in (tmp_path / "car_traffic_small.detections.jsonl").read_text().splitlines()]
    assert {d["class"] for r in records for d in r["detections"]} <= {"car"}
    capsys.readouterr()
    code = main(["run", clip, "-o", str(tmp_path), "--weights", str(demo_copy), "--classes", "truck,bus", *ONE_FRAME])
    line = one_line_error(code, capsys, demo_copy)
    assert "knows none of ['truck', 'bus']" in line and "'car'" in line


def test_explicit_arch_that_conflicts(demo_copy, clip, tmp_path, capsys):
    code = main(["run", clip, "-o", str(tmp_path), "--weights", str(demo_copy), "--arch", "v1", *ONE_FRAME])
    line = one_line_error(code, capsys)
    assert line == f"streamseg: error: {demo_copy} is a demo checkpoint, not v1 (it does not fit " \
                   "maskrcnn_resnet50_fpn): use --arch demo"


def test_bare_state_dict_is_told_apart_by_its_keys(tmp_path, clip, capsys):
    """A bare demo state dict (no recorded arch) used to pass for v1, whose box-head key it shares."""
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(DEMO_WEIGHTS, weights_only=True)["state_dict"], bare)
    assert main(["run", clip, "-o", str(tmp_path), "--weights", str(bare), *ONE_FRAME]) == 0
    capsys.readouterr()
    code = main(["run", clip, "-o", str(tmp_path), "--weights", str(bare), "--arch", "v2", *ONE_FRAME])
    assert "is a demo checkpoint, not v2" in one_line_error(code, capsys, bare)


def test_weights_that_fit_no_architecture(tmp_path, clip, capsys):
    """load_state_dict's message used to be cut to its first line, 'Error(s) in loading state_dict for MaskRCNN:'."""
    checkpoint = torch.load(DEMO_WEIGHTS, weights_only=True)
    del checkpoint["state_dict"]["rpn.head.conv.0.0.weight"]
    del checkpoint["arch"]
    broken = tmp_path / "broken.pth"
    torch.save(checkpoint, broken)
    code = main(["run", clip, "-o", str(tmp_path), "--weights", str(broken), "--arch", "demo", *ONE_FRAME])
    line = one_line_error(code, capsys, broken)
    assert "does not fit streamseg_demo_r10_fpn: 1 missing keys (first: rpn.head.conv.0.0.weight)" in line


def test_arch_help_lists_every_choice(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    arch = help_text[help_text.rindex("--arch ARCH"):help_text.rindex("--device DEVICE")]  # the entry, not usage
    assert all(choice in arch for choice in ("auto", "demo", "v1", "v2")), arch


# -- item 12: a GPU device without a GPU

@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the error cannot occur")
def test_onnx_backend_on_cuda_without_a_gpu_fails_like_torch(clip, tmp_path, capsys):
    """ONNX Runtime's ~30 lines of provider errors (native stderr, and its fallback box on stdout) and a silent CPU
    run become the torch backend's one line. A subprocess, to see what ORT writes to the file descriptors."""
    code = main(["run", clip, "-o", str(tmp_path), "--device", "cuda", *ONE_FRAME])
    torch_line = one_line_error(code, capsys)
    done = subprocess.run([sys.executable, "-m", "streamseg.cli", "run", clip, "-o", str(tmp_path), "--backend", "onnx",
                           "--device", "cuda", *ONE_FRAME], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.splitlines() == [torch_line], done.stderr
