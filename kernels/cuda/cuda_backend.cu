// The CUDA backend of the C ABI (kernels/capi/backend.h): one CudaCame over whole tensors,
// created once per layout. A step re-points the slices (the pointer table is re-uploaded only
// when a buffer moved), queues CudaCame::Step on the caller's stream and returns; the result
// stays on the device until LastResult asks for it.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/came_math.h"
#include "kernels/capi/backend.h"
#include "kernels/capi/tensor_slices.h"
#include "kernels/cpu_came.h"
#include "kernels/cuda/cuda_came.h"
#include "kernels/cuda/probe.h"

namespace came::capi {
namespace {

Error FromCuda(const cuda::CudaError& e) {
  switch (e.code) {
    case cuda::CudaError::kOk: return {};
    case cuda::CudaError::kInvalidArgument:
    case cuda::CudaError::kFailedPrecondition: return {CAME_INVALID_ARGUMENT, e.message};
    case cuda::CudaError::kUnavailable: return {CAME_UNAVAILABLE, e.message};
    case cuda::CudaError::kInternal: break;
  }
  return {CAME_INTERNAL, e.message};
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::span<const came_tensor_desc> tensors, std::vector<TensorSlice> slices,
              std::unique_ptr<cuda::CudaCame> came)
      : descs_(tensors.begin(), tensors.end()),
        slices_(std::move(slices)),
        came_(std::move(came)),
        hyper_(came_->layout().num_groups) {}

  Error Step(std::span<const came_tensor_ptrs> ptrs, std::span<const came_hyper> groups,
             void* stream, came_step_result* result) override {
    if (result != nullptr)
      return {CAME_INVALID_ARGUMENT,
              "on a CUDA optimizer `result` must be NULL (the step is queued on the stream; "
              "call came_optimizer_last_result for it)"};
    const auto s = static_cast<cudaStream_t>(stream);
    for (size_t i = 0; i < ptrs.size(); ++i) BindBuffers(descs_[i], ptrs[i], slices_[i]);
    if (Error e = FromCuda(came_->SetBuffers(slices_, s)); !e.ok()) return e;
    const size_t used = std::min(hyper_.size(), groups.size());
    for (size_t k = 0; k < used; ++k) hyper_[k] = ToCameHyper(groups[k]);
    if (Error e = FromCuda(came_->Step(hyper_, StepOptions{}, s)); !e.ok()) return e;
    last_stream_ = s;
    return {};
  }

  Error LastResult(came_step_result* result) override {
    StepResult r;
    if (Error e = FromCuda(came_->ReadResult(&r, last_stream_)); !e.ok()) return e;
    result->skipped = r.skipped ? 1 : 0;
    result->grad_norm = r.grad_norm;
    return {};
  }

 private:
  const std::vector<came_tensor_desc> descs_;
  std::vector<TensorSlice> slices_;  // bound to this step's buffers (sized at creation)
  std::unique_ptr<cuda::CudaCame> came_;
  std::vector<CameHyper> hyper_;     // this step's groups, sized at creation
  cudaStream_t last_stream_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> CreateCudaBackend(int device, std::span<const came_tensor_desc> tensors,
                                           Error* error) {
  *error = {};
  std::vector<TensorSlice> slices = WholeTensorSlices(tensors);
  cuda::CudaError e;
  std::unique_ptr<cuda::CudaCame> came = cuda::CudaCame::Create(slices, device, &e);
  if (came == nullptr) {
    *error = FromCuda(e);
    return nullptr;
  }
  return std::make_unique<CudaBackend>(tensors, std::move(slices), std::move(came));
}

int32_t CudaDeviceCount() { return cuda::DeviceCount(); }

const char* CudaBuildInfo() { return "sm_90"; }

}  // namespace came::capi
