"""COCO results JSON for image sources, ready for ``COCO.loadRes`` and ``COCOeval``.

The file is a JSON list with one object per detection::

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float,
     "segmentation": {"size": [H, W], "counts": str}}

``bbox`` is in pixels (top-left corner, width, height; 0.01 px precision) and ``segmentation`` a compressed RLE
over the full image, present only when the model produced masks.

Ids follow the dataset, never the model's label order (a model's label 2 may be "car", COCO's category 2 is
"bicycle"):

- ``image_id``: with an annotation file, the id of the image of the same file name (path relative to the folder,
  else the bare name; images it lacks get no results, with a warning); else the number in the file names when
  every image has a distinct one (``000000000139.jpg`` -> 139); else the 1-based position in sorted order.
- ``category_id``: by class name, the annotation file's category ids, else COCO's standard ids (person 1,
  bicycle 2, car 3, ... 90); names the dataset lacks get ids from 91 up (after its largest id), in the model's
  class order.

Next to ``X.json`` a companion ``X.categories.json`` says what the ids mean: a COCO dataset without annotations,
``{"categories": [{"id", "name"}], "images": [{"id", "file_name", "width", "height"}], "annotations": []}``,
listing every category the model can write and every image written, so ``COCO(companion).loadRes(results)``
works. Both files are kept in memory and written at ``close`` to temporary files that replace the targets
atomically: a reader never sees half a file. With no detections the results file is ``[]`` (valid JSON; note
that pycocotools' ``loadRes`` itself refuses an empty list).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

from streamseg.errors import ConfigError
from streamseg.ops.masks import masks_to_rle
from streamseg.sinks.base import Sink
from streamseg.types import Detections, FrameResult, SourceInfo

__all__ = ["CocoCategories", "CocoResultsSink", "coco_image_id_from_filename", "coco_image_ids", "coco_results",
           "load_coco_annotations"]

log = logging.getLogger(__name__)

NOT_CLASSES = ("__background__", "N/A")
"""Labels that name no class (torchvision's background and COCO's unused ids): never a category."""


class CocoResultsSink(Sink):
    """Collects COCO results of an image sequence: ``images`` names the file of each frame index (relative to its
    folder), ``class_names`` is the model's vocabulary (without background), ``annotations`` an optional COCO
    annotation file whose image and category ids the results use (see the module docstring for the rules)."""

    def __init__(
        self,
        path: str | os.PathLike,
        info: SourceInfo,
        *,
        images: Sequence[str],
        class_names: Sequence[str] = (),
        annotations: str | os.PathLike | None = None,
    ):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"CocoResultsSink: folder {str(self.path.parent)!r} does not exist")
        self.categories_path = self.path.with_suffix(".categories.json")
        self.info = info
        dataset = load_coco_annotations(annotations) if annotations is not None else None
        self.annotations = annotations
        self.images = list(images)
        self.image_ids = coco_image_ids(self.images, dataset)
        self.categories = CocoCategories(class_names, dataset["categories"] if dataset is not None else None)
        self.results: list[dict] = []
        self.written: list[dict] = []
        self.unknown: list[str] = []
        self._closed = False

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise ValueError(f"write to closed CocoResultsSink({self.path})")
        frame, dets = result.frame, result.detections
        image_id, name = self.image_ids[frame.index], self.images[frame.index]
        if image_id is None:
            self.unknown.append(name)
            return
        self.written.append({"id": image_id, "file_name": name, "width": frame.width, "height": frame.height})
        self.results.extend(coco_results(dets, image_id, self.categories.label_ids(dets)))

    def close(self) -> None:
        """Write both files atomically (temporary file in the same folder, then ``os.replace``)."""
        if self._closed:
            return
        self._closed = True
        if self.unknown:
            shown = ", ".join(self.unknown[:3]) + (", ..." if len(self.unknown) > 3 else "")
            log.warning("%s: %d images are not in %s, no COCO results for them: %s", self.info.source_id,
                        len(self.unknown), self.annotations, shown)
        header = {"categories": self.categories.categories, "images": self.written, "annotations": []}
        _write_json_atomically(self.categories_path, header)
        _write_json_atomically(self.path, self.results)


def _write_json_atomically(path: Path, data) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; results are ordinary output files
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CocoCategories:
    """Class name -> COCO category id: the dataset's ids (``categories`` of an annotation file) or, without one,
    COCO's standard ids; other names get ids after the largest known one (at least 90), in the order met, the
    model's ``class_names`` first so that a model's ids do not depend on what a run happened to detect."""

    def __init__(self, class_names: Sequence[str] = (), dataset: Sequence[Mapping] | None = None):
        if dataset is None:
            from streamseg.models.torch_maskrcnn import COCO_CLASS_NAMES  # torchvision's 91 slots: index = id

            self.known = {name: i for i, name in enumerate(COCO_CLASS_NAMES) if name not in NOT_CLASSES}
        else:
            self.known = {c["name"]: c["id"] for c in dataset}
        self.next_id = max([90, *self.known.values()]) + 1
        self.ids: dict[str, int] = {}
        for name in class_names:
            if name not in NOT_CLASSES:
                self.id_of(name)

    def id_of(self, name: str) -> int:
        if name not in self.ids:
            if name in self.known:
                self.ids[name] = self.known[name]
            else:
                self.ids[name], self.next_id = self.next_id, self.next_id + 1
        return self.ids[name]

    def label_ids(self, dets: Detections) -> dict[int, int]:
        """``{model label: category id}`` for the labels in ``dets`` (for :func:`coco_results`, which drops the
        others: :data:`NOT_CLASSES`)."""
        return {int(label): self.id_of(name) for label, name in zip(dets.labels, dets.names) if name not in NOT_CLASSES}

    @property
    def categories(self) -> list[dict]:
        """``[{"id", "name"}]`` of every name seen so far, by id."""
        return sorted(({"id": i, "name": name} for name, i in self.ids.items()), key=lambda c: c["id"])


def coco_results(dets: Detections, image_id: int, category_ids: Mapping[int, int]) -> list[dict]:
    """COCO result records for one image. ``category_ids`` maps model labels to dataset category ids (labels
    missing from it are dropped): a label is an index into the model's vocabulary, not a COCO id."""
    rles = masks_to_rle(dets.masks) if dets.masks is not None else None
    records = []
    for i in range(len(dets)):
        label = int(dets.labels[i])
        if label not in category_ids:
            continue
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        item = {
            "image_id": image_id,
            "category_id": category_ids[label],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(dets.scores[i]), 5),
        }
        if rles is not None:
            item["segmentation"] = rles[i]
        records.append(item)
    return records


