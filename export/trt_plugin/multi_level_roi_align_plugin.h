// TensorRT IPluginV3 "MultiLevelRoIAlign" (version "1", namespace ""): the ONNX node streamseg::MultiLevelRoIAlign
// as one plugin layer. Written against TensorRT 10.x / 11.x's IPluginV3 API (IPluginV3OneCore, IPluginV3OneBuild,
// IPluginV3OneRuntime, IPluginCreatorV3One); tests/test_trt_plugin.py compiles it with -Werror against the real
// 10.16 and 11.1 headers and runs its logic against a stand-in for the one libnvinfer function it calls.
//
// Why a C++ IPluginV3 rather than a TensorRT Python plugin (tensorrt.plugin): engines must run where there is no
// Python at all -- trtexec, DeepStream, Triton's TensorRT backend -- and a C++ plugin library is the one form all of
// them load (--staticPlugins / --dynamicPlugins, custom-lib-path, the backend's plugin list). It also works with
// every TensorRT from 10.0 (Python plugins need >= 10.6, and ahead-of-time kernels >= 10.9), and its kernel is a
// plain .cu file that the PyTorch harness compiles too, so the kernel checked against the CPU reference on a GPU is
// byte for byte the kernel in the engine.
#pragma once

#include "multi_level_roi_align.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace streamseg
{

constexpr char const* kPluginName = "MultiLevelRoIAlign";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";

class MultiLevelRoIAlignPlugin final : public nvinfer1::IPluginV3,
                                       public nvinfer1::IPluginV3OneCore,
                                       public nvinfer1::IPluginV3OneBuild,
                                       public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit MultiLevelRoIAlignPlugin(MultiLevelRoIAlignAttributes const& attributes);
    ~MultiLevelRoIAlignPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    bool checkIO(int32_t nbInputs, int32_t nbOutputs) const noexcept;

    MultiLevelRoIAlignAttributes mAttributes;
    // getFieldsToSerialize() points into these; kept as members so the pointers stay valid.
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class MultiLevelRoIAlignPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    MultiLevelRoIAlignPluginCreator();
    ~MultiLevelRoIAlignPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

// Where the plugin's error messages go: the logger TensorRT hands over through setLoggerFinder(), else stderr.
void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void logPluginError(std::string const& message) noexcept;

} // namespace streamseg
