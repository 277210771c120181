"""Shared fixtures: the third-party media in ../shared/evalkit and small generated clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _evalkit_dir() -> Path:
    return Path(os.environ.get("STREAMSEG_EVALKIT", REPO.parent / "shared" / "evalkit"))


@pytest.fixture(scope="session")
def evalkit() -> Path:
    """Root of the evalkit (real clips, COCO subset, MOT15). Missing evalkit is an error, not a skip:
    the tests exist to run on real third-party media."""
    root = _evalkit_dir()
    if not (root / "MANIFEST.md").is_file():
        raise RuntimeError(f"evalkit not found at {root}; set STREAMSEG_EVALKIT to its path")
    return root


@pytest.fixture(scope="session")
def videos(evalkit: Path) -> Path:
    return evalkit / "videos"
