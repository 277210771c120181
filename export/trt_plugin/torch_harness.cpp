// PyTorch binding of the plugin's kernel, for testing and benchmarking it without TensorRT.
// multi_level_roi_align runs the CUDA kernel; multi_level_roi_align_host runs the same __host__ __device__
// per-element code in a CPU loop, so the arithmetic is tested even where no GPU exists.
//
// Compiled together with multi_level_roi_align_kernel.cu (the very file the TensorRT plugin links), so what the
// GPU parity test checks is the kernel that ships. Built on demand by streamseg/export/trt_kernel.py through
// torch.utils.cpp_extension.

#include "multi_level_roi_align.h"

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

namespace
{

streamseg::ElementType elementType(torch::Tensor const& t, char const* what)
{
    if (t.scalar_type() == torch::kFloat32)
    {
        return streamseg::ElementType::kFloat32;
    }
    if (t.scalar_type() == torch::kFloat16)
    {
        return streamseg::ElementType::kFloat16;
    }
    TORCH_CHECK(false, what, ": expected float32 or float16, got ", t.scalar_type());
}

torch::Tensor run(bool onDevice, torch::Tensor rois, std::vector<torch::Tensor> features, int64_t outputHeight,
    int64_t outputWidth, int64_t samplingRatio, int64_t poolMode, int64_t aligned, std::vector<double> featmapStrides,
    int64_t finestScale, double roiScaleFactor)
{
    TORCH_CHECK(!features.empty() && features.size() <= streamseg::kMaxLevels, "1 to 8 feature maps, got ",
        features.size());
    TORCH_CHECK(featmapStrides.size() == features.size(), "featmap_strides: ", featmapStrides.size(),
        " strides for ", features.size(), " feature maps");
    TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "rois: expected [R, 5]");
    TORCH_CHECK(rois.is_cuda() == onDevice, onDevice ? "rois: expected a CUDA tensor" : "rois: expected a CPU tensor");
    streamseg::MultiLevelRoIAlignAttributes a;
    a.outputHeight = static_cast<int32_t>(outputHeight);
    a.outputWidth = static_cast<int32_t>(outputWidth);
    a.samplingRatio = static_cast<int32_t>(samplingRatio);
    a.poolMode = static_cast<int32_t>(poolMode);
    a.aligned = static_cast<int32_t>(aligned);
    a.numLevels = static_cast<int32_t>(features.size());
    for (size_t l = 0; l < features.size(); ++l)
    {
        a.featmapStrides[l] = static_cast<float>(featmapStrides[l]);
    }
    a.finestScale = static_cast<int32_t>(finestScale);
    a.roiScaleFactor = static_cast<float>(roiScaleFactor);
    char const* problem = streamseg::validateAttributes(a);
    TORCH_CHECK(problem == nullptr, problem == nullptr ? "" : problem);

    auto const featureType = elementType(features[0], "features");
    auto const roiType = elementType(rois, "rois");
    TORCH_CHECK(!(roiType == streamseg::ElementType::kFloat16 && featureType == streamseg::ElementType::kFloat32),
        "float16 rois need float16 features");
    std::vector<torch::Tensor> contiguous;
    streamseg::FeatureMaps maps{};
    for (size_t l = 0; l < features.size(); ++l)
    {
        auto const& f = features[l];
        TORCH_CHECK(f.device() == rois.device() && f.dim() == 4, "feature map ", l,
            ": expected a 4-D tensor on the rois' device");
        TORCH_CHECK(f.scalar_type() == features[0].scalar_type(), "feature maps must share one dtype");
        TORCH_CHECK(f.size(0) == features[0].size(0) && f.size(1) == features[0].size(1),
            "feature maps must share N and C");
        contiguous.push_back(f.contiguous());
        maps.data[l] = contiguous.back().data_ptr();
        maps.height[l] = static_cast<int32_t>(f.size(2));
        maps.width[l] = static_cast<int32_t>(f.size(3));
    }
    maps.batch = static_cast<int32_t>(features[0].size(0));
    maps.channels = static_cast<int32_t>(features[0].size(1));
    auto roisContiguous = rois.contiguous();
    auto output = torch::empty({rois.size(0), features[0].size(1), outputHeight, outputWidth}, features[0].options());
    cudaError_t status;
    if (onDevice)
    {
        c10::cuda::CUDAGuard guard(rois.device());
        status = streamseg::multiLevelRoIAlignForward(a, rois.size(0), roisContiguous.data_ptr(), roiType, maps,
            featureType, output.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
    }
    else
    {
        status = streamseg::multiLevelRoIAlignForwardHost(
            a, rois.size(0), roisContiguous.data_ptr(), roiType, maps, featureType, output.data_ptr());
    }
    TORCH_CHECK(status == cudaSuccess, "multi-level RoIAlign kernel: ", cudaGetErrorString(status));
    return output;
}

torch::Tensor onDevice(torch::Tensor rois, std::vector<torch::Tensor> features, int64_t outputHeight,
    int64_t outputWidth, int64_t samplingRatio, int64_t poolMode, int64_t aligned, std::vector<double> featmapStrides,
    int64_t finestScale, double roiScaleFactor)
{
    return run(true, rois, features, outputHeight, outputWidth, samplingRatio, poolMode, aligned, featmapStrides,
        finestScale, roiScaleFactor);
}

torch::Tensor onHost(torch::Tensor rois, std::vector<torch::Tensor> features, int64_t outputHeight,
    int64_t outputWidth, int64_t samplingRatio, int64_t poolMode, int64_t aligned, std::vector<double> featmapStrides,
    int64_t finestScale, double roiScaleFactor)
{
    return run(false, rois, features, outputHeight, outputWidth, samplingRatio, poolMode, aligned, featmapStrides,
        finestScale, roiScaleFactor);
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    auto const args = [](auto& module, char const* name, auto fn, char const* doc) {
        module.def(name, fn, doc, pybind11::arg("rois"), pybind11::arg("features"), pybind11::arg("output_height"),
            pybind11::arg("output_width"), pybind11::arg("sampling_ratio"), pybind11::arg("pool_mode"),
            pybind11::arg("aligned"), pybind11::arg("featmap_strides"), pybind11::arg("finest_scale"),
            pybind11::arg("roi_scale_factor"));
    };
    args(m, "multi_level_roi_align", &onDevice, "Multi-level RoIAlign: the TensorRT plugin's CUDA kernel (CUDA tensors)");
    args(m, "multi_level_roi_align_host", &onHost,
        "The kernel's per-element code run in a CPU loop (CPU tensors): tests its arithmetic without a GPU");
}
