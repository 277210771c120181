// Exercises the MultiLevelRoIAlign plugin's own logic, compiled against TensorRT's real public headers and linked
// against nvinfer_stub.cpp (the one libnvinfer function the plugin calls). Exit status 0 and "ok" when every check
// holds. tests/test_trt_plugin.py builds and runs it once per header version in ../shared/third_party.
#include "multi_level_roi_align_plugin.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

// plugin_registration.cpp
extern "C" void setLoggerFinder(ILoggerFinder* finder);
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" bool initLibStreamsegPlugins(void* logger, char const* libNamespace);


namespace
{
int failures = 0;
int checks = 0;

void check(bool ok, char const* what)
{
    ++checks;
    if (!ok)
    {
        ++failures;
        std::printf("FAIL: %s\n", what);
    }
}

// IDimensionExpr and IExprBuilder forward to implementation objects (apiv::VDimensionExpr / VExprBuilder) that
// libnvinfer normally creates; the test supplies both so that getOutputShapes() runs without the library.
class ExprImpl final : public apiv::VDimensionExpr
{
public:
    ExprImpl(int64_t value, bool constant) : mValue(value), mConstant(constant) {}
    bool isConstant() const override { return mConstant; }
    int64_t getConstantValue() const override { return mConstant ? mValue : std::numeric_limits<int64_t>::min(); }
    bool isSizeTensor() const override { return false; }

private:
    int64_t mValue;
    bool mConstant;
};

class Expr final : public IDimensionExpr
{
public:
    Expr(int64_t value, bool constant) : mExpr(value, constant) { mImpl = &mExpr; }

private:
    ExprImpl mExpr;
};

class BuilderImpl final : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        mOwned.push_back(std::make_unique<Expr>(value, true));
        return mOwned.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;  // the plugin's output shape needs no arithmetic
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }

private:
    std::vector<std::unique_ptr<Expr>> mOwned;
};

class Builder final : public IExprBuilder
{
public:
    Builder() { mImpl = &mBuilder; }

private:
    BuilderImpl mBuilder;
};

// What TensorRT hands over through setLoggerFinder(): the plugin's error messages must arrive here, not on stderr.
class RecordingLogger final : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity == Severity::kERROR)
        {
            errors.emplace_back(msg);
        }
    }
    std::vector<std::string> errors;
};

class Finder final : public ILoggerFinder
{
public:
    ILogger* findLogger() override { return &logger; }
    RecordingLogger logger;
};

// Fields as an ONNX parser may hand them over: ints as INT64, floats as FLOAT64, plus fields the plugin ignores.
struct OnnxFields
{
    int64_t outputHeight = 14, outputWidth = 14, samplingRatio = 0, poolMode = 1, aligned = 1, finestScale = 56;
    std::vector<double> strides{4, 8, 16, 32};
    double roiScaleFactor = 1.0;
    char version[2] = "1";
    std::vector<PluginField> fields;
    PluginFieldCollection collection{};

    PluginFieldCollection const* build()
    {
        fields = {PluginField("output_height", &outputHeight, PluginFieldType::kINT64, 1),
            PluginField("output_width", &outputWidth, PluginFieldType::kINT64, 1),
            PluginField("sampling_ratio", &samplingRatio, PluginFieldType::kINT64, 1),
            PluginField("pool_mode", &poolMode, PluginFieldType::kINT64, 1),
            PluginField("aligned", &aligned, PluginFieldType::kINT64, 1),
            PluginField("featmap_strides", strides.data(), PluginFieldType::kFLOAT64, static_cast<int32_t>(strides.size())),
            PluginField("finest_scale", &finestScale, PluginFieldType::kINT64, 1),
            PluginField("roi_scale_factor", &roiScaleFactor, PluginFieldType::kFLOAT64, 1),
            PluginField("plugin_version", version, PluginFieldType::kCHAR, 1)};
        collection.nbFields = static_cast<int32_t>(fields.size());
        collection.fields = fields.data();
        return &collection;
    }
};

DynamicPluginTensorDesc desc(DataType type, std::vector<int64_t> dims, TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = format;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
    }
    return d;
}

std::map<std::string, double> values(PluginFieldCollection const* fc)
{
    std::map<std::string, double> out;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        for (int32_t j = 0; j < f.length; ++j)
        {
            double v = f.type == PluginFieldType::kINT32 ? static_cast<int32_t const*>(f.data)[j]
                                                         : static_cast<float const*>(f.data)[j];
            out[std::string(f.name) + "[" + std::to_string(j) + "]"] = v;
        }
    }
    return out;
}
} // namespace

