// Multi-level RoIAlign kernel (see multi_level_roi_align.h for the contract).
//
// One launch for all levels: one thread per output element (roi, channel, ph, pw). Each thread picks its RoI's
// level itself (five loads and a log2, cheap next to the 4 x samples bilinear reads), so there is no per-level
// gather, no scatter and no temporary buffer, and zero RoIs need no launch at all.
//
// The RoIAlign arithmetic follows torchvision's roi_align CUDA kernel operation for operation (sample positions,
// the aligned / not-aligned roi size rule, adaptive sampling for sampling_ratio 0, the bilinear edge rules) so the
// result matches torchvision.ops.roi_align run level by level to float32 rounding.

#include "multi_level_roi_align.h"

#include <cmath>
#include <cuda_fp16.h>

namespace streamseg
{
namespace
{

struct LevelParams
{
    void const* data[kMaxLevels];
    int32_t height[kMaxLevels];
    int32_t width[kMaxLevels];
    float spatialScale[kMaxLevels];
    int32_t numLevels;
    float kMin;  // log2(finest stride): torchvision's k_min
    float k0;    // canonical level, k_min + 2 (4 for stride-4 P2)
    float s0;    // canonical scale, 4 * finest_scale (224)
};

// Everything below that computes values is __host__ __device__: the GPU kernel and the host driver used by tests
// on machines without a GPU (multiLevelRoIAlignForwardHost) run the same source lines.
template <typename T>
__host__ __device__ __forceinline__ float load(T const* p, int64_t i);

template <>
__host__ __device__ __forceinline__ float load<float>(float const* p, int64_t i)
{
#if defined(__CUDA_ARCH__)
    return __ldg(p + i);
#else
    return p[i];
#endif
}

template <>
__host__ __device__ __forceinline__ float load<__half>(__half const* p, int64_t i)
{
    return __half2float(p[i]);
}

template <typename T>
__host__ __device__ __forceinline__ void store(T* p, int64_t i, float v);

template <>
__host__ __device__ __forceinline__ void store<float>(float* p, int64_t i, float v)
{
    p[i] = v;
}

template <>
__host__ __device__ __forceinline__ void store<__half>(__half* p, int64_t i, float v)
{
    p[i] = __float2half_rn(v);
}

// torchvision's bilinear_interpolate: zero outside [-1, size], edge clamping inside.
template <typename T>
__host__ __device__ float bilinear(T const* plane, int32_t height, int32_t width, float y, float x)
{
    if (y < -1.0f || y > static_cast<float>(height) || x < -1.0f || x > static_cast<float>(width))
    {
        return 0.0f;
    }
    if (y <= 0.0f)
    {
        y = 0.0f;
    }
    if (x <= 0.0f)
    {
        x = 0.0f;
    }
    int32_t yLow = static_cast<int32_t>(y);
    int32_t xLow = static_cast<int32_t>(x);
    int32_t yHigh;
    int32_t xHigh;
    if (yLow >= height - 1)
    {
        yHigh = yLow = height - 1;
        y = static_cast<float>(yLow);
    }
    else
    {
        yHigh = yLow + 1;
    }
    if (xLow >= width - 1)
    {
        xHigh = xLow = width - 1;
        x = static_cast<float>(xLow);
    }
    else
    {
        xHigh = xLow + 1;
    }
    float const ly = y - static_cast<float>(yLow);
    float const lx = x - static_cast<float>(xLow);
    float const hy = 1.0f - ly;
    float const hx = 1.0f - lx;
    float const v1 = load(plane, static_cast<int64_t>(yLow) * width + xLow);
    float const v2 = load(plane, static_cast<int64_t>(yLow) * width + xHigh);
    float const v3 = load(plane, static_cast<int64_t>(yHigh) * width + xLow);
    float const v4 = load(plane, static_cast<int64_t>(yHigh) * width + xHigh);
    float const w1 = hy * hx;
    float const w2 = hy * lx;
    float const w3 = ly * hx;
    float const w4 = ly * lx;
    return w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
}

// Level index of a box, as torchvision's LevelMapper computes it (float32, same operation order; the epsilon is
// added after log2, not inside it). A NaN area (degenerate box) lands on the finest level.
__host__ __device__ __forceinline__ int32_t levelOf(float x1, float y1, float x2, float y2, LevelParams const& lp)
{
    float const area = (x2 - x1) * (y2 - y1);
    float const scale = sqrtf(area);
    float k = lp.k0 + log2f(scale / lp.s0);
    k = k + 1e-6f;
    k = floorf(k);
    k = fminf(fmaxf(k, lp.kMin), lp.kMin + static_cast<float>(lp.numLevels - 1));
    return static_cast<int32_t>(k) - static_cast<int32_t>(lp.kMin);
}

struct Shape
{
    int32_t batch;
    int32_t channels;
    int32_t outH;
    int32_t outW;
    int32_t samplingRatio;
    bool aligned;
    float roiScaleFactor;
};

// One output element (roi, channel, ph, pw) = output[index], NCHW.
template <typename T, typename RoiT>
__host__ __device__ float computeElement(int64_t index, RoiT const* rois, LevelParams const& lp, Shape const& sh)
{
    int32_t const outW = sh.outW;
    int32_t const outH = sh.outH;
    int32_t const channels = sh.channels;
    int32_t const batch = sh.batch;
    int32_t const samplingRatio = sh.samplingRatio;
    bool const aligned = sh.aligned;
    float const roiScaleFactor = sh.roiScaleFactor;
    int32_t const pw = static_cast<int32_t>(index % outW);
    int32_t const ph = static_cast<int32_t>((index / outW) % outH);
    int32_t const c = static_cast<int32_t>((index / outW / outH) % channels);
    int64_t const r = index / outW / outH / channels;

    RoiT const* roi = rois + r * 5;
    int32_t const b = static_cast<int32_t>(load(roi, 0));
    float x1 = load(roi, 1);
    float y1 = load(roi, 2);
    float x2 = load(roi, 3);
    float y2 = load(roi, 4);
    if (roiScaleFactor != 1.0f)
    {
        // grow about the centre, as streamseg.ops.roi_align.scale_rois (applied before the level choice)
        float const cx = (x1 + x2) * 0.5f;
        float const cy = (y1 + y2) * 0.5f;
        float const hw = (x2 - x1) * (0.5f * roiScaleFactor);
        float const hh = (y2 - y1) * (0.5f * roiScaleFactor);
        x1 = cx - hw;
        x2 = cx + hw;
        y1 = cy - hh;
        y2 = cy + hh;
    }
    if (b < 0 || b >= batch)
    {
        return 0.0f;  // an invalid batch index reads nothing (torchvision would read out of bounds)
    }
    int32_t const level = levelOf(x1, y1, x2, y2, lp);
    int32_t const height = lp.height[level];
    int32_t const width = lp.width[level];
    float const scale = lp.spatialScale[level];
    T const* plane = static_cast<T const*>(lp.data[level]) + (static_cast<int64_t>(b) * channels + c) * height * width;

    float const offset = aligned ? 0.5f : 0.0f;
    float const roiStartW = x1 * scale - offset;
    float const roiStartH = y1 * scale - offset;
    float const roiEndW = x2 * scale - offset;
    float const roiEndH = y2 * scale - offset;
    float roiWidth = roiEndW - roiStartW;
    float roiHeight = roiEndH - roiStartH;
    if (!aligned)
    {
        roiWidth = fmaxf(roiWidth, 1.0f);
        roiHeight = fmaxf(roiHeight, 1.0f);
    }
    float const binH = roiHeight / static_cast<float>(outH);
    float const binW = roiWidth / static_cast<float>(outW);
    int32_t const gridH = samplingRatio > 0 ? samplingRatio : static_cast<int32_t>(ceilf(roiHeight / outH));
    int32_t const gridW = samplingRatio > 0 ? samplingRatio : static_cast<int32_t>(ceilf(roiWidth / outW));
    float const count = static_cast<float>(gridH * gridW > 1 ? gridH * gridW : 1);

    float sum = 0.0f;
    for (int32_t iy = 0; iy < gridH; ++iy)
    {
        float const y = roiStartH + ph * binH + static_cast<float>(iy + .5f) * binH / static_cast<float>(gridH);
        for (int32_t ix = 0; ix < gridW; ++ix)
        {
            float const x = roiStartW + pw * binW + static_cast<float>(ix + .5f) * binW / static_cast<float>(gridW);
            sum += bilinear(plane, height, width, y, x);
        }
    }
    return sum / count;
}

template <typename T, typename RoiT>
__global__ void multiLevelRoIAlignKernel(
    int64_t total, RoiT const* __restrict__ rois, LevelParams lp, Shape sh, T* __restrict__ output)
{
    for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
         index += static_cast<int64_t>(blockDim.x) * gridDim.x)
    {
        store(output, index, computeElement<T, RoiT>(index, rois, lp, sh));
    }
}

Shape shapeOf(FeatureMaps const& features, MultiLevelRoIAlignAttributes const& a)
{
    return Shape{features.batch, features.channels, a.outputHeight, a.outputWidth, a.samplingRatio, a.aligned != 0,
        a.roiScaleFactor};
}

template <typename T, typename RoiT>
cudaError_t launch(int64_t total, void const* rois, LevelParams const& lp, FeatureMaps const& features,
    MultiLevelRoIAlignAttributes const& a, void* output, cudaStream_t stream)
{
    constexpr int32_t kThreads = 256;
    int64_t const blocksNeeded = (total + kThreads - 1) / kThreads;
    int32_t const blocks = static_cast<int32_t>(blocksNeeded < 65535 * 8 ? blocksNeeded : 65535 * 8);
    multiLevelRoIAlignKernel<T, RoiT><<<blocks, kThreads, 0, stream>>>(
        total, static_cast<RoiT const*>(rois), lp, shapeOf(features, a), static_cast<T*>(output));
    return cudaGetLastError();
}

template <typename T, typename RoiT>
cudaError_t runOnHost(int64_t total, void const* rois, LevelParams const& lp, FeatureMaps const& features,
    MultiLevelRoIAlignAttributes const& a, void* output)
{
    Shape const sh = shapeOf(features, a);
    for (int64_t index = 0; index < total; ++index)
    {
        store(static_cast<T*>(output), index, computeElement<T, RoiT>(index, static_cast<RoiT const*>(rois), lp, sh));
    }
    return cudaSuccess;
}

} // namespace

