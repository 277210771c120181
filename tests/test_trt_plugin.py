"""The TensorRT MultiLevelRoIAlign plugin, its kernel and the engine tooling around it.

What runs where:
- everywhere: the CPU reference's semantics against torchvision's MultiScaleRoIAlign (level boundaries, empty
  RoIs, aligned on/off, sampling ratio 0 and 2), engine-profile arithmetic, and the one-line errors where TensorRT
  or a GPU is missing;
- where g++ and CUDA's runtime headers are (the toolkit or torch's nvidia wheel): the plugin's C++ files, the logic
  test and the stub library compile with -Werror against TensorRT's real headers, 10.16 and 11.1, from
  ../shared/third_party (override with $STREAMSEG_THIRD_PARTY);
- where nvcc is installed as well: the logic test links against tests/trt_stub/nvinfer_stub.cpp (the one libnvinfer
  function the plugin calls) and runs, README's CMake build commands build both libraries against a header-only
  TENSORRT_ROOT of each version, the kernel compiles for every architecture the CMake build targets, and the
  PyTorch harness (the same .cu file) builds;
- where a CUDA GPU is visible: the kernel against the reference (fp32 <= 1e-4, fp16 <= 1e-2) on randomized RoIs
  with level-boundary sizes and empty sets, and bench/gpu_check.py's kernel rows (1,000 RoIs, its time against
  torchvision's per-level roi_align); everywhere else `bench/gpu_check.py --dry-run` walks its CPU steps;
- where TensorRT, a GPU and the built plugin are all present: engines built from a fused export and run by the
  tensorrt backend, compared with ONNX Runtime.
Everything else skips, saying which of these is missing.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from streamseg.export import trt_build
from streamseg.models import trt_runtime
from streamseg.export.trt_kernel import KERNEL_SOURCE, PLUGIN_DIR, find_cuda_home, load_kernel_extension
from streamseg.ops.roi_align import level_of, multi_level_roi_align_reference

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "trt_test"
STRIDES = (4.0, 8.0, 16.0, 32.0)

try:
    import tensorrt  # noqa: F401
    HAVE_TRT, TRT_REASON = True, ""
except (ImportError, OSError) as err:
    HAVE_TRT, TRT_REASON = False, f"TensorRT not installed ({type(err).__name__}); see ../shared/GUIDE.md section 1"
HAVE_GPU = torch.cuda.is_available()
GPU_REASON = "no CUDA GPU visible (torch.cuda.is_available() is False)"
CUDA_HOME = find_cuda_home()
NVCC_REASON = "nvcc not found (no CUDA toolkit)"
HARNESS_MISSING = (NVCC_REASON if CUDA_HOME is None else
                   "ninja not found (torch.utils.cpp_extension builds with it)" if shutil.which("ninja") is None else None)


def pyramid(batch=2, channels=8, size=(256, 320), dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return [torch.randn(batch, channels, h // int(s), w // int(s), generator=g).to(device=device, dtype=dtype)
            for s in STRIDES]


def boundary_rois(batch=2, image=(256, 320)):
    """Squares whose sqrt(area) sits exactly on and just either side of every level boundary (112, 224, 448),
    tiny and huge boxes, boxes crossing the image border, and one of zero width."""
    rows = []
    for side in (112.0, 224.0, 448.0):
        for s in (side * (1 - 1e-4), side, side * (1 + 1e-4), side - 0.5, side + 0.5):
            rows.append((len(rows) % batch, 3.0, 5.0, 3.0 + s, 5.0 + s))
    rows += [(0, 10, 10, 12, 11), (1, 0, 0, 1000, 900), (0, -20, -10, 40, 30), (1, 300, 200, 340, 260),
             (0, 50, 50, 50, 80)]
    return torch.tensor(rows, dtype=torch.float32)


def random_rois(n, batch=2, image=(256, 320), seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = image
    # log-uniform sizes from 2 px to twice the image, so every level gets RoIs
    size = torch.exp(torch.empty(n, 2).uniform_(math.log(2), math.log(2 * max(h, w)), generator=g))
    x1 = torch.empty(n).uniform_(-16, w, generator=g)
    y1 = torch.empty(n).uniform_(-16, h, generator=g)
    b = torch.randint(0, batch, (n,), generator=g).float()
    return torch.stack([b, x1, y1, x1 + size[:, 0], y1 + size[:, 1]], dim=1)


def torchvision_pooler(rois, features, output_size, sampling_ratio, image=(256, 320)):
    """torchvision's own MultiScaleRoIAlign: the ground truth the op contract is defined by (aligned=False)."""
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, sampling_ratio)
    batch = features[0].shape[0]
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(batch)]
    order = torch.cat([torch.nonzero(rois[:, 0] == i).squeeze(1) for i in range(batch)])
    out = pooler({str(i): f for i, f in enumerate(features)}, boxes, [image] * batch)
    result = torch.empty_like(out)
    result[order] = out  # torchvision returns RoIs grouped by image
    return result


