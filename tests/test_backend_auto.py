"""``--backend auto`` (the default) and lean start-up (issue 14, items 3-5): ONNX Runtime on a CPU from an export
made once into the cache (atomic, rebuilt when damaged), torch where that does not pay, one log line saying which
and why; inference never imports the exporter; ``--help`` and ``info`` never import torch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamseg import __version__
from streamseg.cli import main
from streamseg.models import ModelOptions, build_backend
from streamseg.models.auto import choose_backend
from streamseg.models.onnx_cache import CACHE_ENV, cached_path
from streamseg.models.onnx_graph import load_onnx, read_metadata
from streamseg.sources import open_source

REPO = Path(__file__).resolve().parents[1]
ONE_FRAME = ["--max-frames", "1", "--no-video", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache folder for the module: the demo model is exported into it once (~10 s)."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def clip(videos) -> str:
    return str(videos / "traffic" / "car_traffic_small.mp4")


@pytest.fixture(scope="module")
def frame(clip):
    with open_source(clip, max_frames=1) as source:
        return next(iter(source))


def auto_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto:")]


def identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def test_auto_on_cpu_exports_once_then_runs_from_the_cache(cache, frame, caplog):
    options = ModelOptions(cache_dir=str(cache))
    path, _ = cached_path(options)
    assert not path.exists()
    with caplog.at_level(logging.INFO):
        first = build_backend(options)  # auto is the default
    assert first.name == "onnx" and path.is_file()
    assert auto_lines(caplog) == ["backend auto: onnx (CPU: ONNX Runtime runs Mask R-CNN faster than eager PyTorch, "
                                  "from a cached export of the weights)"]
    assert [p.name for p in cache.iterdir()] == [path.name]  # the temporary file was renamed, not copied
    made = identity(path)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = build_backend(options, "auto")
    assert identity(path) == made  # not exported again: same inode, mtime and size
    assert not any("exporting" in r.getMessage() for r in caplog.records)
    assert "cached export" in second.origin
    [a], [b] = first.predict([frame]), second.predict([frame])
    assert len(a) > 0 and np.array_equal(a.boxes, b.boxes)
    torch_dets = build_backend(options, "torch").predict([frame])[0]
    assert len(torch_dets) == len(a) and np.abs(torch_dets.boxes - a.boxes).max() < 0.01


@pytest.mark.parametrize("damage", ["truncated", "not onnx", "other metadata"])
def test_a_damaged_cache_file_is_exported_again(damage, cache, tmp_path, frame, caplog):
    """A file cut short (a full disk, a copy killed midway), garbage or another version's export is never run."""
    options = ModelOptions(cache_dir=str(cache))
    good, _ = cached_path(options)
    if not good.exists():
        build_backend(options, "onnx")
    damaged = ModelOptions(cache_dir=str(tmp_path))
    path, _ = cached_path(damaged)
    data = good.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not onnx":
        path.write_text("hello\n")
    else:
        import onnx

        model = onnx.load_from_string(data)
        entry = next(p for p in model.metadata_props if p.key == "streamseg")
        entry.value = json.dumps({**json.loads(entry.value), "streamseg_version": "0.0.1"})
        path.write_bytes(model.SerializeToString())
    with caplog.at_level(logging.WARNING):
        backend = build_backend(damaged, "auto")
    assert any("unusable cached ONNX export" in r.getMessage() for r in caplog.records)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # replaced, no temporary file left
    assert read_metadata(load_onnx(path))["streamseg_version"] == __version__
    assert len(backend.predict([frame])[0]) > 0


