"""Shared fixtures: the third-party media in ../shared/evalkit and small generated clips."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Tests that run the default (auto) backend export the model into a cache of this test session, not into the
    user's ~/.cache (subprocesses inherit the variable). A cache given from outside is kept."""
    if "STREAMSEG_ONNX_CACHE" not in os.environ:
        os.environ["STREAMSEG_ONNX_CACHE"] = _SESSION_CACHE[0] = tempfile.mkdtemp(prefix="streamseg-test-onnx-")


def pytest_unconfigure(config):
    if _SESSION_CACHE[0] is not None:
        shutil.rmtree(_SESSION_CACHE[0], ignore_errors=True)


_SESSION_CACHE: list[str | None] = [None]


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
