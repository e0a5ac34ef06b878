// The fused CAME step on one CUDA device, in the phases of CpuCame (Note [Phases] in
// kernels/cpu_came.h) over the same TensorSlice views, whose pointers are device pointers
// here. A CudaCame is created once per layout; it owns its workspace (sized at creation) and
// the device chunk table (Note [CUDA chunks] in layout.h); every buffer of a slice belongs to
// the caller.
//
// Note [CUDA step state]
// The step's scalars (sum of g^2, grad norm, grad-norm scale, skip flag, factors, clip scales)
// live in device memory and are computed there by small kernels, so a single-rank Step makes
// no host round trip; ReadResult is the only call that waits. Every kernel after GradStats
// reads the skip flag first and does nothing on a skipped (non-finite) step, which therefore
// leaves all state and parameters bitwise unchanged.
//
// Streams, graphs and allocation: every call takes the cudaStream_t to queue on and returns
// at once; nothing synchronizes the device and nothing is allocated after Create. The
// per-group hyperparameters of a step travel as kernel arguments (by value, folded once on
// the host by MakeStepScalars), so a step captured in a CUDA graph replays the values it was
// captured with: to change lr between replays, capture again or update the graph
// (cudaGraphExecUpdate). Slice buffers may move between steps (torch's set_to_none
// gradients): SetBuffers re-uploads the device pointer table only when a pointer changed,
// from pinned memory the CudaCame owns, after waiting (cudaEventSynchronize, not a device
// sync) for the previous upload to have been read. Under stream capture the pointers must be
// those of the previous eager step (run one eager step first, as torch's graph recipes do);
// new ones are refused with kFailedPrecondition.
//
// Thread-safety: one CudaCame is used by one thread at a time.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/came_math.h"
#include "kernels/cpu_came.h"
#include "kernels/cuda/device_types.h"
#include "kernels/cuda/layout.h"

namespace came::cuda {

// A failed call: what kind of failure and a one-line message. The kernels depend on the
// standard library and CUDA only (docs/design.md, "Layers and folders"), so callers convert
// this to absl::Status or a C ABI code.
struct CudaError {
  enum Code { kOk = 0, kInvalidArgument, kFailedPrecondition, kUnavailable, kInternal };
  Code code = kOk;
  std::string message;
  bool ok() const { return code == kOk; }
};

class CudaCame {
 public:
  // Prepares the phases for these slices (valid as CpuCame requires) on `device`: builds and
  // uploads the chunk table and allocates the workspace. Returns null and sets *error
  // (kUnavailable: no such device; kInternal: a CUDA error) on failure.
  static std::unique_ptr<CudaCame> Create(std::vector<TensorSlice> slices, int device,
                                          CudaError* error);
  ~CudaCame();
  CudaCame(const CudaCame&) = delete;
  CudaCame& operator=(const CudaCame&) = delete;

  const Layout& layout() const { return layout_; }
  int device() const { return device_; }
  int num_slices() const { return static_cast<int>(layout_.slices.size()); }
  // As CpuCame's: slice i's row sums start at stats_offset(i), its column sums follow.
  int64_t stats_offset(int i) const { return layout_.slices[i].stats_offset; }
  int64_t stats_size() const { return layout_.stats_size; }
  // Device memory this CudaCame allocated, in bytes.
  int64_t workspace_bytes() const { return workspace_bytes_; }

  // Points the slices at these buffers (the pointer members of each TensorSlice; geometry is
  // ignored). Re-uploads the pointer table only when something changed.
  CudaError SetBuffers(std::span<const TensorSlice> buffers, cudaStream_t stream);

  // The phases of Note [Phases]. `sums` (stats_size()), `grad_sum_sq` (1) and `sum_sq`
  // (one per slice) are device buffers of doubles; between phases the caller may complete
  // the partial sums of split tensors (an all-reduce on the device).
  // Phase 1: partial row/column sums of g^2 to `sums`, the sum of g^2 to *grad_sum_sq.
  CudaError GradStats(double* sums, double* grad_sum_sq, cudaStream_t stream);
  // Starts the step on the device from the complete sum of g^2: the skip flag and the
  // gradient-norm scale (max_grad_norm > 0: clip like clip_grad_norm_).
  CudaError BeginStep(const double* grad_sum_sq, double max_grad_norm, cudaStream_t stream);
  // Phase 2: r and c from complete sums; `groups` holds each group's hyperparameters.
  CudaError UpdateSecondMoments(const double* sums, std::span<const CameHyper> groups,
                                cudaStream_t stream);
  // Phase 3: the partial sum of u^2 of every slice to `sum_sq`.
  CudaError UpdateSquares(double* sum_sq, cudaStream_t stream);
  // Phase 4: clip (from the complete `sum_sq`), momentum, residual partial sums to `sums`.
  CudaError Momentum(const double* sum_sq, double* sums, cudaStream_t stream);
  // Phase 5: R and C from complete residual sums.
  CudaError UpdateResiduals(const double* sums, cudaStream_t stream);
  // Phase 6: the parameters of factored slices.
  CudaError Apply(cudaStream_t stream);

  // Queues one whole step over slices that are whole tensors (LocalStepper's sequence).
  CudaError Step(std::span<const CameHyper> groups, const StepOptions& options,
                 cudaStream_t stream);
  // Waits for `stream` and returns the last Step's result (a host round trip).
  CudaError ReadResult(StepResult* result, cudaStream_t stream);

 private:
  CudaCame(Layout layout, int device);
  CudaError Init(std::span<const TensorSlice> slices);
  CudaError CheckGroups(std::span<const CameHyper> groups) const;
  // Queues what `queue(PhaseRunner&)` launches on `stream` (phase_runner.h).
  template <class F>
  CudaError Run(const char* what, cudaStream_t stream, F&& queue);
  template <typename T>
  CudaError Alloc(T** p, int64_t count);

  Layout layout_;
  int device_;
  int64_t workspace_bytes_ = 0;
  std::vector<void*> allocations_;
  // Device copies of the layout.
  SliceInfo* d_slices_ = nullptr;
  Chunk* d_chunks_ = nullptr;
  StatBlock* d_stat_blocks_ = nullptr;
  SlicePointers* d_ptrs_ = nullptr;
  DeviceGroup* d_groups_ = nullptr;
  DeviceStep* d_step_ = nullptr;
  // Workspace.
  float* d_factor_ = nullptr;
  double* d_row_part_ = nullptr;
  double* d_col_part_ = nullptr;
  double* d_chunk_sum_ = nullptr;
  double* d_slice_sum_ = nullptr;
  double* d_sums_ = nullptr;     // Step's sums
  double* d_sum_sq_ = nullptr;   // Step's per-slice sum of u^2
  PhaseBuffers buffers_;         // the above, for PhaseRunner
  // Pointer uploads and results.
  std::vector<SlicePointers> bound_;  // what d_ptrs_ holds
  std::vector<SlicePointers> next_;   // SetBuffers' candidate table (sized at creation)
  SlicePointers* h_ptrs_ = nullptr;   // pinned staging of the upload
  DeviceStep* h_step_ = nullptr;      // pinned copy for ReadResult
  cudaEvent_t upload_done_ = nullptr;
  bool upload_pending_ = false;
  bool stepped_ = false;
};

}  // namespace came::cuda
