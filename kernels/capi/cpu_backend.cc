// The CPU backend of the C ABI: CpuCame's phases in LocalStepper's sequence over whole tensors.
// The CpuCame (and its thread team) lives as long as the optimizer; a step only re-points the
// slices whose buffers moved since the previous step, without allocating.
#include <algorithm>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "kernels/came_math.h"
#include "kernels/capi/backend.h"
#include "kernels/capi/tensor_slices.h"
#include "kernels/cpu_came.h"
#include "kernels/thread_pool.h"

namespace came::capi {
namespace {

// Returns 1 + the largest group index (at least 1).
size_t NumGroups(std::span<const came_tensor_desc> tensors) {
  int n = 1;
  for (const came_tensor_desc& d : tensors) n = std::max(n, d.group + 1);
  return static_cast<size_t>(n);
}

bool SamePtrs(const came_tensor_ptrs& a, const came_tensor_ptrs& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(std::span<const came_tensor_desc> tensors, int num_threads)
      : descs_(tensors.begin(), tensors.end()),
        cpu_(WholeTensorSlices(tensors), num_threads > 0 ? num_threads : HardwareThreads()),
        stepper_(cpu_),
        bound_(tensors.size()),
        hyper_(NumGroups(tensors)) {}

  Error Step(std::span<const came_tensor_ptrs> ptrs, std::span<const came_hyper> groups,
             void* /*stream*/, came_step_result* result) override {
    for (size_t i = 0; i < ptrs.size(); ++i) {
      if (SamePtrs(bound_[i], ptrs[i])) continue;
      TensorSlice buffers;
      BindBuffers(descs_[i], ptrs[i], buffers);
      cpu_.RebindBuffers(static_cast<int>(i), buffers);
      bound_[i] = ptrs[i];
    }
    const size_t used = std::min(hyper_.size(), groups.size());
    for (size_t k = 0; k < used; ++k) hyper_[k] = ToCameHyper(groups[k]);
    const StepResult r = stepper_.Step(hyper_, StepOptions{});
    last_.skipped = r.skipped ? 1 : 0;
    last_.grad_norm = r.grad_norm;
    if (result != nullptr) *result = last_;
    return {};
  }

  Error LastResult(came_step_result* result) override {
    *result = last_;
    return {};
  }

 private:
  const std::vector<came_tensor_desc> descs_;
  CpuCame cpu_;
  LocalStepper stepper_;
  std::vector<came_tensor_ptrs> bound_;  // the buffers each slice points at (zero: none yet)
  std::vector<CameHyper> hyper_;         // this step's groups, sized at creation
  came_step_result last_{};
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(std::span<const came_tensor_desc> tensors,
                                          int num_threads, Error* error) {
  *error = {};
  return std::make_unique<CpuBackend>(tensors, num_threads);
}

}  // namespace came::capi
