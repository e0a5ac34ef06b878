// The one sequence of a CAME step's phases and the completions of partial sums between them
// (docs/design.md, "One optimizer step", steps 3-7), for every PhaseBackend
// (Note [Phase backends]). LocalStepper (one process) runs it with no completer; ShardedCame
// runs it with a completer that all-reduces the packed sums of split tensors
// (Note [Split tensors] in runtime/sharded_came.h). The gradient reduce-scatter before it and
// the parameter all-gather after it are the engine's.
#pragma once

#include <span>

#include "kernels/came_math.h"
#include "kernels/phase_backend.h"

namespace came {

// Which partial sums a completion is about, in the order of a step.
enum class SumKind : uint8_t {
  kGradStats,  // buffers().sums of phase 1 and buffers().grad_sum_sq
  kSquares,    // buffers().sum_sq of phase 3
  kResiduals,  // buffers().sums of phase 4
};

// Completes the backend's partial sums across ranks, in place in the backend's buffers.
class SumCompleter {
 public:
  virtual ~SumCompleter() = default;
  virtual PhaseStatus Complete(SumKind kind) = 0;
};

struct SequenceResult {
  StepDecision decision;
  double min_clip_scale = 1.0;  // only when not skipped
  double kernel_seconds = 0.0;  // host time spent queueing or running phases
  double complete_seconds = 0.0;  // host time spent in the completer
};

// Runs phases 1-6 of one step on `backend` with `groups`' hyperparameters, calling
// `completer` (may be null: nothing to complete) after phases 1, 3 and 4. Stops after
// BeginStep on a skipped step. The first failure is returned; the backend's state is then
// undefined.
PhaseStatus RunStepSequence(PhaseBackend& backend, std::span<const CameHyper> groups,
                            double max_grad_norm, SumCompleter* completer,
                            SequenceResult* result);

}  // namespace came
