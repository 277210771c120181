// TensorRT IPluginV3 MultiLevelRoIAlign: build-time shape/type logic, runtime enqueue, creation and serialization.
// See multi_level_roi_align_plugin.h for why this is a C++ plugin, and multi_level_roi_align.h for the op.

#include "multi_level_roi_align_plugin.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <new>

using namespace nvinfer1;

namespace streamseg
{
namespace
{

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

// ONNX attribute names, as mmdeploy's MMCVMultiLevelRoiAlign names them (shared/GUIDE.md section 4).
constexpr char const* kOutputHeight = "output_height";
constexpr char const* kOutputWidth = "output_width";
constexpr char const* kSamplingRatio = "sampling_ratio";
constexpr char const* kPoolMode = "pool_mode";
constexpr char const* kAligned = "aligned";
constexpr char const* kFeatmapStrides = "featmap_strides";
constexpr char const* kFinestScale = "finest_scale";
constexpr char const* kRoiScaleFactor = "roi_scale_factor";

// The ONNX parser converts a node's attributes to PluginFields; depending on the TensorRT version an ONNX int may
// arrive as INT32 or INT64 and a float as FLOAT32 or FLOAT64, so both readers take every integer and float width.
bool readNumbers(PluginField const& field, double* values, int32_t capacity, int32_t& count)
{
    if (field.data == nullptr || field.length < 0)
    {
        return false;
    }
    count = field.length < capacity ? field.length : capacity;
    for (int32_t i = 0; i < count; ++i)
    {
        switch (field.type)
        {
        case PluginFieldType::kINT8: values[i] = static_cast<int8_t const*>(field.data)[i]; break;
        case PluginFieldType::kINT16: values[i] = static_cast<int16_t const*>(field.data)[i]; break;
        case PluginFieldType::kINT32: values[i] = static_cast<int32_t const*>(field.data)[i]; break;
        case PluginFieldType::kINT64: values[i] = static_cast<double>(static_cast<int64_t const*>(field.data)[i]); break;
        case PluginFieldType::kFLOAT32: values[i] = static_cast<float const*>(field.data)[i]; break;
        case PluginFieldType::kFLOAT64: values[i] = static_cast<double const*>(field.data)[i]; break;
        default: return false;
        }
    }
    return field.length <= capacity;
}

bool readScalar(PluginField const& field, double& value)
{
    int32_t count = 0;
    return readNumbers(field, &value, 1, count) && count == 1;
}

bool parseAttributes(PluginFieldCollection const* fc, MultiLevelRoIAlignAttributes& a, std::string& problem)
{
    if (fc == nullptr)
    {
        problem = "no plugin fields";
        return false;
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            continue;
        }
        std::string const name(f.name);
        double v = 0.0;
        bool ok = true;
        if (name == kFeatmapStrides)
        {
            double strides[kMaxLevels];
            int32_t n = 0;
            ok = readNumbers(f, strides, kMaxLevels, n) && n >= 1;
            if (ok)
            {
                a.numLevels = n;
                for (int32_t l = 0; l < n; ++l)
                {
                    a.featmapStrides[l] = static_cast<float>(strides[l]);
                }
            }
        }
        else if (name == kOutputHeight) { ok = readScalar(f, v); a.outputHeight = static_cast<int32_t>(v); }
        else if (name == kOutputWidth) { ok = readScalar(f, v); a.outputWidth = static_cast<int32_t>(v); }
        else if (name == kSamplingRatio) { ok = readScalar(f, v); a.samplingRatio = static_cast<int32_t>(v); }
        else if (name == kPoolMode) { ok = readScalar(f, v); a.poolMode = static_cast<int32_t>(v); }
        else if (name == kAligned) { ok = readScalar(f, v); a.aligned = static_cast<int32_t>(v); }
        else if (name == kFinestScale) { ok = readScalar(f, v); a.finestScale = static_cast<int32_t>(v); }
        else if (name == kRoiScaleFactor) { ok = readScalar(f, v); a.roiScaleFactor = static_cast<float>(v); }
        // other fields (plugin_version, plugin_namespace, ...) are the parser's business: ignored
        if (!ok)
        {
            problem = "attribute '" + name + "': unreadable value (expected numbers; featmap_strides 1 to 8 of them)";
            return false;
        }
    }
    char const* invalid = validateAttributes(a);
    if (invalid != nullptr)
    {
        problem = invalid;
        return false;
    }
    return true;
}

bool isFloatType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF;
}