# ------------------------------------------------------------------------------------------- reference semantics


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [7, 14])
def test_reference_equals_torchvision_multiscale_roi_align(sampling_ratio, output_size):
    features = pyramid()
    rois = torch.cat([boundary_rois(), random_rois(200)])
    expected = torchvision_pooler(rois, features, output_size, sampling_ratio)
    got = multi_level_roi_align_reference(rois, features, output_size, output_size, sampling_ratio)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_reference_level_boundaries_follow_torchvision_epsilon():
    """sqrt(area) exactly 112 / 224 / 448 is the first box of the coarser level (epsilon outside the log2); just
    below stays on the finer one. mmdeploy's formula (epsilon inside) would disagree within ~1e-4 px of these."""
    rois = boundary_rois()
    levels = level_of(rois, 4).tolist()
    # per side: 1 - 1e-4, exact, 1 + 1e-4, -0.5, +0.5
    assert levels[:15] == [0, 1, 1, 0, 1, 1, 2, 2, 1, 2, 2, 3, 3, 2, 3]
    mapper = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    feats = {str(i): f for i, f in enumerate(pyramid(batch=1))}
    mapper(feats, [rois[:, 1:]], [(256, 320)])  # sets up torchvision's LevelMapper
    assert mapper.map_levels([rois[:, 1:]]).tolist() == levels


def test_reference_empty_rois_keep_shape_and_dtype():
    features = pyramid()
    out = multi_level_roi_align_reference(torch.zeros((0, 5)), features, 7, 7, 2)
    assert out.shape == (0, 8, 7, 7) and out.dtype == torch.float32


@pytest.mark.parametrize("aligned", [0, 1])
def test_reference_aligned_is_roi_align_aligned(aligned):
    from torchvision.ops import roi_align

    features = pyramid()
    rois = random_rois(64)
    got = multi_level_roi_align_reference(rois, features, 7, 7, 0, aligned=aligned)
    levels = level_of(rois, 4)
    for level in range(4):
        index = torch.nonzero(levels == level).squeeze(1)
        expected = roi_align(features[level], rois[index], 7, 1 / STRIDES[level], 0, aligned=bool(aligned))
        torch.testing.assert_close(got[index], expected, rtol=0, atol=0)
    other = multi_level_roi_align_reference(rois, features, 7, 7, 0, aligned=1 - aligned)
    assert not torch.allclose(got, other)  # the flag does change the result


# ------------------------------------------------------------------------------------------- kernel compiles


