"""Sinks and mask encoding: RLE against pycocotools on real COCO masks, annotation drawing, video timing (decoded
back with PyAV), JSON Lines schema and COCO results scored by COCOeval."""

from __future__ import annotations

import contextlib
import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from streamseg.ops.masks import masks_to_rle, rle_to_masks
from streamseg.sinks import (
    SCHEMA,
    Annotator,
    CocoResultsSink,
    DetectionsJsonlSink,
    Sink,
    VideoSink,
    coco_image_id_from_filename,
    read_detections_jsonl,
)
from streamseg.types import Detections, Frame, FrameResult, InstanceMasks, SourceInfo

NAMES = ("__background__", "person", "bicycle", "car")

# pycocotools' compiled decode trips numpy 2's copy-keyword deprecation: noise from a dependency, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


# ---------------------------------------------------------------- helpers and fixtures


def quiet(fn, *args):
    """pycocotools prints progress on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


@pytest.fixture(scope="session")
def coco_gt(evalkit: Path) -> COCO:
    return quiet(COCO, str(evalkit / "coco" / "annotations" / "instances_val2017_subset.json"))


def gt_detections(coco: COCO, image_id: int) -> Detections:
    """An image's ground truth as detections of score 1 (crowd regions included, as COCO results would be)."""
    info = coco.imgs[image_id]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
    dense = np.stack([coco.annToMask(a).astype(bool) for a in anns])
    masks = InstanceMasks.from_dense(dense)
    assert masks.image_size == (info["height"], info["width"])
    return Detections(boxes, np.ones(len(anns)), [a["category_id"] for a in anns], (), masks)


def make_dets(dense: np.ndarray, labels, scores=None, track_ids=None, with_masks=True) -> Detections:
    """Detections whose boxes are the tight boxes of ``dense`` (N, H, W) masks."""
    boxes = []
    for m in dense:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if ys.size else [0, 0, 0, 0])
    scores = np.linspace(0.9, 0.5, len(dense)) if scores is None else scores
    masks = InstanceMasks.from_dense(dense) if with_masks else None
    return Detections(np.array(boxes, np.float32), scores, labels, NAMES, masks, track_ids)


def result(image: np.ndarray, dets: Detections, index: int = 0, time: float = 0.0, pts=None, tb=None):
    return FrameResult(Frame(image, "clip", index, time, pts, tb), dets)


def info_for(width=64, height=48, fps=Fraction(25), time_base=Fraction(1, 12800), **kw) -> SourceInfo:
    return SourceInfo("clip", "clip.mp4", width, height, fps=fps, time_base=time_base, **kw)


