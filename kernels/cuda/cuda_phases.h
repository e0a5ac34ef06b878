// CudaPhases: CudaCame's phases as a PhaseBackend (Note [Phase backends] in
// kernels/phase_backend.h), so that the one step sequence (kernels/step_sequence.h) runs the
// CUDA kernels. Its statistic buffers are device memory it allocates once; the phases queue
// on one caller's stream and return at once. ReadDecision and Finish each copy a few doubles
// to page-locked host memory and wait for the stream, polling it until a deadline
// (kUnavailable when the device does not finish in time, never a hang): ReadDecision is the
// skip decision (the sum of g^2), Finish the per-slice sums of u^2 whose clip scales give
// the smallest one, and the end of the step. The device decides the step itself (BeginStep's
// kernel, from the same complete sum); the host repeats the decision from the same double with
// the same functions (came_math.h) only to report it and to stop early on a skip.
//
// Ownership: borrows the CudaCame and the stream, which must outlive it. Thread-safety: one
// thread at a time.
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <memory>
#include <span>

#include "kernels/cuda/cuda_came.h"
#include "kernels/phase_backend.h"

namespace came::cuda {

class CudaPhases final : public PhaseBackend {
 public:
  // Allocates the statistic buffers on came's device. Returns null and sets *error on failure.
  static std::unique_ptr<CudaPhases> Create(CudaCame& came, cudaStream_t stream,
                                            std::chrono::milliseconds wait_timeout,
                                            CudaError* error);
  ~CudaPhases() override;
  CudaPhases(const CudaPhases&) = delete;
  CudaPhases& operator=(const CudaPhases&) = delete;

  cudaStream_t stream() const { return stream_; }
  MemoryKind memory() const override { return MemoryKind::kDevice; }
  int num_slices() const override { return came_.num_slices(); }
  int64_t stats_offset(int i) const override { return came_.stats_offset(i); }
  int64_t stats_size() const override { return came_.stats_size(); }
  StepBuffers buffers() override { return {d_sums_, d_grad_sum_sq_, d_sum_sq_}; }

  PhaseStatus GradStats() override;
  PhaseStatus BeginStep(double max_grad_norm) override;
  PhaseStatus ReadDecision(StepDecision* decision) override;
  PhaseStatus UpdateSecondMoments(std::span<const CameHyper> groups) override;
  PhaseStatus UpdateSquares() override;
  PhaseStatus Momentum() override;
  PhaseStatus UpdateResiduals() override;
  PhaseStatus Apply() override;
  PhaseStatus Finish(double* min_clip_scale) override;

 private:
  CudaPhases(CudaCame& came, cudaStream_t stream, std::chrono::milliseconds wait_timeout);
  // Copies `count` doubles from the device to h_ and waits for the stream.
  PhaseStatus Download(const double* from, int64_t count, const char* what);

  CudaCame& came_;
  const cudaStream_t stream_;
  const std::chrono::milliseconds wait_timeout_;
  double* d_sums_ = nullptr;
  double* d_grad_sum_sq_ = nullptr;
  double* d_sum_sq_ = nullptr;
  double* h_ = nullptr;  // page-locked, max(1, num_slices()) doubles
  std::span<const CameHyper> groups_;
  double max_grad_norm_ = 0.0;
  StepDecision decision_;
};

}  // namespace came::cuda