@pytest.mark.skipif(CUDA_HOME is None, reason=NVCC_REASON)
def test_kernel_compiles_for_every_cmake_architecture(tmp_path):
    """nvcc -c of the plugin's kernel for the SASS targets of export/trt_plugin/CMakeLists.txt (+ Hopper PTX)."""
    cmake = (PLUGIN_DIR / "CMakeLists.txt").read_text()
    assert "75-real 80-real 86-real 89-real 90" in cmake
    arch = ["-gencode=arch=compute_75,code=sm_75", "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_86,code=sm_86", "-gencode=arch=compute_89,code=sm_89",
            "-gencode=arch=compute_90,code=[sm_90,compute_90]"]
    out = tmp_path / "kernel.o"
    cmd = [str(CUDA_HOME / "bin" / "nvcc"), "-std=c++17", "-O3", "-Xcompiler", "-Wall", *arch, "-c",
           str(KERNEL_SOURCE), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    symbols = subprocess.run(["nm", "-C", str(out)], capture_output=True, text=True).stdout
    assert "streamseg::multiLevelRoIAlignForward" in symbols and "streamseg::validateAttributes" in symbols


@pytest.mark.skipif(HARNESS_MISSING is not None, reason=str(HARNESS_MISSING))
def test_torch_harness_builds_from_the_plugin_kernel():
    """The harness links the plugin's own .cu (cached build under build/trt_plugin_harness, ~45 s the first time)."""
    module = load_kernel_extension()
    assert callable(module.multi_level_roi_align)
    if not HAVE_GPU:
        with pytest.raises(RuntimeError, match="CUDA tensor"):
            module.multi_level_roi_align(torch.zeros((1, 5)), pyramid(), 7, 7, 2, 1, 0, list(STRIDES), 56, 1.0)


# ------------------------------------------------------------------------------------------- real TensorRT headers
# TensorRT's public headers (../shared/third_party, unmodified) are the API the plugin compiles against; no TensorRT
# library comes with them, so tests/trt_stub/nvinfer_stub.cpp stands in for the one library function the plugin
# calls (getPluginRegistry). Our own files build with warnings as errors; the headers are -isystem (their
# deprecation warnings are not ours).

THIRD_PARTY = Path(os.environ.get("STREAMSEG_THIRD_PARTY", REPO.parent / "shared" / "third_party"))
TRT_HEADER_VERSIONS = ("10.16", "11.1")
STUB = Path(__file__).resolve().parent / "trt_stub"
OUR_WARNINGS = ["-Wall", "-Wextra", "-Werror"]


def _cuda_include() -> Path | None:
    """cuda_runtime_api.h: the CUDA toolkit's, else the nvidia CUDA runtime wheel's (a CUDA torch brings it)."""
    candidates = [CUDA_HOME / "include"] if CUDA_HOME is not None else []
    for base in map(Path, sys.path):
        candidates += sorted(base.glob("nvidia/*/include"))
    return next((c for c in candidates if (c / "cuda_runtime_api.h").is_file()), None)


CUDA_INCLUDE = _cuda_include()
CXX_MISSING = ("g++ not installed" if shutil.which("g++") is None else
               "CUDA runtime headers (cuda_runtime_api.h) not found: no CUDA toolkit, no nvidia CUDA runtime wheel"
               if CUDA_INCLUDE is None else None)


def _trt_include(version: str) -> Path:
    include = THIRD_PARTY / f"tensorrt-{version}" / "include"
    if not (include / "NvInferRuntime.h").is_file():
        pytest.fail(f"TensorRT {version} headers not found at {include}; set STREAMSEG_THIRD_PARTY to the folder "
                    "holding tensorrt-{10.16,11.1}/include")
    return include


def _run(cmd, timeout=300, **kwargs):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-3000:]}{result.stderr[-5000:]}"
    return result


OUR_SOURCES = {"plugin": (PLUGIN_DIR / "multi_level_roi_align_plugin.cpp", ()),
               "registration": (PLUGIN_DIR / "plugin_registration.cpp", ()),
               "registration_autoreg": (PLUGIN_DIR / "plugin_registration.cpp", ("-DSTREAMSEG_TRT_AUTO_REGISTER=1",)),
               "logic_test": (STUB / "plugin_logic_test.cpp", ()),
               "nvinfer_stub": (STUB / "nvinfer_stub.cpp", ())}


@functools.cache
def _object(version: str, name: str, out: Path) -> Path:
    """One C++ file of ours compiled (-O2, so flow-dependent warnings count too) against one header version."""
    source, defines = OUR_SOURCES[name]
    out.mkdir(parents=True, exist_ok=True)
    _run(["g++", "-std=c++17", "-O2", "-fPIC", *OUR_WARNINGS, f"-I{PLUGIN_DIR}", "-isystem", _trt_include(version),
          "-isystem", CUDA_INCLUDE, *defines, "-c", source, "-o", out / f"{name}.o"])
    return out / f"{name}.o"


@pytest.fixture(scope="module")
def headers_build(tmp_path_factory) -> Path:
    """One folder per header version for this module's builds, so each file is compiled once per version."""
    return tmp_path_factory.mktemp("trt_headers")


