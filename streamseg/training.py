"""Train the demo Mask R-CNN on generated scenes, on a CPU, reproducibly.

    python -m streamseg.training --out streamseg/models/weights/demo_r10_fpn.pth --iterations 1600

Recipe (the shipped model's; see streamseg/models/weights/MODEL_CARD.md): frames drawn from many short random
scenes (seeds 1000+, never the evaluation seeds), batch 4 at 360x640, AdamW lr 1e-3 weight decay 1e-4, 100
iterations linear warm-up then cosine decay to 5 %, gradient norm clipped at 10, RoI sampling reduced for CPU speed
(128 RoIs per image, 600/300 RPN proposals). A resumable training state is saved next to the output every
``--checkpoint-every`` iterations; the shipped file holds fp16 weights only. The shipped model adds two fine-tuning
phases with ``--init``: ``--mask-loss-weight 2 --seed 1 --lr 3e-4`` for 800 iterations, then
``--mask-loss-weight 3 --seed 2 --lr 3e-4`` for 1400 (the commands are in the model card).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from streamseg.models.demo import DEMO_ARCH, DEMO_WEIGHTS, build_demo_maskrcnn
from streamseg.models.weights import load_checkpoint, save_checkpoint
from streamseg.scenes.training import TRAINING_CONFIG, iter_training_samples

log = logging.getLogger("streamseg.training")

TRAIN_SEED_BASE = 1000
"""Training scenes use seeds from here up; evaluation uses seeds below it."""

# Training-time sampling, cheaper than torchvision's COCO defaults (2000 proposals, 512 RoIs per image).
TRAIN_OVERRIDES = dict(box_batch_size_per_image=128, rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300)


def lr_factor(iteration: int, total: int, warmup: int = 100, floor: float = 0.05) -> float:
    if iteration < warmup:
        return (iteration + 1) / warmup
    progress = min(1.0, (iteration - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def to_targets(batch) -> tuple[list[torch.Tensor], list[dict]]:
    images, targets = [], []
    for image, target in batch:
        images.append(torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0))
        targets.append({
            "boxes": torch.from_numpy(np.asarray(target["boxes"], np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.asarray(target["labels"], np.int64)),
            "masks": torch.from_numpy(np.asarray(target["masks"], np.uint8)),
        })
    return images, targets


def train(out: Path, iterations: int, batch_size: int = 4, lr: float = 1e-3, seed: int = 0,
          minutes: float | None = None, checkpoint_every: int = 100, resume: bool = True,
          init: Path | None = None, mask_loss_weight: float = 1.0) -> Path:
    torch.manual_seed(seed)
    config = TRAINING_CONFIG
    class_names = config.class_names
    model = build_demo_maskrcnn(len(class_names), **TRAIN_OVERRIDES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    state_path = out.with_suffix(".train-state.pt")
    start = 0
    if init is not None:  # fine-tune from shipped weights (the training state is too big to keep in the repo)
        model.load_state_dict(load_checkpoint(init).state_dict)
        log.info("initialized from %s", init)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at iteration %d", state_path, start)
    # The sample stream is a pure function of (seed, start iteration): reproducible, and a resumed run draws fresh
    # scenes instead of re-rendering thousands of frames to skip what it already saw.
    samples = iter_training_samples(TRAIN_SEED_BASE + seed * 1_000_003 + start, 10**12, config)
    model.train()
    began, smoothed = time.monotonic(), None
    iteration = start
    for iteration in range(start, iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(iteration, iterations)
        images, targets = to_targets([next(samples) for _ in range(batch_size)])
        losses = model(images, targets)
        loss = sum(v * (mask_loss_weight if k == "loss_mask" else 1.0) for k, v in losses.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
        if iteration % 20 == 0 or iteration == iterations - 1:
            parts = " ".join(f"{k.replace('loss_', '')}={v.item():.3f}" for k, v in losses.items())
            rate = (iteration + 1 - start) / (time.monotonic() - began)
            log.info("it %d/%d loss %.3f (%s) lr %.2e %.2f it/s", iteration, iterations, smoothed, parts,
                     optimizer.param_groups[0]["lr"], rate)
        last = iteration == iterations - 1
        out_of_time = minutes is not None and time.monotonic() - began > minutes * 60
        if (iteration + 1) % checkpoint_every == 0 or last or out_of_time:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "iteration": iteration + 1, "torch_rng": torch.get_rng_state()}, state_path)
            export_weights(model, out, class_names, iteration + 1, batch_size, lr, seed)
        if out_of_time:
            log.warning("time budget of %.0f min reached at iteration %d; rerun to resume", minutes, iteration + 1)
            break
    return out


def export_weights(model: torch.nn.Module, out: Path, class_names, iterations: int, batch_size: int, lr: float,
                   seed: int) -> None:
    """The shipped file: fp16 weights (they load into fp32 parameters) plus the recipe that made them."""
    half = build_demo_maskrcnn(len(class_names))
    half.load_state_dict(model.state_dict())
    half.half()
    save_checkpoint(out, half, DEMO_ARCH, class_names, iterations=iterations, batch_size=batch_size, lr=lr,
                    seed=seed, train_seed_base=TRAIN_SEED_BASE, recipe="streamseg.training")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEMO_WEIGHTS)
    parser.add_argument("--iterations", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, help="stop (resumably) after this much wall time")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--no-resume", dest="resume", action="store_false")
    parser.add_argument("--init", type=Path, help="start from these weights (fine-tuning) instead of random")
    parser.add_argument("--mask-loss-weight", type=float, default=1.0,
                        help="weight of the mask loss against the RPN and box losses")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    train(args.out, args.iterations, args.batch_size, args.lr, args.seed, args.minutes, args.checkpoint_every,
          args.resume, args.init, args.mask_loss_weight)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
