"""Mask R-CNN in ONNX Runtime behind the :class:`~streamseg.models.backend.Backend` interface.

Runs a file written by the ``export onnx`` command (``export/onnx_export.py``), or a checkpoint's cached export
(:mod:`streamseg.models.onnx_cache`): the dense stages (backbone + FPN + RPN head, box head, mask head, each with its
multi-level RoIAlign) in ONNX Runtime, and between them the parts
that ONNX Runtime's CPU kernels do slowly (NonMaxSuppression over thousands of proposals: ~6 s per 800 px frame;
the mask-paste Loop: ~3 s) with torchvision's own C++ ops and streamseg's compact paste, which are the same code
the torch backend runs, so both backends post-process identically. Pre-processing is torchvision's
GeneralizedRCNNTransform, built from the normalization and size policy in the file's metadata.

The torch steps between the graphs run on one torch thread. They are ~100 small ops per frame (~25 ms in all);
with two OpenMP threads, each op waits at a barrier for the second thread, and when another process holds that
core (the pipeline's decoder and encoder, other jobs) the wait is a scheduler time slice: measured here, the
proposals step went from 0.03 to 0.2-0.6 s/frame under load with two threads, and stayed at 0.03 with one.
ONNX Runtime's own pool hands work out dynamically and keeps both cores.

Providers are tried in the order TensorRT, CUDA, CPU for ``device="cuda"`` and CPU alone for ``device="cpu"``; one
log line says which one runs. A GPU device that no GPU provider can serve is an error, as in the torch backend.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from streamseg.errors import ConfigError
from streamseg.models.backend import ModelOptions, class_filter, no_cuda_device
from streamseg.models.torch_maskrcnn import to_detections
from streamseg.types import Detections, Frame

log = logging.getLogger(__name__)

PROVIDERS_GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _require_onnxruntime():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise ConfigError("the onnx backend needs onnx and onnxruntime: pip install 'streamseg[onnx]'") from err
    return onnxruntime


def default_session_options(threads: int | None = None):
    """Session options tuned for this pipeline on a CPU.

    - intra-op threads = torch's thread count (the host stages use torch too; more threads than cores thrash);
    - one inter-op thread, sequential execution: the stages are chains, parallel branches buy nothing;
    - ORT_ENABLE_ALL: conv+activation fusion and the NCHWc layout transformer, the main CPU win over eager torch;
    - CPU memory arena and memory patterns on: input sizes repeat frame after frame, so buffers are reused;
    - no spinning of idle worker threads: the decoder and encoder threads of the pipeline share these cores.
    """
    ort = _require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # ORT's own warnings (e.g. unused CUDA libraries on a CPU box) stay out of the logs
    return so


def providers_for(device: str) -> list:
    ort = _require_onnxruntime()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    index = int(device.split(":")[1]) if ":" in device else 0
    available = set(ort.get_available_providers())
    chosen = []
    for name in PROVIDERS_GPU:
        if name in available:
            chosen.append((name, {"device_id": index}) if name != "CPUExecutionProvider" else name)
    return chosen


def _probe_model() -> bytes:
    """A one-node graph: the cheapest session that still loads the providers asked for."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def starting_providers(device: str) -> list:
    """The providers for ``device`` that do start here; for a GPU device, the torch backend's one-line error when no
    GPU provider does.

    onnxruntime-gpu lists its CUDA and TensorRT providers whether or not a GPU and their libraries are there; a
    session that cannot load them prints ~30 lines of errors and runs on the CPU. So a one-node session tries them
    first, with ORT's logging and its fallback printout silenced, and the model's sessions get only the providers
    that started."""
    ort = _require_onnxruntime()
    chosen = providers_for(device)
    if device == "cpu":
        return chosen
    options = ort.SessionOptions()
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)  # failed provider libraries log errors (severity 3) on ORT's default logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints its "EP Error ... Falling back" box
            started = set(ort.InferenceSession(_probe_model(), options, providers=chosen).get_providers())
    finally:
        ort.set_default_logger_severity(2)  # ORT's default (there is no getter to restore from)
    working = [p for p in chosen if (p[0] if isinstance(p, tuple) else p) in started]
    if working == ["CPUExecutionProvider"]:
        if not torch.cuda.is_available():
            raise no_cuda_device(device)
        raise ConfigError(f"model.device: {device!r} requested but ONNX Runtime {ort.__version__} could not start "
                          "its CUDA provider (it needs the CUDA and cuDNN versions it was built for)")
    return working


