// The one libnvinfer symbol the plugin library references (for REGISTER_TENSORRT_PLUGIN and
// initLibStreamsegPlugins), for linking against the stand-in headers in this folder. NOT TensorRT.
#include "NvInferRuntime.h"

extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return nullptr;  // no registry here: initLibStreamsegPlugins must report failure, not crash
}