def _stub_tensorrt_root(version: str, base: Path) -> Path:
    """A header-only TensorRT install: include/ links to the real headers, lib/libnvinfer.so is the stub."""
    root = base / version
    (root / "lib").mkdir(parents=True, exist_ok=True)
    if not (root / "include").exists():
        (root / "include").symlink_to(_trt_include(version), target_is_directory=True)
    stub = _object(version, "nvinfer_stub", root / "obj")
    _run(["g++", "-shared", stub, "-o", root / "lib" / "libnvinfer.so"])
    return root


@pytest.mark.skipif(CXX_MISSING is not None, reason=str(CXX_MISSING))
@pytest.mark.parametrize("version", TRT_HEADER_VERSIONS)
def test_plugin_sources_compile_against_real_tensorrt_headers(version, headers_build):
    """The plugin, both registration variants, the logic test and the stub, -Werror: a method whose signature no
    longer matches TensorRT's IPluginV3 API fails here ("marked 'override', but does not override")."""
    for name in OUR_SOURCES:
        assert _object(version, name, headers_build / version / "obj").stat().st_size > 0


@pytest.fixture(scope="module")
def kernel_object(tmp_path_factory):
    if CUDA_HOME is None:
        pytest.skip(NVCC_REASON)
    out = tmp_path_factory.mktemp("kernel") / "kernel.o"
    _run([CUDA_HOME / "bin" / "nvcc", "-std=c++17", "-O3", "-arch=sm_80", "-Xcompiler", "-fPIC,-Wall,-Wextra,-Werror",
          f"-I{PLUGIN_DIR}", "-c", KERNEL_SOURCE, "-o", out])
    return out


@pytest.mark.skipif(CXX_MISSING is not None, reason=str(CXX_MISSING))
@pytest.mark.parametrize("version", TRT_HEADER_VERSIONS)
def test_plugin_logic_against_real_tensorrt_headers(version, kernel_object, headers_build):
    """The IPluginV3 plugin's attribute parsing (INT64/FLOAT64 fields as an ONNX parser may send them, unknown
    fields ignored), validation, output types and shapes (through TensorRT's own IExprBuilder / IDimensionExpr
    wrappers), format combinations (fp32 rois only), zero-RoI enqueue, serialization round trip, errors on the
    logger given to setLoggerFinder() and getCreators(), built against the real headers and the stub library."""
    root = _stub_tensorrt_root(version, headers_build)
    objects = {name: _object(version, name, root / "obj") for name in ("logic_test", "plugin", "registration")}
    binary = root / "plugin_logic"
    cuda_lib = CUDA_HOME / "lib64"
    _run(["g++", objects["logic_test"], objects["plugin"], objects["registration"], kernel_object, "-o", binary,
          f"-L{root / 'lib'}", "-lnvinfer", f"-Wl,-rpath,{root / 'lib'}", f"-L{cuda_lib}", "-lcudart",
          f"-Wl,-rpath,{cuda_lib}"])
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: ") and ", 0 failed" in result.stdout


