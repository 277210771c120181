"""CPU int8: static quantization of an ONNX export, calibrated on frames of a video (``streamseg export int8``).

Only the ``rpn`` stage (backbone + FPN + RPN head: nearly all of the convolution work) is quantized, to int8 weights
(per output channel) and uint8 activations in QDQ form, which ONNX Runtime's CPU provider fuses into QLinearConv.
The heads stay float32: they are a small share of the time, and box regression and mask logits are where int8
costs accuracy most directly. Calibration runs the model's own pre-processing (resize, normalize, pad from the
metadata) on frames spread over the given video, so activation ranges come from the user's footage. A fused file is
expanded to standard ops first: the int8 file is for ONNX Runtime on a CPU, not for TensorRT (which has its own
int8 calibration, ``streamseg export trt --precision int8``).

Measured cost: ``bench/bench_onnx.py --int8`` (speed side by side, and box/mask AP on generated scenes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
import torch

from streamseg.errors import ConfigError
from streamseg.export.onnx_export import prepare_output
from streamseg.models.backend import ModelOptions
from streamseg.models.onnx_graph import METADATA_KEY, expand_fused, load_onnx, read_metadata

log = logging.getLogger(__name__)


def calibration_frames(video: str, count: int) -> list:
    """``count`` frames spread evenly over ``video`` (or an image folder)."""
    from streamseg.sources import open_source

    with open_source(str(video)) as source:
        total = source.info.frame_count or 0
        stride = max(1, total // count) if total else 1
    with open_source(str(video), stride=stride, max_frames=count) as source:
        frames = list(source)
    if not frames:
        raise ConfigError(f"no frames to calibrate on in {video}")
    return frames


def quantize_onnx(source: str | Path, output: str | Path, video: str, frames: int = 32) -> Path:
    """Write an int8 (QDQ) copy of ``source`` to ``output``, calibrated on ``frames`` frames of ``video``."""
    from onnx.utils import Extractor
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )

    from streamseg.models.onnx_backend import OnnxMaskRCNN

    source = Path(source)
    if frames < 1:
        raise ConfigError(f"--calibration-frames must be >= 1, got {frames}")
    model = load_onnx(source)
    meta = read_metadata(model, str(source))
    if meta.get("quantization"):
        raise ConfigError(f"{source} is already quantized")
    model = expand_fused(model)
    io = meta["stages"]["rpn"]
    rpn = Extractor(model).extract_model(io["inputs"], io["outputs"])
    transform, _, _ = OnnxMaskRCNN._host_stages(meta, ModelOptions())
    output = prepare_output(output)
    pictures = calibration_frames(video, frames)

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(pictures)

        def get_next(self):
            frame = next(self.remaining, None)
            if frame is None:
                return None
            image = torch.from_numpy(frame.image).permute(2, 0, 1).float().div_(255.0)
            with torch.inference_mode():
                batch, _ = transform([image])
            return {"images": batch.tensors.numpy()}

    staged = output.with_suffix(".rpn-float.onnx")
    quantized = output.with_suffix(".rpn-int8.onnx")
    onnx.save(rpn, str(staged))
    try:
        quantize_static(
            str(staged), str(quantized), Frames(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
        int8_rpn = onnx.load(str(quantized))
    finally:
        staged.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)
    merged = _replace_stage(model, rpn, int8_rpn)
    meta = {**meta, "flavour": "portable", "quantization": {
        "stage": "rpn", "weights": "int8 per channel", "activations": "uint8", "format": "QDQ",
        "calibration": {"video": Path(video).name, "frames": len(pictures), "method": "minmax"}}}
    del merged.metadata_props[:]
    entry = merged.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(merged)
    onnx.save(merged, str(output))
    log.info("%s: rpn stage int8, calibrated on %d frames of %s", output, len(pictures), video)
    return output


def _replace_stage(model: onnx.ModelProto, float_stage: onnx.ModelProto, int8_stage: onnx.ModelProto):
    """``model`` with the nodes of ``float_stage`` swapped for those of ``int8_stage`` (same graph inputs/outputs)."""
    stage_outputs = {o for n in float_stage.graph.node for o in n.output}
    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    graph = merged.graph
    keep = [n for n in graph.node if not stage_outputs.intersection(n.output)]
    used = {name for n in keep for name in n.input}
    initializers = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(list(int8_stage.graph.node) + keep)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    known = {i.name for i in initializers}
    graph.initializer.extend(i for i in int8_stage.graph.initializer if i.name not in known)
    del graph.value_info[:]
    for opset in int8_stage.opset_import:
        if opset.domain not in {o.domain for o in merged.opset_import}:
            merged.opset_import.append(opset)
    return merged