def decode(path: Path):
    """(frames as RGB arrays, times in s, stream) of the first video stream, via PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * frame.time_base))
        duration = float(stream.duration * stream.time_base) if stream.duration else None
        return frames, times, {"rate": stream.average_rate, "duration": duration, "size": frames[0].shape[:2]}


# ---------------------------------------------------------------- empty first


def test_empty_detections_through_every_sink(tmp_path: Path):
    image = np.full((48, 64, 3), 90, np.uint8)
    dets = Detections.empty(NAMES, image_size=(48, 64))
    assert masks_to_rle(dets.masks) == []
    back = rle_to_masks([], (48, 64))
    assert len(back) == 0 and back.image_size == (48, 64)

    drawn = Annotator().annotate(image.copy(), dets)
    assert np.array_equal(drawn, image)

    info = info_for()
    with VideoSink(tmp_path / "v.mp4", info) as video, DetectionsJsonlSink(tmp_path / "d.jsonl", info) as jsonl:
        with CocoResultsSink(tmp_path / "c.json", info, images=["a.png", "b.png", "c.png"]) as coco:
            for i in range(3):
                for sink in (video, jsonl, coco):
                    sink.write(result(image, dets, i, i / 25, i * 512, Fraction(1, 12800)))
    assert len(decode(tmp_path / "v.mp4")[0]) == 3
    records = list(read_detections_jsonl(tmp_path / "d.jsonl"))
    assert [r["detections"] for r in records] == [[], [], []]
    assert json.loads((tmp_path / "c.json").read_text()) == []


def test_empty_run_leaves_no_video_and_valid_other_files(tmp_path: Path):
    info = info_for()
    sinks = [
        VideoSink(tmp_path / "v.mp4", info),
        DetectionsJsonlSink(tmp_path / "d.jsonl", info),
        CocoResultsSink(tmp_path / "c.json", info, images=[]),
    ]
    for sink in sinks:
        assert isinstance(sink, Sink)
        sink.close()
        sink.close()  # idempotent
    assert not (tmp_path / "v.mp4").exists()  # documented: an MP4 without a video stream is not playable
    assert (tmp_path / "d.jsonl").read_text() == ""
    assert json.loads((tmp_path / "c.json").read_text()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.categories.json", "c.json", "d.jsonl"]  # no temporary


# ---------------------------------------------------------------- RLE


def test_rle_round_trip_matches_pycocotools_on_coco(coco_gt: COCO):
    touching = 0
    for image_id in sorted(coco_gt.imgs):
        info = coco_gt.imgs[image_id]
        height, width = info["height"], info["width"]
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        dense = [coco_gt.annToMask(a).astype(bool) for a in anns]
        border = np.zeros((height, width), bool)
        border[height - 3 :, width - 5 :] = True  # bottom-right corner
        column = np.zeros((height, width), bool)
        column[:, 0] = True  # left edge, full height
        dense += [np.zeros((height, width), bool), border, column, np.ones((height, width), bool)]
        touching += sum(bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()) for m in dense[:-4])
        masks = InstanceMasks.from_dense(np.stack(dense))

        rles = masks_to_rle(masks)
        assert len(rles) == len(dense)
        for rle, m in zip(rles, dense):
            expected = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            assert rle == {"size": [height, width], "counts": expected["counts"].decode("ascii")}
            assert isinstance(rle["counts"], str)
        json.dumps(rles)  # JSON-ready

        back = rle_to_masks(rles, (height, width))
        assert back.image_size == (height, width)
        for i, m in enumerate(dense):
            assert np.array_equal(back.dense(i), m)
            assert back.crops[i].shape == masks.crops[i].shape  # cropped, not full frames
    assert touching > 0  # the real masks do include instances cut by the image border


def test_rle_to_masks_reads_uncompressed_crowd_rle_and_checks_size(coco_gt: COCO):
    crowd = [a for a in coco_gt.dataset["annotations"] if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    for ann in crowd:
        height, width = ann["segmentation"]["size"]
        back = rle_to_masks([ann["segmentation"]], (height, width))
        assert np.array_equal(back.dense(0), coco_gt.annToMask(ann).astype(bool))
    with pytest.raises(ValueError, match="does not match image_size"):
        rle_to_masks([crowd[0]["segmentation"]], (10, 10))


# ---------------------------------------------------------------- annotator


def square_masks(height=120, width=160):
    dense = np.zeros((2, height, width), bool)
    dense[0, 20:60, 30:70] = True
    dense[1, 70:110, 90:150] = True
    return dense


def test_annotator_masks_only_changes_exactly_mask_pixels():
    image = np.full((120, 160, 3), 100, np.uint8)
    dense = square_masks()
    dense[1, 75:80, 95:100] = False  # a hole inside the crop must stay untouched
    dets = make_dets(dense, [1, 3])
    out = Annotator(boxes=False, labels=False).annotate(image.copy(), dets)
    changed = (out != image).any(axis=2)
    assert np.array_equal(changed, dense.any(axis=0))
    annotator = Annotator(boxes=False, labels=False)
    for i, label in enumerate([1, 3]):
        expected = np.round(100 * 0.55 + np.array(annotator.color(label)) * 0.45)
        pixel = out[dense[i]][0].astype(float)
        assert np.abs(pixel - expected).max() <= 1


def test_annotator_draws_only_masks_boxes_and_labels():
    image = np.full((120, 160, 3), 100, np.uint8)
    dense = square_masks()
    dense[0, 20:60, 30:70] = np.tri(40, 40, dtype=bool)  # a triangle: half of its box is not mask
    dets = make_dets(dense, [1, 3])
    out = Annotator().annotate(image, dets)
    assert out is image  # in place, as documented
    changed = (out != 100).any(axis=2)
    allowed = dense.any(axis=0).copy()
    for x1, y1, x2, y2 in dets.boxes.astype(int):
        allowed[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x1 + 2] = True  # box outline band
        allowed[max(0, y1 - 2) : y2 + 2, x2 - 2 : x2 + 2] = True
        allowed[max(0, y1 - 2) : y1 + 2, max(0, x1 - 2) : x2 + 2] = True
        allowed[max(0, y2 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = True
        allowed[max(0, y1 - 24) : y1 + 24, max(0, x1 - 2) : x1 + 110] = True  # label (above, or inside at the top)
    assert changed.any()
    assert not (changed & ~allowed).any()
    assert not changed[25:40, 50:65].any()  # inside box 0 but outside its triangle: untouched
    assert changed[dense[0]].all()


def test_annotator_colors_are_stable_per_track_and_per_class():
    a, b = Annotator(), Annotator()
    keys = list(range(-1, 50)) + [10**9, 2**40]
    assert [a.color(k) for k in keys] == [b.color(k) for k in keys]
    assert all(a.color(k) in a.palette for k in keys)
    # pinned values: the same id keeps its colour across runs and versions of this module
    assert a.color(1) == (170, 110, 40) and a.color(7) == (70, 240, 240) and a.color(-1) == (240, 50, 230)
    assert len({a.color(k) for k in range(5)}) == 5  # consecutive ids get distinct colours

    dense = square_masks()
    same_label = make_dets(dense, [1, 1], track_ids=[3, 4])
    out = Annotator(boxes=False, labels=False).annotate(np.zeros((120, 160, 3), np.uint8), same_label)
    assert not np.array_equal(out[dense[0]][0], out[dense[1]][0])  # tracked: colour by track id, not class
    untracked = make_dets(dense, [1, 1])
    out = Annotator(boxes=False, labels=False).annotate(np.zeros((120, 160, 3), np.uint8), untracked)
    assert np.array_equal(out[dense[0]][0], out[dense[1]][0])  # untracked: colour by class

    # the same track id gets the same colour in a later frame at another place
    moved = np.roll(dense[:1], 30, axis=2)
    frame1 = Annotator(boxes=False, labels=False).annotate(np.zeros((120, 160, 3), np.uint8), same_label[0])
    frame2 = Annotator(boxes=False, labels=False).annotate(
        np.zeros((120, 160, 3), np.uint8), make_dets(moved, [2], track_ids=[3])
    )
    assert np.array_equal(frame1[dense[0]][0], frame2[moved[0]][0])


def test_annotator_scales_with_image_size():
    heights = []
    for height in (360, 1080):
        width = height * 16 // 9
        image = np.zeros((height, width, 3), np.uint8)
        box = np.array([[width / 4, height / 2, width / 2, height * 3 / 4]])
        dets = Detections(box, [0.9], [1], NAMES, track_ids=[12])
        out = Annotator().annotate(image, dets)
        column = (out[: int(height / 2), int(width / 4) + 2] != 0).any(axis=1)  # label background above the box
        heights.append(int(column.sum()))
    assert heights[0] >= 12  # legible at 360p
    assert heights[1] >= 2 * heights[0]


def test_annotator_rejects_bad_input():
    dets = make_dets(square_masks(), [1, 3])
    with pytest.raises(ValueError, match="uint8"):
        Annotator().annotate(np.zeros((120, 160, 3), np.float32), dets)
    with pytest.raises(ValueError, match="C-contiguous"):
        Annotator().annotate(np.zeros((120, 320, 3), np.uint8)[:, ::2], dets)
    with pytest.raises(ValueError, match="image_size"):
        Annotator().annotate(np.zeros((100, 160, 3), np.uint8), dets)


# ---------------------------------------------------------------- video


def gradient(height, width, i):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, i * 9 % 256)], -1)


def test_video_constant_rate_keeps_timestamps_and_pixels(tmp_path: Path):
    tb, n = Fraction(1, 12800), 30
    info = info_for(64, 48, Fraction(25), tb)
    frames = [gradient(48, 64, i).astype(np.uint8) for i in range(n)]
    empty = Detections.empty(NAMES, (48, 64))
    with VideoSink(tmp_path / "cfr.mp4", info, crf=18) as sink:
        for i, image in enumerate(frames):
            sink.write(result(image, empty, i, i / 25, 7680 + 512 * i, tb))  # the source starts at 0.6 s
    decoded, times, meta = decode(tmp_path / "cfr.mp4")
    assert len(decoded) == n
    assert times == pytest.approx([i / 25 for i in range(n)], abs=1e-6)
    assert meta["rate"] == 25
    assert meta["duration"] == pytest.approx(n / 25, abs=1e-3)
    assert meta["size"] == (48, 64)
    # RGB order and content survive (a BGR mix-up would swap the x and z gradients)
    error = np.abs(decoded[10].astype(int) - frames[10].astype(int)).mean()
    assert error < 4


def test_video_variable_rate_keeps_irregular_times(tmp_path: Path):
    tb = Fraction(1, 90000)
    times = [0.0, 0.04, 0.1, 0.13, 0.5, 0.52, 0.9, 1.4, 1.433, 2.0]
    info = info_for(64, 48, None, tb)  # fps unknown: the last frame lasts as long as the one before
    empty = Detections.empty(NAMES, (48, 64))
    with VideoSink(tmp_path / "vfr.mp4", info) as sink:
        for i, t in enumerate(times):
            sink.write(result(gradient(48, 64, i).astype(np.uint8), empty, i, t, 90 + round(t * 90000), tb))
    _, decoded, meta = decode(tmp_path / "vfr.mp4")
    assert decoded == pytest.approx(times, abs=1 / 90000)
    assert meta["duration"] == pytest.approx(2.0 + 0.567, abs=1e-3)


def test_video_real_vfr_clip(tmp_path: Path, videos: Path):
    """fire2.mp4: 25 frames in 2.38 s at time base 1/90000."""
    source = videos / "edge_cases" / "fire2.mp4"
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        info = SourceInfo("fire2", str(source), stream.width, stream.height, stream.average_rate, stream.time_base)
        results, times = [], []
        first = None
        for i, frame in enumerate(container.decode(stream)):
            first = frame.pts if first is None else first
            t = float((frame.pts - first) * frame.time_base)
            image = frame.to_ndarray(format="rgb24")[::4, ::4].copy()  # small: the timing is what is tested
            results.append(result(image, Detections.empty(NAMES), i, t, frame.pts, frame.time_base))
            times.append(t)
    gaps = np.diff(times)
    assert gaps.max() - gaps.min() > 0.015  # really variable (0.08 s to 0.1 s)
    with VideoSink(tmp_path / "fire2.mp4", info, preset="ultrafast") as sink:
        for r in results:
            sink.write(r)
    _, decoded, meta = decode(tmp_path / "fire2.mp4")
    assert decoded == pytest.approx(times, abs=1e-4)
    assert meta["duration"] == pytest.approx(times[-1] + 1 / float(info.fps), abs=0.01)


def test_video_image_sequence_odd_and_changing_sizes(tmp_path: Path):
    info = SourceInfo("imgs", "folder", 65, 47, is_image_sequence=True)
    sizes = [(47, 65), (100, 80), (47, 65), (31, 33)]
    with VideoSink(tmp_path / "seq.mp4", info, default_fps=5) as sink:
        for i, (h, w) in enumerate(sizes):
            image = np.zeros((h, w, 3), np.uint8)
            image[..., 0] = 200  # red
            dense = np.zeros((1, h, w), bool)
            dense[0, h // 4 : h // 2, w // 4 : w // 2] = True
            sink.write(result(image, make_dets(dense, [1]), i, 0.0))
    decoded, times, meta = decode(tmp_path / "seq.mp4")
    assert meta["size"] == (48, 66)  # first frame's size, padded to even
    assert len(decoded) == 4
    assert times == pytest.approx([0, 0.2, 0.4, 0.6])
    assert meta["duration"] == pytest.approx(0.8)
    corner = decoded[1][-6:, -6:].reshape(-1, 3).mean(0)  # away from drawings: still red after resize and padding
    assert corner[0] > 170 and corner[1] < 40 and corner[2] < 40


def test_video_close_after_exception_is_playable(tmp_path: Path):
    info = info_for()
    empty = Detections.empty(NAMES, (48, 64))
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="model failed"):
        with VideoSink(path, info) as sink:
            for i in range(7):
                sink.write(result(gradient(48, 64, i).astype(np.uint8), empty, i, i / 25, i * 512, Fraction(1, 12800)))
            raise RuntimeError("model failed")
    decoded, times, _ = decode(path)
    assert len(decoded) == 7
    assert times == pytest.approx([i / 25 for i in range(7)])
    sink.close()  # again: no effect
    with pytest.raises(ValueError, match="closed"):
        sink.write(result(np.zeros((48, 64, 3), np.uint8), empty))

    # the very first write fails (masks of another size): nothing encoded, so no file is left
    wrong = Detections(np.zeros((1, 4)), [1], [1], NAMES, InstanceMasks.from_dense(np.ones((1, 10, 10), bool)))
    with pytest.raises(ValueError, match="image_size"):
        with VideoSink(tmp_path / "none.mp4", info) as sink:
            sink.write(result(np.zeros((48, 64, 3), np.uint8), wrong))
    assert not (tmp_path / "none.mp4").exists()


# ---------------------------------------------------------------- JSON Lines


def test_jsonl_schema_one_line_per_frame_and_masks_decode(tmp_path: Path, coco_gt: COCO):
    image_id = sorted(coco_gt.imgs)[0]
    real = gt_detections(coco_gt, image_id)
    height, width = real.masks.image_size
    image = np.zeros((height, width, 3), np.uint8)
    tracked = real.with_track_ids(np.arange(len(real)) + 100)
    boxes_only = Detections(real.boxes, real.scores * 0.123456, real.labels)
    info = info_for(width, height)
    tb = Fraction(1, 12800)
    path = tmp_path / "d.jsonl"
    with DetectionsJsonlSink(path, info) as sink:
        for i, dets in enumerate([Detections.empty(NAMES, (height, width)), tracked, boxes_only]):
            sink.write(result(image, dets, index=2 * i, time=2 * i / 25, pts=1024 * i, tb=tb))
            assert len(path.read_text().splitlines()) == i + 1  # flushed per line
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    records = list(read_detections_jsonl(path))
    for i, record in enumerate(records):
        assert record["schema"] == SCHEMA == "streamseg.detections/1"
        assert {"source", "frame", "time", "pts", "time_base", "width", "height", "detections"} <= set(record)
        assert (record["source"], record["frame"], record["pts"]) == ("clip", 2 * i, 1024 * i)
        assert record["time"] == pytest.approx(2 * i / 25) and record["time_base"] == "1/12800"
        assert (record["width"], record["height"]) == (width, height)
    assert records[0]["detections"] == []

    items = records[1]["detections"]
    assert len(items) == len(real)
    for k, item in enumerate(items):
        assert set(item) == {"box", "score", "label", "class", "mask", "track_id"}
        assert item["box"] == [round(float(v), 2) for v in real.boxes[k]]
        assert item["score"] == 1.0 and item["label"] == int(real.labels[k]) and item["track_id"] == 100 + k
        assert item["class"] == str(int(real.labels[k]))  # no vocabulary given: the label as text
    decoded = rle_to_masks([item["mask"] for item in items], (height, width))
    for k in range(len(real)):
        assert np.array_equal(decoded.dense(k), real.masks.dense(k))

    for item in records[2]["detections"]:
        assert set(item) == {"box", "score", "label", "class"}  # no mask, no track id
        assert item["score"] == round(item["score"], 4)


def test_jsonl_reader_skips_torn_line_and_rejects_other_schemas(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    with DetectionsJsonlSink(path, info_for()) as sink:
        sink.write(result(np.zeros((48, 64, 3), np.uint8), Detections.empty(NAMES)))
    with open(path, "a") as file:
        file.write('{"schema": "streamseg.detections/1", "sou')  # a write cut by a kill
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert len(list(read_detections_jsonl(path))) == 1
    path.write_text('{"schema": "other/2"}\n')
    with pytest.raises(ValueError, match="expected schema"):
        list(read_detections_jsonl(path))


# ---------------------------------------------------------------- COCO results


def test_coco_image_id_from_filename():
    assert coco_image_id_from_filename("val2017/000000000139.jpg") == 139
    assert coco_image_id_from_filename(Path("COCO_val2014_000000000042.jpg")) == 42
    with pytest.raises(ValueError, match="numeric"):
        coco_image_id_from_filename("cat.jpg")


def test_coco_results_of_ground_truth_score_ap_one(tmp_path: Path, evalkit: Path, coco_gt: COCO):
    files = sorted((evalkit / "coco" / "val2017").glob("*.jpg"))
    assert len(files) == len(coco_gt.imgs)
    path = tmp_path / "results.json"
    info = SourceInfo("val2017", str(evalkit / "coco" / "val2017"), 0, 0, is_image_sequence=True)
    sink = CocoResultsSink(path, info, images=[file.name for file in files])  # COCO's standard category ids
    names = tuple(coco_gt.cats[i]["name"] if i in coco_gt.cats else "N/A" for i in range(max(coco_gt.cats) + 1))
    try:
        for index, file in enumerate(files):
            truth = gt_detections(coco_gt, coco_image_id_from_filename(file))
            dets = Detections(truth.boxes, truth.scores, truth.labels, names, truth.masks)  # mapped by name
            height, width = dets.masks.image_size
            sink.write(result(np.zeros((height, width, 3), np.uint8), dets, index))
        assert not path.exists()  # written at close only
    finally:
        sink.close()
    results = json.loads(path.read_text())
    assert len(results) == len(coco_gt.anns)
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.categories.json", "results.json"]

    detections = quiet(coco_gt.loadRes, str(path))
    for iou_type in ("segm", "bbox"):
        evaluator = COCOeval(coco_gt, detections, iou_type)
        quiet(evaluator.evaluate)
        quiet(evaluator.accumulate)
        quiet(evaluator.summarize)
        assert evaluator.stats[0] == pytest.approx(1.0), iou_type  # AP@[.5:.95]
        assert evaluator.stats[1] == pytest.approx(1.0), iou_type  # AP@.5