ElementType elementType(DataType t)
{
    return t == DataType::kHALF ? ElementType::kFloat16 : ElementType::kFloat32;
}

} // namespace

void setPluginLoggerFinder(ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logPluginError(std::string const& message) noexcept
{
    std::string const text = std::string(kPluginName) + " plugin: " + message;
    ILoggerFinder* finder = gLoggerFinder.load();
    ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, text.c_str());
    }
    else
    {
        std::fprintf(stderr, "[streamseg] %s\n", text.c_str());
    }
}

// ---------------------------------------------------------------------------------------------------- plugin

MultiLevelRoIAlignPlugin::MultiLevelRoIAlignPlugin(MultiLevelRoIAlignAttributes const& attributes)
    : mAttributes(attributes)
{
}

IPluginCapability* MultiLevelRoIAlignPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* MultiLevelRoIAlignPlugin::clone() noexcept
{
    try
    {
        return new MultiLevelRoIAlignPlugin(mAttributes);
    }
    catch (std::exception const& e)
    {
        logPluginError(std::string("clone failed: ") + e.what());
        return nullptr;
    }
}

char const* MultiLevelRoIAlignPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* MultiLevelRoIAlignPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* MultiLevelRoIAlignPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t MultiLevelRoIAlignPlugin::getNbOutputs() const noexcept
{
    return 1;
}

bool MultiLevelRoIAlignPlugin::checkIO(int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if (nbInputs != 1 + mAttributes.numLevels || nbOutputs != 1)
    {
        logPluginError("expected rois + " + std::to_string(mAttributes.numLevels)
            + " feature maps (one per featmap_strides entry) and 1 output, got " + std::to_string(nbInputs)
            + " inputs and " + std::to_string(nbOutputs) + " outputs");
        return false;
    }
    return true;
}

int32_t MultiLevelRoIAlignPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkIO(nbInputs, nbOutputs))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[1];  // the feature maps' type (float32 or float16)
    return 0;
}

int32_t MultiLevelRoIAlignPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    if (!checkIO(nbInputs, nbOutputs))
    {
        return -1;
    }
    if (inputs[0].nbDims != 2)
    {
        logPluginError("rois must be 2-D [R, 5]");
        return -1;
    }
    for (int32_t i = 1; i < nbInputs; ++i)
    {
        if (inputs[i].nbDims != 4)
        {
            logPluginError("feature maps must be 4-D [N, C, H, W]");
            return -1;
        }
    }
    // [R, C, output_height, output_width]; R is data-dependent upstream (after NMS / top-k) and stays symbolic.
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[1].d[1];
    outputs[0].d[2] = exprBuilder.constant(mAttributes.outputHeight);
    outputs[0].d[3] = exprBuilder.constant(mAttributes.outputWidth);
    return 0;
}

bool MultiLevelRoIAlignPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR || !isFloatType(desc.type))
    {
        return false;
    }
    if (pos == 0)
    {
        // rois stay float32 even in fp16 engines: coordinates of a 1333-px input in fp16 are only 0.5-1 px apart,
        // which would move sample points and even the level choice (the kernel itself also takes fp16 rois)
        return desc.type == DataType::kFLOAT;
    }
    if (pos == 1)
    {
        return true;  // features: float32 or float16
    }
    return desc.type == inOut[1].desc.type;  // the other levels and the output share level 0's type
}

int32_t MultiLevelRoIAlignPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!checkIO(nbInputs, nbOutputs))
    {
        return -1;
    }
    if (in[0].desc.dims.nbDims != 2 || (in[0].desc.dims.d[1] != 5 && in[0].desc.dims.d[1] != -1))
    {
        logPluginError("rois must be [R, 5] rows (batch_index, x1, y1, x2, y2)");
        return -1;
    }
    return 0;
}

size_t MultiLevelRoIAlignPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;  // one kernel, no temporaries
}

int32_t MultiLevelRoIAlignPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!checkIO(nbInputs, nbOutputs))
    {
        return -1;
    }
    for (int32_t i = 2; i < nbInputs; ++i)
    {
        if (in[i].dims.d[0] != in[1].dims.d[0] || in[i].dims.d[1] != in[1].dims.d[1])
        {
            logPluginError("feature maps must share N and C");
            return -1;
        }
    }
    return 0;
}

int32_t MultiLevelRoIAlignPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    int64_t const numRois = inputDesc[0].dims.d[0];
    if (numRois == 0)
    {
        return 0;  // no RoIs: an empty output, nothing to launch
    }
    FeatureMaps maps{};
    maps.batch = static_cast<int32_t>(inputDesc[1].dims.d[0]);
    maps.channels = static_cast<int32_t>(inputDesc[1].dims.d[1]);
    for (int32_t l = 0; l < mAttributes.numLevels; ++l)
    {
        maps.data[l] = inputs[1 + l];
        maps.height[l] = static_cast<int32_t>(inputDesc[1 + l].dims.d[2]);
        maps.width[l] = static_cast<int32_t>(inputDesc[1 + l].dims.d[3]);
    }
    cudaError_t const status = multiLevelRoIAlignForward(mAttributes, numRois, inputs[0],
        elementType(inputDesc[0].type), maps, elementType(inputDesc[1].type), outputs[0], stream);
    if (status != cudaSuccess)
    {
        logPluginError(std::string("kernel launch failed: ") + cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

IPluginV3* MultiLevelRoIAlignPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();  // no per-context resources
}

PluginFieldCollection const* MultiLevelRoIAlignPlugin::getFieldsToSerialize() noexcept
{
    // The fields createPlugin() reads back at runtime (TensorRTPhase::kRUNTIME), with the ONNX attribute names.
    mSerialFields.clear();
    mSerialFields.emplace_back(kOutputHeight, &mAttributes.outputHeight, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back(kOutputWidth, &mAttributes.outputWidth, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back(kSamplingRatio, &mAttributes.samplingRatio, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back(kPoolMode, &mAttributes.poolMode, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back(kAligned, &mAttributes.aligned, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back(kFeatmapStrides, mAttributes.featmapStrides, PluginFieldType::kFLOAT32, mAttributes.numLevels);
    mSerialFields.emplace_back(kFinestScale, &mAttributes.finestScale, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back(kRoiScaleFactor, &mAttributes.roiScaleFactor, PluginFieldType::kFLOAT32, 1);
    mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialCollection.fields = mSerialFields.data();
    return &mSerialCollection;
}

// ---------------------------------------------------------------------------------------------------- creator

MultiLevelRoIAlignPluginCreator::MultiLevelRoIAlignPluginCreator()
{
    // Declared types are what the ONNX parser converts each attribute to; lengths of 0 / 4 are nominal.
    mFields.emplace_back(kOutputHeight, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kOutputWidth, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kSamplingRatio, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kPoolMode, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kAligned, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kFeatmapStrides, nullptr, PluginFieldType::kFLOAT32, 4);
    mFields.emplace_back(kFinestScale, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kRoiScaleFactor, nullptr, PluginFieldType::kFLOAT32, 1);
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

char const* MultiLevelRoIAlignPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* MultiLevelRoIAlignPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* MultiLevelRoIAlignPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* MultiLevelRoIAlignPluginCreator::getFieldNames() noexcept
{
    return &mCollection;
}

IPluginV3* MultiLevelRoIAlignPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    // Build and runtime phases read the same fields: the ONNX attributes, or getFieldsToSerialize()'s copy.
    try
    {
        MultiLevelRoIAlignAttributes attributes;
        std::string problem;
        if (!parseAttributes(fc, attributes, problem))
        {
            logPluginError(std::string("node '") + (name != nullptr ? name : "") + "': " + problem);
            return nullptr;
        }
        return new MultiLevelRoIAlignPlugin(attributes);
    }
    catch (std::exception const& e)
    {
        logPluginError(std::string("createPlugin failed: ") + e.what());
        return nullptr;
    }
}

} // namespace streamseg
