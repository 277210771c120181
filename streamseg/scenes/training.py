"""Independent training pictures for an instance segmentation model, drawn from many short random scenes."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from streamseg.scenes.generator import Scene, SceneConfig

__all__ = ["iter_training_samples", "TRAINING_CONFIG"]

TRAINING_CONFIG = SceneConfig(frames=150, max_objects=10, spawn_rate=1.5)
"""Busier than the default scene: more instances per picture, more occlusion."""


def iter_training_samples(
    seed: int, n: int, config: SceneConfig | None = None, *, samples_per_scene: int = 6
) -> Iterator[tuple[np.ndarray, dict]]:
    """Yield ``n`` pairs ``(image, target)`` for torchvision's Mask R-CNN (convert with ``torch.from_numpy``).

    ``image`` is ``(H, W, 3)`` uint8 RGB; ``target`` holds ``boxes`` float32 ``(N, 4)`` ``x1, y1, x2, y2`` pixels,
    ``labels`` int64 ``(N,)`` (1-based, 0 is the background: ``config.class_names``) and ``masks`` uint8
    ``(N, H, W)`` in {0, 1}; ``N`` may be 0. Pictures come ``samples_per_scene`` at a time from random frames of
    scenes whose seeds derive from ``seed`` (``config.seed`` is ignored), so a different ``seed`` gives a
    different, equally reproducible stream. Building a scene costs about as much as 20 frames: a few pictures
    per scene keep the stream varied and fast.
    """
    base = config if config is not None else TRAINING_CONFIG
    if n < 0:
        raise ValueError(f"n: expected >= 0, got {n}")
    if samples_per_scene < 1:
        raise ValueError(f"samples_per_scene: expected >= 1, got {samples_per_scene}")
    if base.frames < 1:
        raise ValueError(f"config.frames: expected >= 1 to draw pictures from, got {base.frames}")
    height, width = base.height, base.width
    produced = 0
    scene_number = 0
    while produced < n:
        sequence = np.random.SeedSequence([int(seed), scene_number])
        scene_seed, pick_seed = (int(v) for v in sequence.generate_state(2))
        scene = Scene(dataclasses.replace(base, seed=scene_seed))
        picks = np.random.default_rng(pick_seed).choice(base.frames, min(samples_per_scene, base.frames), replace=False)
        for index in np.sort(picks):
            if produced >= n:
                return
            frame = scene.render(int(index))
            count = len(frame.instances)
            masks = np.zeros((count, height, width), np.uint8)
            for k, inst in enumerate(frame.instances):
                x0, y0 = inst.origin
                masks[k, y0 : y0 + inst.mask.shape[0], x0 : x0 + inst.mask.shape[1]] = inst.mask
            target = {
                "boxes": np.array([i.box for i in frame.instances], np.float32).reshape(count, 4),
                "labels": np.array([i.label for i in frame.instances], np.int64),
                "masks": masks,
            }
            yield frame.image, target
            produced += 1
        scene_number += 1
