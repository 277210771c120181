"""Image folders and source lists as users run them (issue 13, items 3, 4, 5, 9, 13): any file names, unreadable
images skipped, COCO ids that mean what COCO means, video globs, unknown URL schemes. Real files only: images
written with OpenCV (generated street scenes, the evalkit's COCO images), the evalkit's clips and annotation file."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from streamseg.errors import SourceError
from streamseg.models import COCO_CLASS_NAMES
from streamseg.scenes import Scene, SceneConfig
from streamseg.sinks import CocoResultsSink, read_detections_jsonl
from streamseg.sinks.coco import coco_image_ids
from streamseg.sources import ImageFolderSource, expand_sources, open_source
from streamseg.types import Detections, Frame, FrameResult, SourceInfo

STREAMSEG = [sys.executable, "-m", "streamseg.cli"]

# pycocotools' compiled code trips numpy 2's copy-keyword deprecation: noise from a dependency, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


def streamseg(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*STREAMSEG, *map(str, args)], capture_output=True, text=True, timeout=600)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``streamseg: error:`` line of a run that exited 1, without a traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("streamseg: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return fn(*args)


def write_image(path: Path, rgb) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def scene_images(folder: Path, names: list[str], seed: int = 7) -> Path:
    """Frames 10, 20, 30, ... of a generated street scene (cars, bicycles, people: what the demo model knows),
    saved under ``names`` (the extension picks the format)."""
    folder.mkdir(parents=True, exist_ok=True)
    scene = Scene(SceneConfig(seed=seed, frames=10 * len(names) + 10))
    for k, name in enumerate(names, start=1):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(folder / name, scene.render(10 * k).image)
    return folder


def video_frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def coco_outputs(out: Path, source_id: str) -> tuple[list[dict], dict]:
    results = json.loads((out / f"{source_id}.coco.json").read_text())
    companion = json.loads((out / f"{source_id}.coco.categories.json").read_text())
    return results, companion


# ---------------------------------------------------------------- 3: any image names, image_id rules


def test_folder_of_non_numeric_names_is_processed_fully(tmp_path):
    """frame_0001.jpg used to stop the run after the first image ("expected a numeric file name")."""
    names = ["frame_0001.jpg", "frame_0002.jpg", "img-a.png", "scene b.webp"]
    folder = scene_images(tmp_path / "shots", names)
    ok(streamseg("run", folder, "-o", tmp_path / "out", "--no-progress", "--preset", "ultrafast"))
    records = list(read_detections_jsonl(tmp_path / "out" / "shots.detections.jsonl"))
    assert [r["file"] for r in records] == sorted(names)  # every record names its image
    assert video_frame_count(tmp_path / "out" / "shots.mp4") == len(names)
    results, companion = coco_outputs(tmp_path / "out", "shots")
    positions = {name: k for k, name in enumerate(sorted(names), start=1)}  # no numeric names: sorted position
    assert [(i["file_name"], i["id"]) for i in companion["images"]] == list(positions.items())
    assert results and {r["image_id"] for r in results} <= set(positions.values())
    gt = quiet(COCO, str(tmp_path / "out" / "shots.coco.categories.json"))
    assert len(quiet(gt.loadRes, results).anns) == len(results)  # the companion is a dataset results load against


def test_image_ids_without_annotations():
    assert coco_image_ids(["000000000139.jpg", "sub/COCO_val2014_000000000042.png"]) == [139, 42]
    assert coco_image_ids(["000000000139.jpg", "cat.jpg"]) == [1, 2]  # a number for one only: positions
    assert coco_image_ids(["1.jpg", "001.png", "2.jpg"]) == [1, 2, 3]  # numbers that collide: positions
    assert coco_image_ids(["img-a.png", "img-b.jpg"]) == [1, 2]


def test_image_ids_from_annotation_file_by_file_name():
    dataset = {"images": [{"id": 7, "file_name": "a/x.jpg"}, {"id": 8, "file_name": "b/x.jpg"},
                          {"id": 9, "file_name": "val/y.jpg"}, {"id": 10, "file_name": "z.png"}],
               "categories": []}
    names = ["a/x.jpg", "b/x.jpg", "y.jpg", "z.png", "other/z.png", "missing.jpg", "c/x.jpg"]
    # the relative path first; else the bare name where it is unique on both sides (not so: z.png, x.jpg)
    assert coco_image_ids(names, dataset) == [7, 8, 9, 10, None, None, None]


def test_annotation_file_gives_image_and_category_ids(evalkit, tmp_path):
    """Real COCO images under names that carry no id: the annotation file's ids, matched by file name; an image
    it lacks gets no results (one warning) but stays in the JSONL."""
    annotations = json.loads((evalkit / "coco/annotations/instances_val2017_subset.json").read_text())
    picked = sorted(annotations["images"], key=lambda i: i["id"])[:3]
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, image in enumerate(picked):
        image["file_name"] = f"photo-{'abc'[k]}.jpg"
        (folder / image["file_name"]).symlink_to(evalkit / "coco/val2017" / f"{image['id']:012d}.jpg")
    scene_images(folder, ["zz-extra.png"])
    annotations["images"] = picked
    annotations["annotations"] = [a for a in annotations["annotations"] if a["image_id"] in {i["id"] for i in picked}]
    gt_file = tmp_path / "renamed.json"
    gt_file.write_text(json.dumps(annotations))

    proc = ok(streamseg("run", folder, "-o", tmp_path / "out", "--coco-annotations", gt_file, "--no-video",
                        "--no-progress", "--score-threshold", "0.05"))
    assert "1 images are not in" in proc.stderr and "zz-extra.png" in proc.stderr
    results, companion = coco_outputs(tmp_path / "out", "photos")
    assert [(i["id"], i["file_name"]) for i in companion["images"]] == [(i["id"], i["file_name"]) for i in picked]
    assert results and {r["image_id"] for r in results} <= {i["id"] for i in picked}
    by_name = {c["name"]: c["id"] for c in annotations["categories"]}
    categories = {c["name"]: c["id"] for c in companion["categories"]}
    assert categories == {name: by_name[name] for name in ("person", "car", "bicycle")}
    assert len(list(read_detections_jsonl(tmp_path / "out" / "photos.detections.jsonl"))) == 4
    gt = quiet(COCO, str(gt_file))
    evaluator = COCOeval(gt, quiet(gt.loadRes, results), "segm")  # ids pycocotools resolves against the dataset
    quiet(evaluator.evaluate)
    assert evaluator.evalImgs


# ---------------------------------------------------------------- 4: unreadable images


def test_unreadable_images_are_skipped_and_the_run_exits_1(tmp_path):
    """corrupt.jpg sorted first used to abort the folder before anything was written."""
    folder = scene_images(tmp_path / "mixed", ["good-1.jpg", "good-2.png", "good-3.jpg"])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg" * 20)  # garbage after a JPEG magic
    good = (folder / "good-2.png").read_bytes()
    (folder / "good-2b.png").write_bytes(good[: len(good) // 2])  # truncated
    proc = streamseg("run", folder, "-o", tmp_path / "out", "--no-progress", "--preset", "ultrafast")
    line = error_line(proc)
    assert "unreadable images skipped: 2" in line
    warnings = [w for w in proc.stderr.splitlines() if "WARNING" in w and "not a readable image" in w]
    assert len(warnings) == 2 and "corrupt.jpg" in warnings[0] and "good-2b.png" in warnings[1]
    assert "mixed: unreadable images skipped: 2" in proc.stderr  # in the end report
    records = list(read_detections_jsonl(tmp_path / "out" / "mixed.detections.jsonl"))
    assert [r["file"] for r in records] == ["good-1.jpg", "good-2.png", "good-3.jpg"]
    assert [r["frame"] for r in records] == [1, 2, 4]  # indices stay positions in the sorted folder
    assert video_frame_count(tmp_path / "out" / "mixed.mp4") == 3
    results, companion = coco_outputs(tmp_path / "out", "mixed")
    assert [i["file_name"] for i in companion["images"]] == ["good-1.jpg", "good-2.png", "good-3.jpg"]
    assert results and {r["image_id"] for r in results} <= {2, 3, 5}


def test_image_source_skips_unreadable_images(evalkit, tmp_path):
    coco = sorted((evalkit / "coco/val2017").glob("*.jpg"))
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").symlink_to(coco[0])
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "d.jpg").symlink_to(coco[1])
    with ImageFolderSource(tmp_path) as source:
        assert (source.info.width, source.info.height) == cv2.imread(str(coco[0])).shape[1::-1]
        frames = list(source)
        assert [f.index for f in frames] == [1, 3]
        assert [p.name for p in source.skipped] == ["a.jpg", "c.png"]
    for path in (tmp_path / "b.jpg", tmp_path / "d.jpg"):
        path.unlink()
    with pytest.raises(SourceError, match="no readable image"):
        ImageFolderSource(tmp_path).open()


def test_glob_names_are_relative_to_its_folder(tmp_path):
    scene_images(tmp_path / "data", ["cam1/0001.jpg", "cam2/0001.jpg", "top.png"])
    with open_source(str(tmp_path / "data" / "**" / "*.*")) as source:
        assert source.names == ["cam1/0001.jpg", "cam2/0001.jpg", "top.png"]
        assert coco_image_ids(source.names) == [1, 2, 3]  # 0001 twice: positions


# ---------------------------------------------------------------- 5: category ids


def test_demo_model_classes_are_written_with_coco_category_ids(tmp_path):
    """car is COCO category 3 and bicycle 2, whatever the model's label order (the demo model has car = 2)."""
    folder = scene_images(tmp_path / "street", ["1.png", "2.png", "3.png"])  # numeric names: image_id 1, 2, 3
    ok(streamseg("run", folder, "-o", tmp_path / "out", "--no-video", "--no-progress"))
    results = json.loads((tmp_path / "out" / "street.coco.json").read_text())
    records = list(read_detections_jsonl(tmp_path / "out" / "street.detections.jsonl"))
    jsonl = Counter((r["frame"] + 1, d["class"]) for r in records for d in r["detections"])
    coco = Counter((r["image_id"], COCO_CLASS_NAMES[r["category_id"]]) for r in results)
    assert {name for _, name in jsonl} >= {"car", "bicycle"}
    assert coco == jsonl  # every detection under the COCO category of its class name
    _, companion = coco_outputs(tmp_path / "out", "street")
    assert companion["categories"] == [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"},
                                       {"id": 3, "name": "car"}]


