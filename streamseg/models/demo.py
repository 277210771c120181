"""The offline demo model: torchvision's Mask R-CNN (RPN, MultiScaleRoIAlign over P2-P5, box and mask heads) on a
ResNet-10-FPN trunk small enough to train on generated scenes on a CPU and to ship in the repository.

Why this shape: P2-P5 levels keep the multi-level RoIAlign identical to the R50-FPN models (same op contract for
export); 96 FPN channels and a two-conv mask head cut the per-RoI cost that dominates small inputs on a CPU; a
ResNet-10 (one BasicBlock per stage) stored in fp16 stays under the 20 MB repository budget.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

DEMO_ARCH = "streamseg_demo_r10_fpn"
DEMO_WEIGHTS = Path(__file__).with_name("weights") / "demo_r10_fpn.pth"
FPN_CHANNELS = 96

# Defaults the shipped model was trained and validated with (see streamseg/models/weights/MODEL_CARD.md).
DEMO_DEFAULTS = dict(min_size=360, max_size=640, rpn_post_nms_top_n_test=200, box_detections_per_img=30)


def build_demo_maskrcnn(num_classes: int, **kwargs) -> MaskRCNN:
    """An untrained demo-architecture model; ``kwargs`` go to torchvision's ``MaskRCNN`` (sizes, thresholds)."""
    trunk = ResNet(BasicBlock, [1, 1, 1, 1])
    backbone = BackboneWithFPN(
        trunk,
        return_layers=OrderedDict((f"layer{i}", str(i - 1)) for i in range(1, 5)),
        in_channels_list=[64, 128, 256, 512],
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )
    # Scene objects at 360p are 15-250 px: anchors one octave smaller than torchvision's COCO defaults.
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    options = {**DEMO_DEFAULTS, **kwargs}
    return MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, 512),
        box_predictor=FastRCNNPredictor(512, num_classes),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, [FPN_CHANNELS, FPN_CHANNELS], 1),
        mask_predictor=MaskRCNNPredictor(FPN_CHANNELS, FPN_CHANNELS, num_classes),
        **options,
    )