def _readme_build_commands() -> list[str]:
    """The shell block under README "TensorRT engines" / "1. Build the plugin library", comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("**1. Build the plugin library**"):]
    start = section.index("```sh\n") + len("```sh\n")
    block = section[start:section.index("```", start)]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


@pytest.mark.skipif(CXX_MISSING is not None, reason=str(CXX_MISSING))
@pytest.mark.skipif(CUDA_HOME is None, reason=NVCC_REASON)
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
@pytest.mark.parametrize("version", TRT_HEADER_VERSIONS)
def test_readme_cmake_build_against_real_tensorrt_headers(version, headers_build, tmp_path):
    """README's two build commands, as written, with TENSORRT_ROOT a header-only install of the real headers plus
    the stub library and the build folder in tmp; one architecture (every CMake architecture is compiled by
    test_kernel_compiles_for_every_cmake_architecture) and our warnings as errors. Each library exports exactly the
    C entry points TensorRT and applications look for; the loadLibrary one hands out one creator."""
    root = _stub_tensorrt_root(version, headers_build)
    build = tmp_path / "build"
    configure, compile_ = _readme_build_commands()
    assert configure.startswith("cmake -S export/trt_plugin -B build/trt_plugin -DTENSORRT_ROOT=/opt/TensorRT-10.x")
    assert compile_ == "cmake --build build/trt_plugin -j"
    extra = ["-DCMAKE_CUDA_ARCHITECTURES=80", "-DCMAKE_COMPILE_WARNING_AS_ERROR=ON",
             f"-DCMAKE_CUDA_COMPILER={CUDA_HOME / 'bin' / 'nvcc'}"]
    for command in (configure, compile_):
        args = shlex.split(command.replace("build/trt_plugin", str(build)).replace("/opt/TensorRT-10.x", str(root)))
        _run(args + (extra if "-S" in args else []), timeout=600, cwd=REPO)
    for lib in ("libstreamseg_trt_plugin.so", "libstreamseg_trt_plugin_autoreg.so"):
        listing = _run(["nm", "-D", "--defined-only", build / lib]).stdout
        exported = {line.split()[-1] for line in listing.splitlines() if " T " in line}
        exported = {name for name in exported if not name.startswith("_")}
        assert exported == {"getCreators", "setLoggerFinder", "initLibStreamsegPlugins"}, exported
    # the autoreg library would call the stub's null registry on load; the plain one registers nothing on load
    library = ctypes.CDLL(str(build / "libstreamseg_trt_plugin.so"))
    library.getCreators.restype = ctypes.c_void_p
    count = ctypes.c_int32(0)
    assert library.getCreators(ctypes.byref(count)) and count.value == 1


# ------------------------------------------------------------------------------------------- kernel vs reference
# The same checks run the CUDA kernel (where a GPU is visible) and, everywhere the harness builds, the kernel's
# __host__ __device__ per-element code in a CPU loop (multi_level_roi_align_host): same source lines, so the
# arithmetic (level choice, sample grid, bilinear edges, aligned, adaptive sampling, fp16 I/O) is checked even here.


@pytest.fixture(scope="module")
def harness():
    if HARNESS_MISSING is not None:
        pytest.skip(HARNESS_MISSING)
    return load_kernel_extension()


@pytest.fixture(params=["host", "cuda"])
def kernel_on(request, harness):
    """``run(rois, features, size, sampling_ratio, aligned, roi_scale_factor)`` on the CPU loop or the GPU."""
    if request.param == "cuda" and not HAVE_GPU:
        pytest.skip(GPU_REASON)
    device = request.param

    def run(rois, features, size, sampling_ratio, aligned=0, roi_scale_factor=1.0):
        fn = harness.multi_level_roi_align if device == "cuda" else harness.multi_level_roi_align_host
        dev = "cuda" if device == "cuda" else "cpu"
        out = fn(rois.to(dev), [f.to(dev) for f in features], size, size, sampling_ratio, 1, aligned,
                 list(STRIDES), 56, roi_scale_factor)
        return out.cpu()

    run.device = device
    return run


@pytest.mark.parametrize("aligned", [0, 1])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("size", [7, 14])
def test_kernel_matches_reference_fp32(kernel_on, size, sampling_ratio, aligned):
    seeds = range(3) if kernel_on.device == "cuda" else range(1)  # the CPU loop is slow; one seed is enough there
    for seed in seeds:
        features = pyramid(channels=16 if kernel_on.device == "cuda" else 4, seed=seed)
        rois = torch.cat([boundary_rois(), random_rois(500 if kernel_on.device == "cuda" else 150, seed=seed + 10)])
        expected = multi_level_roi_align_reference(rois, features, size, size, sampling_ratio, aligned=aligned)
        got = kernel_on(rois, features, size, sampling_ratio, aligned)
        assert got.shape == expected.shape and got.dtype == torch.float32
        diff = (got - expected).abs().max().item()
        assert diff <= 1e-4, f"{kernel_on.device}: max abs diff {diff} (seed {seed})"


@pytest.mark.parametrize("roi_dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_kernel_matches_reference_fp16(kernel_on, sampling_ratio, roi_dtype):
    """fp16 features (and rois): compared with the fp32 reference on the same fp16-rounded inputs."""
    features = pyramid(channels=16 if kernel_on.device == "cuda" else 4, seed=3)
    rois = torch.cat([boundary_rois(), random_rois(500 if kernel_on.device == "cuda" else 150, seed=4)])
    half_features = [f.half() for f in features]
    rounded_rois = rois.to(roi_dtype)
    expected = multi_level_roi_align_reference(rounded_rois.float(), [f.float() for f in half_features], 7, 7,
                                               sampling_ratio)
    got = kernel_on(rounded_rois, half_features, 7, sampling_ratio)
    assert got.dtype == torch.float16
    diff = (got.float() - expected).abs().max().item()
    assert diff <= 1e-2, f"{kernel_on.device}: max abs diff {diff}"


def test_kernel_empty_rois_and_roi_scale_factor(kernel_on):
    features = pyramid(channels=4)
    for dtype in (torch.float32, torch.float16):
        out = kernel_on(torch.zeros((0, 5), dtype=dtype), [f.to(dtype) for f in features], 7, 2)
        assert out.shape == (0, 4, 7, 7) and out.dtype == dtype
    rois = random_rois(150)
    expected = multi_level_roi_align_reference(rois, features, 7, 7, 2, roi_scale_factor=1.5)
    got = kernel_on(rois, features, 7, 2, roi_scale_factor=1.5)
    assert (got - expected).abs().max().item() <= 1e-4


def test_kernel_rejects_what_the_plugin_rejects(harness):
    rois, features = random_rois(4), pyramid(channels=2)
    with pytest.raises(RuntimeError, match="pool_mode"):
        harness.multi_level_roi_align_host(rois, features, 7, 7, 2, 0, 0, list(STRIDES), 56, 1.0)
    with pytest.raises(RuntimeError, match="featmap_strides"):
        harness.multi_level_roi_align_host(rois, features, 7, 7, 2, 1, 0, [4.0, 8.0, 12.0, 32.0], 56, 1.0)
    with pytest.raises(RuntimeError, match="float16 rois need float16 features"):
        harness.multi_level_roi_align_host(rois.half(), features, 7, 7, 2, 1, 0, list(STRIDES), 56, 1.0)


@pytest.fixture(scope="module")
def kernel(harness):
    if not HAVE_GPU:
        pytest.skip(GPU_REASON)
    return harness


def test_gpu_check_kernel_section(kernel, capsys):
    """bench/gpu_check.py's kernel rows on this GPU: 1,000 RoIs (level boundaries, empty, outside the image) against
    the reference at C=256, and the time against torchvision's per-level roi_align."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    report = gpu_check.Report()
    gpu_check.kernel_section(report, torch.cuda.get_device_name())
    with capsys.disabled():
        print("\n" + report.table())
    assert not report.failed


