#include "kernels/step_sequence.h"

#include <chrono>

namespace came {

PhaseStatus RunStepSequence(PhaseBackend& backend, std::span<const CameHyper> groups,
                            double max_grad_norm, SumCompleter* completer,
                            SequenceResult* result) {
  using Clock = std::chrono::steady_clock;
  *result = SequenceResult{};
  auto timed = [](double* seconds, auto&& call) {
    const auto t0 = Clock::now();
    PhaseStatus s = call();
    *seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    return s;
  };
  auto kernel = [&](auto&& call) { return timed(&result->kernel_seconds, call); };
  auto complete = [&](SumKind kind) {
    if (completer == nullptr) return PhaseStatus{};
    return timed(&result->complete_seconds, [&] { return completer->Complete(kind); });
  };

  PhaseStatus s;
  if (!(s = kernel([&] { return backend.GradStats(); })).ok()) return s;
  if (!(s = complete(SumKind::kGradStats)).ok()) return s;
  if (!(s = kernel([&] { return backend.BeginStep(max_grad_norm); })).ok()) return s;
  if (!(s = backend.ReadDecision(&result->decision)).ok()) return s;
  if (result->decision.skipped) return s;
  if (!(s = kernel([&] { return backend.UpdateSecondMoments(groups); })).ok()) return s;
  if (!(s = kernel([&] { return backend.UpdateSquares(); })).ok()) return s;
  if (!(s = complete(SumKind::kSquares)).ok()) return s;
  if (!(s = kernel([&] { return backend.Momentum(); })).ok()) return s;
  if (!(s = complete(SumKind::kResiduals)).ok()) return s;
  if (!(s = kernel([&] { return backend.UpdateResiduals(); })).ok()) return s;
  if (!(s = kernel([&] { return backend.Apply(); })).ok()) return s;
  return kernel([&] { return backend.Finish(&result->min_clip_scale); });
}

}  // namespace came