int main()
{
    streamseg::MultiLevelRoIAlignPluginCreator creator;
    check(std::strcmp(creator.getPluginName(), "MultiLevelRoIAlign") == 0, "creator name");
    check(std::strcmp(creator.getPluginVersion(), "1") == 0, "creator version");
    check(std::strcmp(creator.getPluginNamespace(), "") == 0, "creator namespace (the ONNX parser looks up \"\")");
    check(creator.getFieldNames()->nbFields == 8, "8 declared fields");

    OnnxFields onnx;
    std::unique_ptr<IPluginV3> plugin(creator.createPlugin("mask_pool", onnx.build(), TensorRTPhase::kBUILD));
    check(plugin != nullptr, "createPlugin from INT64/FLOAT64 fields");
    if (!plugin)
    {
        std::printf("%d of %d checks failed\n", failures, checks);
        return 1;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, "three capability interfaces");
    check(std::strcmp(core->getPluginName(), "MultiLevelRoIAlign") == 0, "plugin name");
    check(build->getNbOutputs() == 1, "one output");

    DataType in[5] = {DataType::kFLOAT, DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF};
    DataType out[1] = {DataType::kFLOAT};
    check(build->getOutputDataTypes(out, 1, in, 5) == 0 && out[0] == DataType::kHALF, "output type = features' type");
    check(build->getOutputDataTypes(out, 1, in, 3) != 0, "wrong input count rejected");

    Builder eb;
    Expr r(-1, false), five(5, true), n(2, true), c(256, true), h(-1, false), w(-1, false);
    DimsExprs inputs[5];
    inputs[0].nbDims = 2;
    inputs[0].d[0] = &r;
    inputs[0].d[1] = &five;
    for (int i = 1; i < 5; ++i)
    {
        inputs[i].nbDims = 4;
        inputs[i].d[0] = &n;
        inputs[i].d[1] = &c;
        inputs[i].d[2] = &h;
        inputs[i].d[3] = &w;
    }
    DimsExprs outputs[1];
    check(build->getOutputShapes(inputs, 5, nullptr, 0, outputs, 1, eb) == 0, "getOutputShapes");
    check(outputs[0].nbDims == 4 && outputs[0].d[0] == &r && outputs[0].d[1] == &c, "output [R, C, ...]");
    check(outputs[0].d[2]->isConstant() && outputs[0].d[2]->getConstantValue() == 14
            && outputs[0].d[3]->getConstantValue() == 14, "output spatial size = output_height/width");

    std::vector<DynamicPluginTensorDesc> io = {desc(DataType::kFLOAT, {-1, 5}), desc(DataType::kHALF, {2, 256, -1, -1}),
        desc(DataType::kHALF, {2, 256, -1, -1}), desc(DataType::kHALF, {2, 256, -1, -1}),
        desc(DataType::kHALF, {2, 256, -1, -1}), desc(DataType::kHALF, {-1, 256, 14, 14})};
    check(build->supportsFormatCombination(0, io.data(), 5, 1), "fp32 rois");
    check(build->supportsFormatCombination(1, io.data(), 5, 1), "fp16 features");
    check(build->supportsFormatCombination(3, io.data(), 5, 1), "fp16 level 2 with fp16 level 0");
    check(build->supportsFormatCombination(5, io.data(), 5, 1), "fp16 output with fp16 features");
    io[0].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(0, io.data(), 5, 1), "fp16 rois refused (coordinates lose precision)");
    io[0].desc.type = DataType::kFLOAT;
    io[2].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(2, io.data(), 5, 1), "mixed feature types refused");
    io[5].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(5, io.data(), 5, 1), "output type must follow the features");
    io[1].desc.format = TensorFormat::kCHW2;
    check(!build->supportsFormatCombination(1, io.data(), 5, 1), "non-linear formats refused");
    io[1].desc.type = DataType::kINT32;
    io[1].desc.format = TensorFormat::kLINEAR;
    check(!build->supportsFormatCombination(1, io.data(), 5, 1), "int32 features refused");

    std::vector<DynamicPluginTensorDesc> cfg = {desc(DataType::kFLOAT, {-1, 5}), desc(DataType::kFLOAT, {1, 8, 64, 64}),
        desc(DataType::kFLOAT, {1, 8, 32, 32}), desc(DataType::kFLOAT, {1, 8, 16, 16}), desc(DataType::kFLOAT, {1, 8, 8, 8})};
    DynamicPluginTensorDesc outDesc = desc(DataType::kFLOAT, {-1, 8, 14, 14});
    check(build->configurePlugin(cfg.data(), 5, &outDesc, 1) == 0, "configurePlugin");
    cfg[0] = desc(DataType::kFLOAT, {-1, 4});
    check(build->configurePlugin(cfg.data(), 5, &outDesc, 1) != 0, "rois [R, 4] refused");

    // zero RoIs: nothing is launched, null buffers are fine
    PluginTensorDesc rt[5];
    for (int i = 0; i < 5; ++i)
    {
        rt[i] = cfg[i].desc;
    }
    rt[0].dims.d[0] = 0;
    rt[0].dims.d[1] = 5;
    PluginTensorDesc rtOut = outDesc.desc;
    rtOut.dims.d[0] = 0;
    void const* ins[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    void* outs[1] = {nullptr};
    check(runtime->onShapeChange(rt, 5, &rtOut, 1) == 0, "onShapeChange");
    check(runtime->enqueue(rt, &rtOut, ins, outs, nullptr, nullptr) == 0, "zero RoIs: enqueue is a no-op");

    // serialization round trip: runtime-phase plugin from getFieldsToSerialize() serializes identically
    auto before = values(runtime->getFieldsToSerialize());
    check(before.at("output_height[0]") == 14 && before.at("sampling_ratio[0]") == 0 && before.at("aligned[0]") == 1
            && before.at("featmap_strides[3]") == 32 && before.at("finest_scale[0]") == 56
            && before.at("pool_mode[0]") == 1 && before.at("roi_scale_factor[0]") == 1,
        "serialized fields carry the attributes");
    std::unique_ptr<IPluginV3> restored(
        creator.createPlugin("mask_pool", runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
    check(restored != nullptr, "createPlugin(kRUNTIME) from serialized fields");
    if (restored)
    {
        auto* rr = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(values(rr->getFieldsToSerialize()) == before, "round trip keeps every field");
    }
    std::unique_ptr<IPluginV3> cloned(plugin->clone());
    check(cloned != nullptr && cloned.get() != plugin.get(), "clone");
    std::unique_ptr<IPluginV3> attached(runtime->attachToContext(nullptr));
    check(attached != nullptr, "attachToContext");

    // invalid attributes are refused at creation (nullptr), with the node's name on TensorRT's logger
    Finder finder;
    setLoggerFinder(&finder);
    OnnxFields maxPool;
    maxPool.poolMode = 0;
    check(creator.createPlugin("x", maxPool.build(), TensorRTPhase::kBUILD) == nullptr, "pool_mode 0 refused");
    OnnxFields badStrides;
    badStrides.strides = {4, 8, 12, 32};
    check(creator.createPlugin("x", badStrides.build(), TensorRTPhase::kBUILD) == nullptr, "non-pyramid strides refused");
    OnnxFields tooMany;
    tooMany.strides = {4, 8, 16, 32, 64, 128, 256, 512, 1024};
    check(creator.createPlugin("x", tooMany.build(), TensorRTPhase::kBUILD) == nullptr, "9 levels refused");
    OnnxFields zeroSize;
    zeroSize.outputWidth = 0;
    check(creator.createPlugin("x", zeroSize.build(), TensorRTPhase::kBUILD) == nullptr, "output_width 0 refused");
    check(finder.logger.errors.size() == 4 && finder.logger.errors[0].find("node 'x'") != std::string::npos
            && finder.logger.errors[0].find("MultiLevelRoIAlign plugin") == 0,
        "each refusal is one error on the logger found through setLoggerFinder");
    setLoggerFinder(nullptr);

    // the loadLibrary entry point hands out the creator
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    check(count == 1 && creators[0] != nullptr, "getCreators returns one creator");
    check(std::strcmp(static_cast<IPluginCreatorV3One*>(creators[0])->getPluginName(), "MultiLevelRoIAlign") == 0,
        "getCreators' creator is ours");

    check(!initLibStreamsegPlugins(nullptr, ""), "initLibStreamsegPlugins without a registry reports failure");

    std::printf("%s: %d checks, %d failed\n", failures ? "FAILED" : "ok", checks, failures);
    return failures ? 1 : 0;
}