# ------------------------------------------------------------------------------------------- builder and errors


@pytest.fixture(scope="module")
def fused_onnx():
    from streamseg.export.onnx_export import export_onnx

    path = BUILD / "demo_fused.onnx"
    if not path.is_file():
        export_onnx(path, flavour="fused")
    return path


def test_profiles_follow_the_metadata_size_policy(fused_onnx):
    model, meta = trt_build.load_fused_onnx(fused_onnx)
    channels = trt_build.feature_channels(model)
    assert channels == 96  # the demo model's FPN width
    profiles = trt_build.stage_profiles(meta, trt_build.BuildSettings(batch=(1, 2, 4)), channels)
    assert profiles["rpn"]["images"] == ((1, 3, 192, 192), (2, 3, 384, 640), (4, 3, 640, 640))
    assert profiles["box"]["feature_3"] == ((1, 96, 6, 6), (2, 96, 12, 20), (4, 96, 20, 20))
    assert profiles["box"]["box_rois"] == ((1, 5), (400, 5), (800, 5))  # post_nms_top_n 200 per image
    assert profiles["mask"]["mask_rois"] == ((1, 5), (60, 5), (120, 5))  # 30 detections per image
    # every stage input of the graph has a profile, and nothing else does
    for stage, io in meta["stages"].items():
        assert sorted(profiles[stage]) == sorted(io["inputs"])
    with pytest.raises(trt_build.ConfigError, match="multiple of 32"):
        trt_build.stage_profiles(meta, trt_build.BuildSettings(opt_input=(380, 640)), channels)


@pytest.mark.parametrize("text, expected", [("1", (1, 1, 1)), ("1,2,8", (1, 2, 8)), ("2,1,4", None), ("x", None)])
def test_parse_batch(text, expected):
    if expected is None:
        with pytest.raises(trt_build.ConfigError, match="--batch"):
            trt_build.parse_batch(text)
    else:
        assert trt_build.parse_batch(text) == expected