class OnnxMaskRCNN:
    """ONNX Runtime Mask R-CNN.

    ``options.weights`` names a ``.onnx`` file from the ``export onnx`` command; anything else (a checkpoint, None
    for the demo model, ``random:SEED``) runs from its export with ``flavour`` in the ONNX cache, made on first use.

    >>> backend = OnnxMaskRCNN(ModelOptions(weights="model.onnx"))  # doctest: +SKIP
    >>> [dets] = backend.predict([frame])  # doctest: +SKIP
    """

    name = "onnx"

    def __init__(self, options: ModelOptions = ModelOptions(), flavour: str = "portable",
                 session_options=None):
        ort = _require_onnxruntime()
        from onnx.utils import Extractor

        from streamseg.models.onnx_cache import load_or_export
        from streamseg.models.onnx_graph import expand_fused, load_onnx, read_metadata

        if options.fp16:
            raise ConfigError("model.fp16: the onnx backend runs the exported float32 graph (export for fp16 engines "
                              "goes through TensorRT)")
        self.options = options
        providers = starting_providers(options.device)  # before the export: a missing GPU fails in a second
        if options.weights and options.weights.endswith(".onnx"):
            path = Path(options.weights)
            model, source = load_onnx(path), "file"
        else:
            model, path, exported = load_or_export(options, flavour)
            source = "exported now into the cache" if exported else "cached export"
        meta = read_metadata(model, str(path))
        # a cached export goes by the weights as given: copies of a checkpoint share one export
        self.origin = str(path) if source == "file" else f"{options.weights or meta['weights']} ({source} {path})"
        self.meta = meta
        self.class_names = tuple(meta["class_names"])
        self.flavour = meta["flavour"]
        self.paste_shift = float(meta["paste_shift"])
        self.paste_mode = meta.get("paste_mode", "torchvision")  # files exported before subpixel paste existed
        self.keep_labels = class_filter(options.classes, self.class_names, self.origin)
        self.transform, self.rpn, self.heads = self._host_stages(meta, options)

        so = session_options or default_session_options()
        # ORT has no kernel for the fused op: expand it into standard ops (see streamseg.models.onnx_graph for why)
        extractor = Extractor(expand_fused(model))
        self.sessions = {}
        for stage, io in meta["stages"].items():
            sub = extractor.extract_model(io["inputs"], io["outputs"])
            sub.ir_version = model.ir_version
            self.sessions[stage] = ort.InferenceSession(sub.SerializeToString(), so, providers=providers)
        running = self.sessions["rpn"].get_providers()[0]
        log.info("onnx backend: %s on %s (%s RoIAlign), %s %s", meta["arch"], running, self.flavour, source, path)
        if options.device != "cpu" and running == "CPUExecutionProvider":  # the probe's fallback tried cuda:0 only
            raise no_cuda_device(options.device)
        self.provider = running
        self.rpn_outputs = meta["stages"]["rpn"]["outputs"]
        self.stage_seconds: dict[str, float] = {}
        """Wall time spent per stage since construction (graphs and host steps), for benchmarks."""

    def _timed(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - start
        return now

    @staticmethod
    def _host_stages(meta: dict, options: ModelOptions):
        """torchvision's own pre/post-processing modules, rebuilt from the metadata (no weights in them)."""
        size, norm, rpn_m, heads_m = meta["size"], meta["normalization"], meta["rpn"], meta["roi_heads"]
        transform = GeneralizedRCNNTransform(
            options.min_size or size["min_size"], options.max_size or size["max_size"], norm["mean"], norm["std"],
            size_divisible=size["size_divisible"],
        )
        anchors = AnchorGenerator(tuple(map(tuple, meta["anchors"]["sizes"])),
                                  tuple(map(tuple, meta["anchors"]["aspect_ratios"])))
        post = options.rpn_post_nms_top_n or rpn_m["post_nms_top_n"]
        rpn = RegionProposalNetwork(
            anchors, nn.Identity(), 0.7, 0.3, 256, 0.5,
            pre_nms_top_n={"training": rpn_m["pre_nms_top_n"], "testing": rpn_m["pre_nms_top_n"]},
            post_nms_top_n={"training": post, "testing": post},
            nms_thresh=rpn_m["nms_thresh"], score_thresh=rpn_m["score_thresh"],
        )
        heads = RoIHeads(
            None, None, None, 0.5, 0.5, 512, 0.25, tuple(heads_m["box_weights"]),
            options.score_threshold, heads_m["nms_thresh"], options.max_detections or heads_m["detections_per_img"],
        )
        return transform.eval(), rpn.eval(), heads.eval()

    @torch.inference_mode()
    def predict(self, frames: Sequence[Frame]) -> list[Detections]:
        if not frames:
            return []
        with _one_torch_thread():  # see the module docstring
            images = [torch.from_numpy(f.image).permute(2, 0, 1).float().div_(255.0) for f in frames]
            raw = self._forward(images)
            start = time.perf_counter()
            detections = [
                to_detections(r, (f.height, f.width), self.class_names, self.keep_labels, self.paste_shift,
                              self.options.mask_threshold, self.paste_mode)
                for r, f in zip(raw, frames)
            ]
            self._timed("paste", start)
        return detections

    def _forward(self, images: list[torch.Tensor]) -> list[dict]:
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        t = time.perf_counter()
        image_list, _ = self.transform(images)
        sizes = image_list.image_sizes
        t = self._timed("preprocess", t)
        outputs = self.sessions["rpn"].run(self.rpn_outputs, {"images": image_list.tensors.numpy()})
        t = self._timed("graph_rpn", t)
        features = dict(zip(self.rpn_outputs[:4], outputs[:4]))
        levels = (len(outputs) - 4) // 2
        objectness = [torch.from_numpy(o) for o in outputs[4 : 4 + levels]]
        deltas = [torch.from_numpy(d) for d in outputs[4 + levels :]]
        proposals = self._proposals(image_list, objectness, deltas)
        t = self._timed("proposals", t)

        rois = _to_rois(proposals)
        if len(rois):
            class_logits, box_regression = self.sessions["box"].run(None, {**features, "box_rois": rois.numpy()})
            t = self._timed("graph_box", t)
            boxes, scores, labels = self.heads.postprocess_detections(
                torch.from_numpy(class_logits), torch.from_numpy(box_regression), proposals, sizes)
            t = self._timed("detections", t)
        else:
            boxes = [torch.zeros((0, 4)) for _ in images]
            scores = [torch.zeros(0) for _ in images]
            labels = [torch.zeros(0, dtype=torch.int64) for _ in images]

        mask_rois = _to_rois(boxes)
        m = self.meta["roi_align"]["mask"]["output_height"] * 2
        if len(mask_rois):
            (mask_logits,) = self.sessions["mask"].run(None, {**features, "mask_rois": mask_rois.numpy()})
            t = self._timed("graph_mask", t)
            probs = maskrcnn_inference(torch.from_numpy(mask_logits), labels)
        else:
            probs = [torch.zeros((len(b), 1, m, m)) for b in boxes]

        results = []
        for b, s, lab, p, input_size, original in zip(boxes, scores, labels, probs, sizes, original_sizes):
            results.append({
                "boxes": resize_boxes(b, input_size, original), "scores": s, "labels": lab, "masks": p,
                "paste_shift": [self.paste_shift * o / i for o, i in zip(original[::-1], input_size[::-1])],
            })
        return results

    def _proposals(self, image_list, objectness: list[torch.Tensor], deltas: list[torch.Tensor]) -> list[torch.Tensor]:
        """torchvision's RegionProposalNetwork.forward after its head: anchors, decode, per-level top-n, NMS."""
        rpn = self.rpn
        anchors = rpn.anchor_generator(image_list, objectness)  # only the maps' sizes are read
        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(flat_deltas, anchors).view(num_images, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, flat_objectness, image_list.image_sizes, num_anchors_per_level)
        return boxes

    def close(self) -> None:
        self.sessions = {}


@contextlib.contextmanager
def _one_torch_thread():
    """torch's intra-op threads at 1 inside the block (the setting is per calling thread under OpenMP)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _to_rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image ``[K_i, 4]`` boxes -> ``[sum K_i, 5]`` rows ``(batch_index, x1, y1, x2, y2)``."""
    rows = [torch.cat([torch.full((len(b), 1), float(i)), b.float()], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows) if rows else torch.zeros((0, 5))