char const* validateAttributes(MultiLevelRoIAlignAttributes const& a)
{
    if (a.outputHeight < 1 || a.outputWidth < 1)
    {
        return "output_height and output_width must be >= 1";
    }
    if (a.samplingRatio < 0)
    {
        return "sampling_ratio must be >= 0 (0: adaptive)";
    }
    if (a.poolMode != 1)
    {
        return "pool_mode: only 1 (avg, what torchvision's RoIAlign computes) is implemented";
    }
    if (a.aligned != 0 && a.aligned != 1)
    {
        return "aligned must be 0 or 1";
    }
    if (a.numLevels < 1 || a.numLevels > kMaxLevels)
    {
        return "featmap_strides: 1 to 8 levels are supported";
    }
    for (int32_t l = 0; l < a.numLevels; ++l)
    {
        float const k = std::log2(a.featmapStrides[l]);
        if (!(a.featmapStrides[l] > 0.f) || k != std::round(k) || (l > 0 && a.featmapStrides[l] != 2.f * a.featmapStrides[l - 1]))
        {
            return "featmap_strides must be powers of two, each twice the one before (a pyramid, finest first)";
        }
    }
    if (a.finestScale <= 0)
    {
        return "finest_scale must be > 0";
    }
    if (!(a.roiScaleFactor > 0.f))
    {
        return "roi_scale_factor must be > 0";
    }
    return nullptr;
}

