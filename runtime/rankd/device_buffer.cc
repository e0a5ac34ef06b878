#include "runtime/rankd/device_buffer.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"

namespace came::rankd {
namespace {

absl::Status CudaFailure(const std::string& what, cudaError_t e) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

absl::StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Create(int device, size_t bytes) {
  if (absl::Status s = CheckDevice(device); !s.ok()) return s;
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess)
    return CudaFailure(absl::StrCat("cannot use CUDA device ", device), e);
  const size_t alloc_bytes = bytes == 0 ? 1 : bytes;
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaError_t e = cudaMemGetInfo(&free_bytes, &total_bytes); e != cudaSuccess)
    return CudaFailure(absl::StrCat("cannot query the memory of CUDA device ", device), e);
  const auto exhausted = [&] {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a buffer of ", alloc_bytes, " bytes does not fit in CUDA device ", device, " (",
        free_bytes, " of ", total_bytes, " bytes free): use more ranks or a smaller model"));
  };
  if (alloc_bytes > free_bytes) return exhausted();
  void* data = nullptr;
  if (cudaError_t e = cudaMalloc(&data, alloc_bytes); e != cudaSuccess) {
    (void)cudaGetLastError();  // an allocation failure is not sticky: clear it
    if (e == cudaErrorMemoryAllocation) return exhausted();
    return CudaFailure(absl::StrCat("cudaMalloc of ", alloc_bytes, " bytes on device ", device), e);
  }
  cudaIpcMemHandle_t handle;
  cudaError_t e = cudaMemset(data, 0, alloc_bytes);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();  // zeroed before the trainer maps it
  if (e == cudaSuccess) e = cudaIpcGetMemHandle(&handle, data);
  if (e != cudaSuccess) {
    cudaFree(data);
    return CudaFailure(absl::StrCat("cannot export a buffer of device ", device), e);
  }
  return std::unique_ptr<DeviceBuffer>(new DeviceBuffer(
      device, data, bytes, std::string(reinterpret_cast<const char*>(&handle), sizeof handle)));
}

DeviceBuffer::~DeviceBuffer() {
  if (cudaSetDevice(device_) == cudaSuccess) cudaFree(data_);
}

}  // namespace came::rankd