def test_portable_export_is_refused(tmp_path):
    from streamseg.export.onnx_export import export_onnx

    path = export_onnx(tmp_path / "portable.onnx", flavour="portable")
    with pytest.raises(trt_build.ConfigError, match="--roi-align fused"):
        trt_build.load_fused_onnx(path)


def test_calibration_batch_is_preprocessed_video_frames(fused_onnx):
    """int8 calibration input: frames spread over a real clip, resized, normalized and padded as the backends do."""
    from streamseg.export.check import default_sources
    from streamseg.sources import open_source

    _, meta = trt_build.load_fused_onnx(fused_onnx)
    clip = default_sources()[0]
    batch = trt_build.calibration_batch(clip, meta, frames=3)
    assert batch.dtype == np.float32 and batch.shape[:2] == (3, 3)
    with open_source(clip) as source:
        frame = next(iter(source))
    expected = trt_build.default_input_sizes(meta)[1] if (frame.height, frame.width) == (720, 1280) else None
    h, w = batch.shape[-2:]
    assert h % 32 == 0 and w % 32 == 0 and min(h, w) >= 0.9 * meta["size"]["min_size"] // 32 * 32
    if expected is not None:
        assert (h, w) == expected
    mean = np.array(meta["normalization"]["mean"], np.float32)[:, None, None]
    std = np.array(meta["normalization"]["std"], np.float32)[:, None, None]
    pixels = batch[0] * std + mean  # undo the normalization of the unpadded area: back to [0, 1] RGB
    assert -1e-4 <= pixels[:, :8, :8].min() and pixels[:, :8, :8].max() <= 1 + 1e-4
    assert not np.allclose(batch[0], batch[1])  # different frames


