// Stands in for the CUDA backend in builds without CUDA (libcame_capi.so): every CUDA device
// request is refused with CAME_UNAVAILABLE.
#include <memory>
#include <span>

#include "kernels/capi/backend.h"

namespace came::capi {

std::unique_ptr<Backend> CreateCudaBackend(int /*device*/,
                                           std::span<const came_tensor_desc> /*tensors*/,
                                           Error* error) {
  *error = {CAME_UNAVAILABLE,
            "this build of came has no CUDA kernels (libcame_capi_cuda.so is built when nvcc "
            "is found)"};
  return nullptr;
}

int32_t CudaDeviceCount() { return 0; }

const char* CudaBuildInfo() { return "none"; }

}  // namespace came::capi
