"""Mask R-CNN backend: reference parity with torchvision, weights discovery and loading, options."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from streamseg.errors import ConfigError, WeightsError
from streamseg.models import ModelOptions, NoDetections, TorchMaskRCNN
from streamseg.models import weights as weights_mod
from streamseg.models.parity import match_detections
from streamseg.models.demo import DEMO_ARCH
from streamseg.models.torch_maskrcnn import (
    ARCHITECTURES,
    paste_masks_subpixel,
    resolve_arch,
    seeded_random_checkpoint,
    to_detections,
)
from streamseg.models.weights import load_checkpoint, save_checkpoint
from streamseg.types import Detections, Frame, InstanceMasks

# Small input and few RoIs keep a CPU forward near a second; parity does not depend on size.
FAST = dict(min_size=320, max_size=576, rpn_post_nms_top_n=100, max_detections=25)


def first_frame(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


@pytest.fixture(scope="module")
def street_frame(videos) -> np.ndarray:
    return first_frame(videos / "traffic" / "car_traffic_small.mp4")


def torchvision_reference(model: torch.nn.Module, image: np.ndarray, class_names) -> Detections:
    """What torchvision's own model returns for the frame, as Detections (full-frame masks at 0.5)."""
    with torch.inference_mode():
        out = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    masks = InstanceMasks.from_dense((out["masks"][:, 0] > 0.5).numpy())
    return Detections(out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy(), class_names, masks)


@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_reference_parity_with_torchvision(arch, street_frame, evalkit):
    backend = TorchMaskRCNN(ModelOptions(score_threshold=0.0, **FAST), seeded_random_checkpoint(ARCHITECTURES[arch], 7))
    coco_image = first_frame(sorted((evalkit / "coco" / "val2017").glob("*.jpg"))[0])
    for image in (street_frame, coco_image):
        [ours] = backend.predict([Frame(image, "f", 0, 0.0)])
        reference = torchvision_reference(backend.model, image, backend.class_names)
        assert len(ours) == len(reference) > 0
        match = match_detections(reference, ours)
        assert match.unmatched == 0
        assert match.box_deviation.max() <= 1.0
        assert match.mask_iou.min() >= 0.99
        # Compact masks: no crop is larger than its (grown) box.
        widths = ours.boxes[:, 2] - ours.boxes[:, 0]
        assert all(c.shape[1] <= w * 1.2 + 3 for c, w in zip(ours.masks.crops, widths))


def test_batch_equals_single_frames(street_frame):
    """Frames of one video share a size, so batching adds no padding and must not change results."""
    backend = TorchMaskRCNN(ModelOptions(score_threshold=0.0, batch_size=2, **FAST),
                            seeded_random_checkpoint(ARCHITECTURES["maskrcnn_resnet50_fpn"], 1))
    other = np.ascontiguousarray(street_frame[::-1])  # same size, different content
    frames = [Frame(street_frame, "a", 0, 0.0), Frame(other, "a", 1, 0.1)]
    batched = backend.predict(frames)
    for frame, dets in zip(frames, batched):
        [single] = backend.predict([frame])
        match = match_detections(single, dets)
        assert match.unmatched == 0 and match.box_deviation.max() <= 1.0
        assert (dets.boxes[:, 2] <= frame.width + 1e-3).all() and (dets.boxes[:, 3] <= frame.height + 1e-3).all()


def test_class_filter_and_thresholds(street_frame):
    checkpoint = seeded_random_checkpoint(ARCHITECTURES["maskrcnn_resnet50_fpn"], 3)
    everything = TorchMaskRCNN(ModelOptions(score_threshold=0.0, **FAST), checkpoint).predict(
        [Frame(street_frame, "f", 0, 0.0)])[0]
    wanted = everything.names[0]
    filtered = TorchMaskRCNN(ModelOptions(score_threshold=0.0, classes=(wanted,), **FAST), checkpoint).predict(
        [Frame(street_frame, "f", 0, 0.0)])[0]
    assert len(filtered) > 0 and set(filtered.names) == {wanted}
    assert len(filtered) == everything.names.count(wanted)
    with pytest.raises(ConfigError, match="knows none of"):
        TorchMaskRCNN(ModelOptions(classes=("unicorn",), **FAST), checkpoint)


