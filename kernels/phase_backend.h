// PhaseBackend: one rank's CAME phases (Note [Phases] in kernels/cpu_came.h) on one kind of
// memory, behind the small interface that the single step sequence (kernels/step_sequence.h)
// drives for every backend: the CPU loops (CpuPhases, kernels/cpu_came.h) and the CUDA
// kernels (CudaPhases, kernels/cuda/cuda_phases.h).
//
// Note [Phase backends]
// A backend owns its step's statistic buffers: the partial row/column sums of phases 1 and 4
// (stats_size() doubles, slice i's at stats_offset(i)), the sum of g^2 (one double) and the
// per-slice sums of u^2 (num_slices() doubles). They live in the backend's memory kind: host
// memory for the CPU, device memory for CUDA, where they stay for the whole step. Between
// phases the sequence lets the caller complete the partial sums of split tensors in place
// (an all-reduce by the engine on the backend's memory); a single-process step completes
// nothing. The step's decisions (skip on a non-finite gradient, the gradient-norm scale,
// each slice's clip scale) are made by the backend from the completed buffers, on the host
// or on the device; ReadDecision brings the skip decision to the host (for CUDA the one
// host round trip of a step) and Finish waits until the step's work is done.
//
// Every call returns a PhaseStatus instead of absl::Status: the kernels depend on the
// standard library (and CUDA) only (docs/design.md, "Layers and folders").
//
// Thread-safety: a backend is used by one thread at a time.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "kernels/came_math.h"

namespace came {

enum class MemoryKind : uint8_t { kHost, kDevice };

// The result of a backend call: a code and a one-line message.
struct PhaseStatus {
  enum Code { kOk = 0, kInvalidArgument, kFailedPrecondition, kUnavailable, kInternal };
  Code code = kOk;
  std::string message;
  bool ok() const { return code == kOk; }
};

// The backend-owned statistic buffers of a step (Note [Phase backends]), in memory().
struct StepBuffers {
  double* sums = nullptr;         // stats_size(): partial row/column sums (phases 1 and 4)
  double* grad_sum_sq = nullptr;  // 1: the sum of g^2 (phase 1)
  double* sum_sq = nullptr;       // num_slices(): per-slice sums of u^2 (phase 3)
};

// What a step decided once the sum of g^2 was complete.
struct StepDecision {
  bool skipped = false;     // a non-finite gradient: the step changes nothing
  double grad_norm = 0.0;   // sqrt of the complete sum of g^2
  double grad_scale = 1.0;  // the gradient-norm clip factor
};

class PhaseBackend {
 public:
  virtual ~PhaseBackend() = default;

  virtual MemoryKind memory() const = 0;
  virtual int num_slices() const = 0;
  // Layout of StepBuffers::sums: slice i's row sums start at stats_offset(i), its column
  // sums follow; unfactored slices have none.
  virtual int64_t stats_offset(int i) const = 0;
  virtual int64_t stats_size() const = 0;
  virtual StepBuffers buffers() = 0;

  // Phase 1: partial sums of g^2 into buffers().sums and the sum of g^2 into grad_sum_sq.
  virtual PhaseStatus GradStats() = 0;
  // Decides the step from the complete sum of g^2 (max_grad_norm > 0: clip like
  // clip_grad_norm_). After a skip every later phase leaves all state unchanged.
  virtual PhaseStatus BeginStep(double max_grad_norm) = 0;
  // Brings BeginStep's decision to the host (a device backend waits for it).
  virtual PhaseStatus ReadDecision(StepDecision* decision) = 0;
  // Phase 2: r and c from complete sums. `groups` (each group's hyperparameters) must stay
  // valid until Finish: the later phases use it too.
  virtual PhaseStatus UpdateSecondMoments(std::span<const CameHyper> groups) = 0;
  // Phase 3: partial sums of u^2 into buffers().sum_sq.
  virtual PhaseStatus UpdateSquares() = 0;
  // Phase 4: each slice's clip scale from its complete sum of u^2, the momentum, and the
  // residuals' partial sums into buffers().sums.
  virtual PhaseStatus Momentum() = 0;
  // Phase 5: R and C from complete residual sums.
  virtual PhaseStatus UpdateResiduals() = 0;
  // Phase 6: the parameter update of factored slices.
  virtual PhaseStatus Apply() = 0;
  // Waits until the step's work is done; sets the smallest clip scale over the slices.
  virtual PhaseStatus Finish(double* min_clip_scale) = 0;
};

}  // namespace came
