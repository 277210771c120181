// Multi-level RoIAlign on the GPU: the one kernel behind the TensorRT plugin and the PyTorch test harness.
//
// Contract (shared/GUIDE.md section 4, streamseg/ops/roi_align.py is the CPU reference): rois [R, 5] rows
// (batch_index, x1, y1, x2, y2) in input-image pixels, then L feature maps [N, C, H_l, W_l] (NCHW, contiguous,
// finest first); output [R, C, output_height, output_width] in the order of rois.
//
// Each RoI is pooled from one level, chosen as torchvision's MultiScaleRoIAlign (LevelMapper) chooses it, with the
// same float32 operations in the same order:
//     k = floor(k0 + log2(sqrt(area) / s0) + 1e-6), clamped to [k_min, k_min + L - 1], level = k - k_min
// with k_min = log2(featmap_strides[0]), k0 = k_min + 2 and s0 = 4 * finest_scale (224 for finest_scale 56).
// mmdeploy's floor(log2(sqrt(area) / finest_scale + 1e-6)) puts the epsilon inside the logarithm and moves the
// level boundary; we follow torchvision so that engines agree with PyTorch.
//
// This header needs neither TensorRT nor PyTorch: both the plugin and the harness include it, so the kernel that
// is tested is the kernel that ships.
#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

namespace streamseg
{

constexpr int kMaxLevels = 8;

enum class ElementType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
};

struct MultiLevelRoIAlignAttributes
{
    int32_t outputHeight{7};
    int32_t outputWidth{7};
    int32_t samplingRatio{2};  // 0: adaptive, ceil(roi size / output size) samples per bin (torchvision)
    int32_t poolMode{1};       // 1 = avg (torchvision's RoIAlign); 0 = max is rejected, as by the CPU reference
    int32_t aligned{0};        // 1: shift sample points by -0.5 px (roi_align(aligned=True))
    int32_t numLevels{4};
    float featmapStrides[kMaxLevels]{4.f, 8.f, 16.f, 32.f};
    int32_t finestScale{56};
    float roiScaleFactor{1.f};
};

// Returns nullptr when the attributes are usable, else a one-line reason.
char const* validateAttributes(MultiLevelRoIAlignAttributes const& attributes);

struct FeatureMaps
{
    void const* data[kMaxLevels];
    int32_t height[kMaxLevels];
    int32_t width[kMaxLevels];
    int32_t batch;     // N, the same for every level
    int32_t channels;  // C, the same for every level
};

// Enqueue the kernel on `stream`. Zero RoIs launch nothing and return cudaSuccess (the output is empty).
// roiType may differ from featureType only as (kFloat32 rois, kFloat16 features); the output has featureType.
// Arithmetic is float32 throughout (fp16 values are widened on load and narrowed once on store).
cudaError_t multiLevelRoIAlignForward(MultiLevelRoIAlignAttributes const& attributes, int64_t numRois,
    void const* rois, ElementType roiType, FeatureMaps const& features, ElementType featureType, void* output,
    cudaStream_t stream);

// The same per-element code run by a plain loop on the CPU, on host pointers: how the kernel's arithmetic is tested
// on machines without a GPU (the harness binds it as multi_level_roi_align_host). Slow; never used by the plugin.
cudaError_t multiLevelRoIAlignForwardHost(MultiLevelRoIAlignAttributes const& attributes, int64_t numRois,
    void const* rois, ElementType roiType, FeatureMaps const& features, ElementType featureType, void* output);

} // namespace streamseg