def coco_image_id_from_filename(path: str | os.PathLike) -> int:
    """COCO image id from a file named by its number: ``val2017/000000000139.jpg`` -> ``139``."""
    stem = Path(path).stem
    match = re.fullmatch(r"(?:COCO_[a-z]+\d*_)?(\d+)", stem)  # also 2014-style COCO_val2014_000000000139
    if match is None:
        raise ValueError(f"expected a numeric file name such as 000000000139.jpg, got {Path(path).name!r}")
    return int(match.group(1))


def coco_image_ids(names: Sequence[str], dataset: Mapping | None = None) -> list[int | None]:
    """The COCO image id of each file in ``names`` (paths relative to the image folder, in sorted order).

    With ``dataset`` (a COCO annotation file's content): the id of its image of the same ``file_name``, compared
    as relative path, else as bare file name where that is unique on both sides; None for files it lacks.
    Without: the numbers in the names when every name has a distinct one, else the 1-based positions (ids from
    numbers for some files and positions for others could collide)."""
    if dataset is not None:
        files = [(PurePosixPath(image["file_name"]), image["id"]) for image in dataset["images"]]
        by_path = {file.as_posix(): image_id for file, image_id in files}
        by_name = {file.name: image_id for file, image_id in files}
        theirs, ours = Counter(file.name for file, _ in files), Counter(PurePosixPath(n).name for n in names)

        def lookup(name: str) -> int | None:
            if name in by_path:
                return by_path[name]
            bare = PurePosixPath(name).name
            return by_name[bare] if theirs[bare] == 1 and ours[bare] == 1 else None

        return [lookup(name) for name in names]
    try:
        numbers = [coco_image_id_from_filename(n) for n in names]
    except ValueError:
        numbers = []
    if len(set(numbers)) == len(names):
        return numbers
    return list(range(1, len(names) + 1))


def load_coco_annotations(path: str | os.PathLike) -> dict:
    """A COCO annotation file's content, read by pycocotools; ConfigError naming the file when it is missing or
    lacks what the ids come from (images with id and file_name, categories with id and name)."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            dataset = COCO(str(path)).dataset
    except FileNotFoundError:
        raise ConfigError(f"COCO annotation file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read COCO annotations ({err.strerror or err})") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{path}: not JSON ({err})") from None
    except (AssertionError, KeyError, TypeError) as err:  # pycocotools' own checks and indexing
        raise ConfigError(f"{path}: not a COCO annotation file ({type(err).__name__}: {err})") from None
    if not (_all_have(dataset.get("images"), id=int, file_name=str)
            and _all_have(dataset.get("categories"), id=int, name=str)):
        raise ConfigError(f"{path}: not a COCO annotation file: needs 'images' with id and file_name and "
                          "'categories' with id and name")
    return dataset


def _all_have(items, **types) -> bool:
    return isinstance(items, list) and all(
        isinstance(item, dict) and all(isinstance(item.get(k), t) for k, t in types.items()) for item in items)