def test_classes_coco_lacks_get_ids_after_90(tmp_path):
    info = SourceInfo("x", "x", 64, 48, is_image_sequence=True)
    names = ("__background__", "car", "scooter", "person", "tram", "N/A")  # N/A: an unused COCO slot, no class
    dets = Detections([[0, 0, 10, 10]] * 5, [0.9, 0.8, 0.7, 0.6, 0.5], [1, 2, 3, 4, 5], names)
    frame = Frame(np.zeros((48, 64, 3), np.uint8), "x", 0, 0.0)
    with CocoResultsSink(tmp_path / "r.json", info, images=["a.jpg"], class_names=names[1:]) as sink:
        sink.write(FrameResult(frame, dets))
    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["category_id"] for r in results] == [3, 91, 1, 92]
    categories = json.loads((tmp_path / "r.categories.json").read_text())["categories"]
    assert categories == [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 91, "name": "scooter"},
                          {"id": 92, "name": "tram"}]
    gt = {"images": [{"id": 1, "file_name": "a.jpg"}],
          "categories": [{"id": 5, "name": "car"}, {"id": 120, "name": "tram"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with CocoResultsSink(tmp_path / "s.json", info, images=["a.jpg"], class_names=names[1:],
                         annotations=tmp_path / "gt.json") as sink:
        sink.write(FrameResult(frame, dets))
    assert [r["category_id"] for r in json.loads((tmp_path / "s.json").read_text())] == [5, 121, 122, 120]


def test_bad_annotation_file_is_one_line(tmp_path):
    scene_images(tmp_path / "imgs", ["a.png"])
    (tmp_path / "gt.json").write_text('{"images": [{"file_name": "a.png"}]}')
    for gt, expected in ((tmp_path / "gt.json", "not a COCO annotation file"),
                         (tmp_path / "none.json", "COCO annotation file not found")):
        proc = streamseg("run", tmp_path / "imgs", "-o", tmp_path / "out", "--backend", "none", "--no-video",
                         "--coco-annotations", gt)
        assert expected in error_line(proc)


# ---------------------------------------------------------------- 9: globs of videos


def test_quoted_glob_of_videos_and_images(videos, tmp_path):
    """A quoted glob used to fail with "pattern matches no image files" as soon as it matched videos."""
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.webm").symlink_to(videos / "edge_cases/no_duration.webm")
    (media / "b.mkv").symlink_to(videos / "edge_cases/asl_again.mkv")
    scene_images(media, ["1.jpg", "2.png"])
    (media / "notes.txt").write_text("not media: ignored")
    pattern = str(media / "*")
    ok(streamseg("run", pattern, "-o", tmp_path / "out", "--backend", "none", "--no-video", "--max-frames", "3",
                 "--no-progress"))
    frames = {name: len(list(read_detections_jsonl(tmp_path / "out" / f"{name}.detections.jsonl")))
              for name in ("a", "b", "media")}
    assert frames == {"a": 3, "b": 3, "media": 2}
    ok(streamseg("run", str(videos / "edge_cases" / "*.webm"), "-o", tmp_path / "webm", "--backend", "none",
                 "--no-video", "--max-frames", "2", "--no-progress"))
    assert len(list(read_detections_jsonl(tmp_path / "webm" / "no_duration.detections.jsonl"))) == 2
    assert expand_sources([pattern]) == [pattern, str(media / "a.webm"), str(media / "b.mkv")]  # images first
    with pytest.raises(SourceError, match="pattern matches no image or video files"):
        expand_sources([str(media / "*.txt")])


# ---------------------------------------------------------------- 13: unknown URL schemes


@pytest.mark.parametrize("command", ["run", "info"])
def test_unknown_url_scheme_is_named(command, videos, tmp_path):
    clip = videos / "edge_cases/fire2.mp4"  # run refuses the list before any work; info describes the others
    proc = streamseg(command, "rtps://user:hunter2@host/x", clip, *(["-o", tmp_path] if command == "run" else []))
    line = error_line(proc)
    assert "unknown URL scheme 'rtps'" in line and "rtsp://" in line and "v4l2://" in line
    assert "rtps:/host" not in line and "no such file" not in line and "hunter2" not in proc.stderr
    assert ("fire2.mp4" in proc.stdout) == (command == "info") and not any(tmp_path.iterdir())
    with pytest.raises(SourceError, match="unknown URL scheme 'ftp'"):
        open_source("ftp://host/clip.mp4")