def test_plugin_library_lookup_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv(trt_runtime.PLUGIN_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(trt_runtime.TensorRTError, match="cmake -S export/trt_plugin"):
        trt_runtime.find_plugin_library()
    library = tmp_path / "libstreamseg_trt_plugin.so"
    library.write_bytes(b"")
    assert trt_runtime.find_plugin_library(library) == library.resolve()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the missing-TensorRT errors cannot occur")
def test_missing_tensorrt_is_one_line_error(fused_onnx, tmp_path):
    with pytest.raises(trt_runtime.TensorRTError) as err:
        trt_runtime.require_tensorrt()
    assert "TensorRT" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(trt_runtime.TensorRTError, match="TensorRT is not available"):
        trt_build.build_engines(fused_onnx, tmp_path / "engines", trt_build.BuildSettings(precision="fp32"))
    assert not (tmp_path / "engines").exists()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the missing-TensorRT errors cannot occur")
def test_cli_export_trt_without_tensorrt(fused_onnx, tmp_path, capsys):
    from streamseg.cli import main

    assert main(["export", "trt", str(fused_onnx), "-o", str(tmp_path / "e"), "--precision", "fp32"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("streamseg: error:")]
    assert len(lines) == 1 and "TensorRT is not available" in lines[0], err


def test_int8_needs_calibration_frames(fused_onnx, tmp_path):
    with pytest.raises(trt_build.ConfigError, match="--calibration-video"):
        trt_build.build_engines(fused_onnx, tmp_path / "e", trt_build.BuildSettings(precision="int8"))


def test_backend_needs_an_engine_folder(tmp_path):
    from streamseg.models.backend import ModelOptions
    from streamseg.models.trt_backend import TensorRTMaskRCNN

    with pytest.raises(trt_build.ConfigError, match="not a streamseg TensorRT engine folder"):
        TensorRTMaskRCNN(ModelOptions(weights=str(tmp_path), device="cuda"))


@pytest.mark.skipif(HAVE_TRT and HAVE_GPU, reason="TensorRT and a GPU are both here")
def test_backend_without_tensorrt_or_gpu_is_one_line_error(tmp_path):
    from streamseg.models.backend import ModelOptions
    from streamseg.models.trt_backend import TensorRTMaskRCNN

    folder = tmp_path / "engines"
    folder.mkdir()
    stages = {s: {"file": f"{s}.plan"} for s in trt_runtime.STAGES}
    for s in trt_runtime.STAGES:
        (folder / f"{s}.plan").write_bytes(b"\0")
    (folder / trt_runtime.MANIFEST).write_text(json.dumps({"format": trt_runtime.MANIFEST_FORMAT, "stages": stages,
                                                         "batch": [1, 1, 1]}))
    with pytest.raises(trt_runtime.TensorRTError) as err:
        TensorRTMaskRCNN(ModelOptions(weights=str(folder), device="cuda"))
    assert "\n" not in str(err.value)


@pytest.mark.skipif(HAVE_TRT and HAVE_GPU, reason="TensorRT and a GPU are both here")
def test_cli_export_check_engine_folder_is_one_line_error(fused_onnx, tmp_path, capsys):
    from streamseg.cli import main
    from streamseg.export.check import default_sources

    folder = tmp_path / "engines"
    folder.mkdir()
    for s in trt_runtime.STAGES:
        (folder / f"{s}.plan").write_bytes(b"\0")
    (folder / trt_runtime.MANIFEST).write_text(json.dumps({
        "format": trt_runtime.MANIFEST_FORMAT, "batch": [1, 1, 1], "precision": "fp32",
        "onnx": {"file": str(fused_onnx)}, "stages": {s: {"file": f"{s}.plan"} for s in trt_runtime.STAGES}}))
    assert main(["export", "check", str(folder), "--frames", "1", "--source", default_sources()[0]]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("streamseg: error:")]
    assert len(lines) == 1 and ("TensorRT" in lines[0] or "GPU" in lines[0]), err
    assert main(["export", "check", str(tmp_path)]) == 1
    assert "not an engine folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- engines (TensorRT + GPU)


def _plugin_or_skip():
    try:
        return trt_runtime.find_plugin_library()
    except trt_runtime.TensorRTError as err:
        pytest.skip(str(err))


@pytest.mark.skipif(not HAVE_TRT, reason=TRT_REASON)
@pytest.mark.skipif(not HAVE_GPU, reason=GPU_REASON)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_match_onnx_runtime(fused_onnx, tmp_path, precision):
    from streamseg.export.trt_cli import check_engines

    _plugin_or_skip()
    folder = tmp_path / precision
    trt_build.build_engines(fused_onnx, folder, trt_build.BuildSettings(precision=precision, timing_cache=None))
    manifest = trt_runtime.read_manifest(folder)
    assert manifest["stages"]["box"]["plugin_nodes"] == 1 and manifest["stages"]["mask"]["plugin_nodes"] == 1
    frames = _scene_frames(4)
    report = check_engines(folder, frames)
    print(report.table())
    assert report.passed


def _scene_frames(count):
    """Frames of a generated street scene: the demo model finds real objects in them."""
    from dataclasses import replace

    from streamseg.scenes import Scene, SceneConfig
    from streamseg.types import Frame

    scene = Scene(replace(SceneConfig(), seed=7, frames=count * 10))
    return [Frame(f.image, "scene7", f.index, f.time) for f in (scene.render(i * 10) for i in range(count))]


def test_gpu_check_dry_run_walks_every_cpu_step(tmp_path):
    """README's `bench/gpu_check.py --dry-run`: ~35 s here once the harness is built (the tests above build it), every
    step a CPU can take runs (the kernel's CPU loop against the reference, R50-FPN and the pipeline small on the CPU)
    and each GPU step is listed as skipped with its reason."""
    assert "python3 bench/gpu_check.py --dry-run" in (REPO / "README.md").read_text()
    rows_file = tmp_path / "rows.json"
    command = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--json", str(rows_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    assert not [r for r in rows if r["status"] == "FAIL"]
    ran = {r["section"] for r in rows if not r["status"].startswith("skipped")}
    assert {"kernel", "torch backend", "pipeline"} <= ran, rows
    skipped = [r for r in rows if r["status"].startswith("skipped")]
    assert skipped and all(len(r["status"]) > len("skipped: ") for r in skipped)
    if HARNESS_MISSING is None:
        assert [r for r in rows if r["section"] == "kernel" and r["status"] == "ok" and "CPU reference" in r["item"]]
    assert " skipped, 0 failed" in result.stdout
