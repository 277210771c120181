"""The TensorRT plugin's CUDA kernel, built as a PyTorch extension so it can be tested without TensorRT.

``export/trt_plugin/torch_harness.cpp`` binds ``export/trt_plugin/multi_level_roi_align_kernel.cu`` -- the same
file the plugin library links -- and :func:`load_kernel_extension` compiles both with nvcc through
``torch.utils.cpp_extension`` into ``build/trt_plugin_harness/`` (cached; rebuilt when a source changes).

The extension exposes ``multi_level_roi_align(rois, features, output_height, output_width, sampling_ratio,
pool_mode, aligned, featmap_strides, finest_scale, roi_scale_factor)`` with the arguments of
:func:`streamseg.ops.roi_align.multi_level_roi_align_reference`, on CUDA tensors (float32, or float16 features with
float16 or float32 rois).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from streamseg.errors import StreamsegError

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO_ROOT / "export" / "trt_plugin"
KERNEL_SOURCE = PLUGIN_DIR / "multi_level_roi_align_kernel.cu"
HARNESS_SOURCE = PLUGIN_DIR / "torch_harness.cpp"
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "trt_plugin_harness"
COMPILE_ONLY_ARCH = "8.0"
"""Architecture compiled for when no GPU is visible (a compile check only); with a GPU, torch picks its own."""


class KernelBuildError(StreamsegError, RuntimeError):
    """The kernel extension cannot be built here (no nvcc, no CUDA build of torch, or a compile error)."""


def find_cuda_home() -> Path | None:
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else the folder above the real ``bin/nvcc`` on PATH."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(variable)
        if value and (Path(value) / "bin" / "nvcc").exists():
            return Path(value)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    # /usr/local/bin/nvcc is often a link or a wrapper script for /usr/local/cuda-X/bin/nvcc
    for root in (Path(nvcc).resolve().parent.parent, Path("/usr/local/cuda")):
        if (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime_api.h").exists():
            return root
    return None


def load_kernel_extension(build_dir: Path | str | None = None, verbose: bool = False):
    """Compile (once) and import the kernel extension; raises :class:`KernelBuildError` with the reason."""
    import torch

    if not KERNEL_SOURCE.exists() or not HARNESS_SOURCE.exists():
        raise KernelBuildError(f"kernel sources not found under {PLUGIN_DIR} (they ship with the repository, "
                               "not the wheel)")
    if torch.version.cuda is None:
        raise KernelBuildError(f"torch {torch.__version__} is a CPU-only build: the kernel extension needs a CUDA build")
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise KernelBuildError("nvcc not found (set CUDA_HOME or put the CUDA toolkit's bin/ on PATH)")
    os.environ.setdefault("CUDA_HOME", str(cuda_home))
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]  # read once when torch imported it; keep them in step

    build = Path(build_dir) if build_dir is not None else DEFAULT_BUILD_DIR
    build.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = COMPILE_ONLY_ARCH
    try:
        return cpp_extension.load(
            name="streamseg_mlroialign_harness",
            sources=[str(HARNESS_SOURCE), str(KERNEL_SOURCE)],
            extra_include_paths=[str(PLUGIN_DIR)],
            extra_cflags=["-O2"],  # torch picks the C++ standard (C++20 for torch 2.14)
            extra_cuda_cflags=["-O3"],
            build_directory=str(build),
            verbose=verbose,
        )
    except (RuntimeError, OSError, ImportError) as err:  # ninja / compiler failures surface as RuntimeError
        first = (str(err).strip().splitlines() or [""])[0]
        raise KernelBuildError(f"building the kernel extension in {build} failed: {first}") from err