def test_cli_default_backend_is_auto_and_torch_stays(cache, clip, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(CACHE_ENV, str(cache))
    with caplog.at_level(logging.INFO):
        assert main(["run", clip, "-o", str(tmp_path / "auto"), *ONE_FRAME]) == 0
    assert [line.split(" (")[0] for line in auto_lines(caplog)] == ["backend auto: onnx"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["run", clip, "-o", str(tmp_path / "torch"), "--backend", "torch", *ONE_FRAME]) == 0
    assert auto_lines(caplog) == []
    records = [(tmp_path / kind / "car_traffic_small.detections.jsonl").read_text() for kind in ("auto", "torch")]
    assert all(records) and len(json.loads(records[0])["detections"]) == len(json.loads(records[1])["detections"])


def test_auto_chooses_torch_or_tensorrt_where_onnx_runtime_does_not_pay(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        backend = build_backend(ModelOptions(arch="demo", weights="random:3", cache_dir=str(tmp_path)), "auto")
    assert backend.name == "torch" and not any(tmp_path.iterdir())
    assert auto_lines(caplog) == ["backend auto: torch (random:3 is an untrained test model: not worth an ONNX export)"]
    assert choose_backend(ModelOptions(device="cuda"))[0] == "torch"
    assert choose_backend(ModelOptions(weights="model.onnx")) == ("onnx", "model.onnx is an ONNX file")
    blocked = tmp_path / "a file"
    blocked.write_text("")
    name, reason = choose_backend(ModelOptions(cache_dir=str(blocked / "onnx")))
    assert name == "torch" and reason == f"the ONNX cache {blocked / 'onnx'} cannot be written (set model.cache_dir " \
                                         "or $STREAMSEG_ONNX_CACHE)"
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "streamseg.json").write_text("{}")
    assert choose_backend(ModelOptions(weights=str(engines), device="cuda"))[0] == "tensorrt"


def test_cache_folder_from_the_environment_and_the_config(tmp_path, monkeypatch):
    from streamseg.config import build_config

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cached_path(ModelOptions())[0].parent == tmp_path / "env"
    config = build_config({"model": {"cache_dir": str(tmp_path / "config")}})
    assert config.backend == "auto" and cached_path(config.model)[0].parent == tmp_path / "config"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cached_path(ModelOptions())[0].parent == tmp_path / "xdg" / "streamseg" / "onnx"


def test_cache_key_follows_the_weights_not_their_name(tmp_path):
    """A copy of a checkpoint is the same export; another checkpoint, arch or flavour is another file."""
    from streamseg.models.demo import DEMO_WEIGHTS

    copy = tmp_path / "copy.pth"
    copy.write_bytes(DEMO_WEIGHTS.read_bytes())
    path = cached_path(ModelOptions())[0]
    assert cached_path(ModelOptions(weights=str(copy)))[0] == path
    assert cached_path(ModelOptions(min_size=512, score_threshold=0.1))[0] == path  # runtime options
    assert cached_path(ModelOptions(), "fused")[0] != path
    assert cached_path(ModelOptions(arch="demo"))[0] != path
    other = tmp_path / "other.pth"
    other.write_bytes(DEMO_WEIGHTS.read_bytes() + b"\0")
    assert cached_path(ModelOptions(weights=str(other)))[0] != path


def test_a_bad_checkpoint_under_auto_is_the_exporters_one_line(tmp_path, clip, monkeypatch, capsys):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    weights = tmp_path / "model.pth"
    weights.write_text("hello\n")
    assert main(["run", clip, "-o", str(tmp_path / "out"), "--weights", str(weights), *ONE_FRAME]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"streamseg: error: cannot read weights {weights}: not a PyTorch checkpoint (text file?)"]
    assert not any((tmp_path / "cache").iterdir())  # no temporary file left behind


def imported_modules(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True)
    return set(done.stdout.split())


def test_the_onnx_backend_never_imports_the_exporter(cache, tmp_path):
    """Loading an .onnx file (here a fused one, which ONNX Runtime runs expanded) needs neither streamseg.export nor
    torch.onnx: nothing traces or exports while a model loads."""
    from streamseg.export.onnx_export import export_onnx

    modules = imported_modules("import streamseg.models.onnx_backend")
    assert not any(m.startswith("streamseg.export") for m in modules)
    fused = export_onnx(tmp_path / "fused.onnx", ModelOptions(), flavour="fused")
    tripwire = "def export(*args, **kwargs):\n    raise SystemExit('torch.onnx.export called')\n"
    modules = imported_modules(f"import torch.onnx\n{tripwire}torch.onnx.export = export\n"
                               "from streamseg.models import ModelOptions, build_backend\n"
                               f"build_backend(ModelOptions(weights={str(fused)!r}), 'auto')")
    assert "streamseg.models.onnx_backend" in modules
    assert not any(m.startswith("streamseg.export") for m in modules)


@pytest.mark.parametrize("command", [["--help"], ["info", "{clip}"], ["track", "--help"], ["run", "--help"]])
def test_commands_that_build_no_model_do_not_import_torch(command, clip):
    args = [a.format(clip=clip) for a in command]
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "streamseg", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-2000:]
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "streamseg.cli" in imported
    assert not [m for m in imported if m.split(".")[0] in ("torch", "torchvision", "onnx", "onnxruntime")]