def test_user_checkpoint_with_other_num_classes(tmp_path, street_frame):
    arch = ARCHITECTURES["maskrcnn_resnet50_fpn_v2"]
    torch.manual_seed(0)
    model = arch.build(num_classes=4)
    names = ("__background__", "car", "person", "bicycle")
    described = save_checkpoint(tmp_path / "mine.pth", model, arch.name, names)
    bare = tmp_path / "bare.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, bare)  # torchvision's training-reference layout

    backend = TorchMaskRCNN(ModelOptions(weights=str(described), score_threshold=0.0, **FAST))
    assert backend.class_names == names and backend.arch.name == arch.name
    dets = backend.predict([Frame(street_frame, "f", 0, 0.0)])[0]
    assert set(dets.labels.tolist()) <= {1, 2, 3}

    auto = TorchMaskRCNN(ModelOptions(weights=str(bare), **FAST))  # arch told apart by its state-dict keys
    assert auto.arch.name == arch.name and auto.class_names[1:] == ("class_1", "class_2", "class_3")
    with pytest.raises(WeightsError, match="does not fit maskrcnn_resnet50_fpn"):
        TorchMaskRCNN(ModelOptions(weights=str(bare), arch="v1", **FAST))


class NotAWeight:
    pass


def test_weights_errors(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="weights file not found: .*nope.pth"):
        TorchMaskRCNN(ModelOptions(weights=str(tmp_path / "nope.pth")))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_checkpoint(garbage)
    # weights_only=True: a pickle that would construct an arbitrary object is refused, not executed.
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": NotAWeight()}, evil)
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_checkpoint(evil)
    monkeypatch.setenv(weights_mod.ENV_WEIGHTS, str(tmp_path / "from_env.pth"))
    with pytest.raises(WeightsError, match=r"from_env.pth \(from \$STREAMSEG_WEIGHTS\)"):
        TorchMaskRCNN(ModelOptions())


def test_offline_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(weights_mod.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights_mod, "_reachable", lambda url, timeout=3.0: False)  # this machine is offline
    with pytest.raises(WeightsError) as err:
        TorchMaskRCNN(ModelOptions(arch="v2"))
    message = str(err.value)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    assert str(expected) in message and "download.pytorch.org" in message and "\n" not in message


def test_hub_cache_file_is_found(tmp_path, monkeypatch):
    monkeypatch.delenv(weights_mod.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    arch = resolve_arch("v1")
    cached = weights_mod.hub_cache_path(arch.coco_url)
    cached.parent.mkdir(parents=True)
    torch.save(seeded_random_checkpoint(arch, 5).state_dict, cached)  # torchvision's files are bare state dicts
    backend = TorchMaskRCNN(ModelOptions(arch="v1", **FAST))
    assert backend.origin == str(cached) and len(backend.class_names) == 91


@pytest.mark.parametrize("field, value", [("min_size", 0), ("score_threshold", 1.5), ("batch_size", 0),
                                          ("device", "tpu"), ("fp16", True)])
def test_invalid_options(field, value):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        ModelOptions(**{field: value})


def test_unknown_arch():
    with pytest.raises(ConfigError, match="unknown architecture 'resnet9000'"):
        TorchMaskRCNN(ModelOptions(arch="resnet9000", weights="random"))


def test_no_detections_backend_keeps_shapes():
    frame = Frame(np.zeros((36, 64, 3), np.uint8), "f", 0, 0.0)
    [dets] = NoDetections().predict([frame])
    assert len(dets) == 0 and dets.boxes.shape == (0, 4) and dets.masks.image_size == (36, 64)


@pytest.mark.parametrize("box", [(10.3, 20.6, 40.2, 50.9), (3.5, 4.5, 9.75, 30.25), (-5.2, 12.0, 17.7, 70.4)])
def test_subpixel_paste_follows_the_float_box(box):
    """An all-ones grid fills exactly the pixels whose centres lie inside the float box (the grid's value is 0.5
    on the box edge), and a left-half grid stops at the box's float midline: no integer truncation anywhere."""
    height, width = 64, 48
    x0, y0, x1, y1 = box
    centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
    inside_y = (centres_y > y0) & (centres_y < y1)
    full = torch.ones(1, 28, 28)
    left = torch.zeros(1, 28, 28)
    left[:, :, :14] = 1
    for grid, x_end in ((full, x1), (left, (x0 + x1) / 2)):
        masks = paste_masks_subpixel(grid, torch.tensor([box]), (height, width))
        expected = inside_y[:, None] & ((centres_x > x0) & (centres_x < x_end))[None, :]
        np.testing.assert_array_equal(masks.dense(0), expected)


def test_paste_modes_per_architecture():
    """COCO architectures keep torchvision's paste (parity); the demo model pastes exactly where its targets were cut."""
    assert ARCHITECTURES["maskrcnn_resnet50_fpn"].paste_mode == "torchvision"
    assert ARCHITECTURES["maskrcnn_resnet50_fpn_v2"].paste_mode == "torchvision"
    assert ARCHITECTURES[DEMO_ARCH].paste_mode == "subpixel"
    raw = {"boxes": torch.tensor([[2.0, 2.0, 9.0, 9.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1]),
           "masks": torch.ones(1, 1, 28, 28), "paste_shift": [0.0, 0.0]}
    with pytest.raises(ConfigError, match="paste mode"):
        to_detections(raw, (16, 16), ("__background__", "a"), None, 0.0, 0.5, "nearest")