namespace
{
LevelParams levelParams(MultiLevelRoIAlignAttributes const& a, FeatureMaps const& features)
{
    LevelParams lp{};
    for (int32_t l = 0; l < a.numLevels; ++l)
    {
        lp.data[l] = features.data[l];
        lp.height[l] = features.height[l];
        lp.width[l] = features.width[l];
        lp.spatialScale[l] = static_cast<float>(1.0 / static_cast<double>(a.featmapStrides[l]));
    }
    lp.numLevels = a.numLevels;
    double const kMin = std::log2(static_cast<double>(a.featmapStrides[0]));
    lp.kMin = static_cast<float>(kMin);
    lp.k0 = static_cast<float>(kMin + 2.0);
    lp.s0 = static_cast<float>(4.0 * a.finestScale);
    return lp;
}

template <bool kOnHost>
cudaError_t forward(MultiLevelRoIAlignAttributes const& a, int64_t numRois, void const* rois, ElementType roiType,
    FeatureMaps const& features, ElementType featureType, void* output, cudaStream_t stream)
{
    int64_t const total = numRois * features.channels * a.outputHeight * a.outputWidth;
    if (total <= 0)
    {
        return cudaSuccess;  // zero RoIs (or channels): nothing to write, nothing to launch
    }
    if (validateAttributes(a) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    LevelParams const lp = levelParams(a, features);
    if (featureType == ElementType::kFloat32 && roiType == ElementType::kFloat32)
    {
        return kOnHost ? runOnHost<float, float>(total, rois, lp, features, a, output)
                       : launch<float, float>(total, rois, lp, features, a, output, stream);
    }
    if (featureType == ElementType::kFloat16 && roiType == ElementType::kFloat16)
    {
        return kOnHost ? runOnHost<__half, __half>(total, rois, lp, features, a, output)
                       : launch<__half, __half>(total, rois, lp, features, a, output, stream);
    }
    if (featureType == ElementType::kFloat16 && roiType == ElementType::kFloat32)
    {
        return kOnHost ? runOnHost<__half, float>(total, rois, lp, features, a, output)
                       : launch<__half, float>(total, rois, lp, features, a, output, stream);
    }
    return cudaErrorInvalidValue;  // float16 rois with float32 features: not a combination the plugin offers
}
} // namespace

cudaError_t multiLevelRoIAlignForward(MultiLevelRoIAlignAttributes const& a, int64_t numRois, void const* rois,
    ElementType roiType, FeatureMaps const& features, ElementType featureType, void* output, cudaStream_t stream)
{
    return forward<false>(a, numRois, rois, roiType, features, featureType, output, stream);
}

cudaError_t multiLevelRoIAlignForwardHost(MultiLevelRoIAlignAttributes const& a, int64_t numRois, void const* rois,
    ElementType roiType, FeatureMaps const& features, ElementType featureType, void* output)
{
    return forward<true>(a, numRois, rois, roiType, features, featureType, output, nullptr);
}

} // namespace streamseg
