// The interface behind the C ABI (came_capi.h): one implementation per device kind. The CPU
// one (cpu_backend.cc) runs CpuCame's phases; the CUDA one (kernels/cuda/cuda_backend.cu)
// runs the CUDA kernels and exists only in builds with CUDA (capi_no_cuda.cc stands in
// otherwise and reports CAME_UNAVAILABLE).
//
// came_capi.cc checks every argument the ABI documents (descriptors, pointers present for the
// tensor's kind, group indices, hyperparameters through HyperError) before it calls a backend,
// so backends may assume valid input.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kernels/came_math.h"
#include "kernels/capi/came_capi.h"

namespace came::capi {

// A failed call: a came_status_code and its one-line message.
struct Error {
  int32_t code = CAME_OK;
  std::string message;
  bool ok() const { return code == CAME_OK; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Runs one step (came_optimizer_step); `result` may be null.
  virtual Error Step(std::span<const came_tensor_ptrs> ptrs, std::span<const came_hyper> groups,
                     void* stream, came_step_result* result) = 0;
  // Copies the last step's result (came_optimizer_last_result).
  virtual Error LastResult(came_step_result* result) = 0;
};

// Returns the hyperparameters of a came_hyper as the kernels' CameHyper.
inline CameHyper ToCameHyper(const came_hyper& h) {
  return CameHyper{.lr = h.lr,
                   .eps1 = h.eps1,
                   .eps2 = h.eps2,
                   .clip_threshold = h.clip_threshold,
                   .beta1 = h.beta1,
                   .beta2 = h.beta2,
                   .beta3 = h.beta3,
                   .weight_decay = h.weight_decay};
}

// Creates the CPU backend for these (validated) tensors.
std::unique_ptr<Backend> CreateCpuBackend(std::span<const came_tensor_desc> tensors,
                                          int num_threads, Error* error);

// Creates the CUDA backend on `device`, or sets *error (CAME_UNAVAILABLE without CUDA support
// or device, CAME_INTERNAL for a CUDA error).
std::unique_ptr<Backend> CreateCudaBackend(int device, std::span<const came_tensor_desc> tensors,
                                           Error* error);

// Returns the number of CUDA devices present (0 without CUDA support).
int32_t CudaDeviceCount();

// Returns "sm_90" (the architectures built), or "none" without CUDA support.
const char* CudaBuildInfo();

}  // namespace came::capi
