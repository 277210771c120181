// How TensorRT finds the plugin. Two builds of the same sources (see CMakeLists.txt):
//
//  libstreamseg_trt_plugin.so         exports getCreators() / setLoggerFinder(), the entry points that
//                                     IPluginRegistry::loadLibrary() looks for: trtexec --dynamicPlugins,
//                                     tensorrt.get_plugin_registry().load_library(), plugins serialized into
//                                     version-compatible engines (--setPluginsToSerialize). It registers nothing
//                                     on load, so loadLibrary() never meets a duplicate.
//  libstreamseg_trt_plugin_autoreg.so registers its creator the moment it is loaded (REGISTER_TENSORRT_PLUGIN):
//                                     trtexec --staticPlugins, LD_PRELOAD, DeepStream's custom-lib-path, Triton's
//                                     TensorRT backend plugin list, ctypes.CDLL in Python.
//
// Both also export initLibStreamsegPlugins(), the counterpart of initLibNvInferPlugins(), for applications that
// link the library and want to register explicitly.

#include "multi_level_roi_align_plugin.h"

#include <atomic>

#if defined(_MSC_VER)
#define STREAMSEG_EXPORT __declspec(dllexport)
#else
#define STREAMSEG_EXPORT __attribute__((visibility("default")))
#endif

namespace
{
streamseg::MultiLevelRoIAlignPluginCreator& creatorInstance()
{
    static streamseg::MultiLevelRoIAlignPluginCreator creator;
    return creator;
}
} // namespace

#if defined(STREAMSEG_TRT_AUTO_REGISTER)
using streamseg::MultiLevelRoIAlignPluginCreator;
REGISTER_TENSORRT_PLUGIN(MultiLevelRoIAlignPluginCreator);
#endif

extern "C"
{

STREAMSEG_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    streamseg::setPluginLoggerFinder(finder);
}

STREAMSEG_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creatorInstance()};
    nbCreators = 1;
    return creators;
}

// Register the creator in the global registry under `libNamespace` ("" is what the ONNX parser looks up).
// Returns true if it is registered afterwards (also when it already was, e.g. by the autoreg library).
STREAMSEG_EXPORT bool initLibStreamsegPlugins(void* /*logger*/, char const* libNamespace)
{
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr)
    {
        return false;
    }
    static std::atomic<bool> done{false};
    if (done.exchange(true))
    {
        return true;
    }
#if defined(STREAMSEG_TRT_AUTO_REGISTER)
    (void) libNamespace;
    return true;  // already registered on load
#else
    return registry->registerCreator(creatorInstance(), libNamespace != nullptr ? libNamespace : "");
#endif
}

} // extern "C"
