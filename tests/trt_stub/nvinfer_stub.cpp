// NOT TensorRT: a stand-in libnvinfer.so holding the one library function the plugin calls (getPluginRegistry, from
// initLibStreamsegPlugins and REGISTER_TENSORRT_PLUGIN), compiled against TensorRT's real headers. Everything else
// the plugin uses is inline in those headers. It lets the plugin library link and the logic test run where
// TensorRT's libraries cannot be installed.
#include <NvInferRuntime.h>

extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return nullptr;  // no registry here: initLibStreamsegPlugins must report failure, not crash
}
