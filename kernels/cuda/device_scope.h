// DeviceScope: makes a CUDA device current for its lifetime and restores the caller's device
// afterwards, so a call from any thread leaves that thread's CUDA state as it found it. The one
// copy for the CUDA kernels, the CUDA communicators and movers. Header only; CUDA runtime API.
#pragma once

#include <cuda_runtime_api.h>

namespace came::cuda {

class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    error_ = previous_ == device ? cudaSuccess : cudaSetDevice(device);
    switched_ = previous_ >= 0 && previous_ != device && error_ == cudaSuccess;
  }
  ~DeviceScope() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

  // The error of making the device current (cudaSuccess when it is).
  cudaError_t error() const { return error_; }

 private:
  int previous_ = -1;
  cudaError_t error_ = cudaSuccess;
  bool switched_ = false;
};

}  // namespace came::cuda
