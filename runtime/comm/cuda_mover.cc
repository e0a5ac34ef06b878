#include "runtime/comm/cuda_mover.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/cuda/device_scope.h"

namespace came::comm {
namespace {

absl::Status CudaStatus(const char* what, cudaError_t e) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

class CudaMover final : public MemoryMover {
 public:
  CudaMover(int device, cudaStream_t stream) : device_(device), stream_(stream) {}

  absl::StatusOr<void*> AllocateHost(size_t bytes) override {
    void* p = nullptr;
    if (cudaError_t e = cudaMallocHost(&p, bytes == 0 ? 1 : bytes); e != cudaSuccess)
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", bytes,
                       " bytes of page-locked staging memory: ", cudaGetErrorString(e)));
    return p;
  }
  void FreeHost(void* host) override { cudaFreeHost(host); }
  absl::Status ToHost(void* host, const void* buf, size_t bytes) override {
    return Copy(host, buf, bytes, cudaMemcpyDeviceToHost);
  }
  absl::Status FromHost(void* buf, const void* host, size_t bytes) override {
    return Copy(buf, host, bytes, cudaMemcpyHostToDevice);
  }
  absl::Status Wait(absl::Time deadline) override {
    for (absl::Duration pause = absl::Microseconds(2);;
         pause = std::min(pause * 2, absl::Milliseconds(1))) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return absl::OkStatus();
      if (e != cudaErrorNotReady) return CudaStatus("staged copy", e);
      if (absl::Now() >= deadline)
        return absl::DeadlineExceededError(
            "a staged copy between device and host missed its deadline");
      absl::SleepFor(pause);
    }
  }

 private:
  absl::Status Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    ::came::cuda::DeviceScope scope(device_);
    const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, stream_);
    if (e != cudaSuccess) return CudaStatus("cudaMemcpyAsync", e);
    return absl::OkStatus();
  }

  const int device_;
  const cudaStream_t stream_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryMover>> MakeCudaMover(int device, CUstream_st* stream) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count)
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " is not present (this machine has ", count, ")"));
  return std::unique_ptr<MemoryMover>(std::make_unique<CudaMover>(device, stream));
}

}  // namespace came::comm
