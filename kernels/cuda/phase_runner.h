// The sequence of kernels behind each phase of CudaCame (Note [Phases] in kernels/cpu_came.h),
// written once over a `launch` callable: CudaCame passes one that queues a CUDA launch on its
// stream; tests/kernels/cuda_emulation_test.cc passes the host emulation, so the kernels run on
// the CPU in exactly the order CudaCame runs them. Included after phase_kernels.cuh.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

#include "kernels/came_math.h"
#include "kernels/cuda/device_types.h"
#include "kernels/cuda/layout.h"
#include "kernels/cuda/phase_kernels.cuh"

namespace came::cuda {

// `launch(grid, threads, kernel, args...)` runs `kernel(args...)` on `grid` blocks of
// `threads` threads and returns false on failure (the caller keeps the reason); every method
// returns false as soon as a launch failed. Launches of zero blocks are left out.
template <class Launch>
class PhaseRunner {
 public:
  PhaseRunner(const PhaseBuffers& b, Launch launch) : b_(b), launch_(launch) {}

  bool GradStats(double* sums, double* grad_sum_sq) {
    return Phase<kGradStats>(nullptr) &&
           Reduce(false, b_.layout->stats_size, sums, b_.slice_sum) &&
           launch_(1u, static_cast<unsigned>(kBlockThreads), TotalKernel,
                   static_cast<const double*>(b_.slice_sum), NumSlices(), grad_sum_sq);
  }
  bool BeginStep(const double* grad_sum_sq, double max_grad_norm) {
    return launch_(1u, 1u, BeginStepKernel, grad_sum_sq, max_grad_norm, b_.step);
  }
  // `groups` has an entry for every group of the layout.
  bool UpdateSecondMoments(const double* sums, std::span<const CameHyper> groups) {
    const int n = b_.layout->num_groups;
    for (int first = 0; first < n; first += kGroupsPerLaunch) {
      GroupBatch batch{};
      batch.first = first;
      batch.count = std::min(kGroupsPerLaunch, n - first);
      for (int k = 0; k < batch.count; ++k) {
        const CameHyper& h = groups[first + k];
        batch.g[k] = {MakeStepScalars<float>(h), h.eps1, h.clip_threshold};
      }
      if (!launch_(1u, static_cast<unsigned>(kGroupsPerLaunch), SetGroupsKernel, batch,
                   b_.groups))
        return false;
    }
    return Stats<kSecondMoment>(sums);
  }
  bool UpdateSquares(double* sum_sq) {
    return Phase<kSquares>(nullptr) && Reduce(true, 0, nullptr, sum_sq);
  }
  bool Momentum(const double* sum_sq, double* sums) {
    return Phase<kMomentum>(sum_sq) && Reduce(true, b_.layout->stats_size, sums, nullptr);
  }
  bool UpdateResiduals(const double* sums) { return Stats<kResidual>(sums); }
  bool Apply() { return Phase<kApply>(nullptr); }
  // One whole local step (LocalStepper's sequence), the per-slice sums in `sums` (stats size)
  // and `sum_sq` (one per slice), the step's scalars in the DeviceStep.
  bool LocalStep(std::span<const CameHyper> groups, double max_grad_norm, double* sums,
                 double* sum_sq) {
    double* grad_sum_sq = &b_.step->grad_sum_sq;
    return GradStats(sums, grad_sum_sq) && BeginStep(grad_sum_sq, max_grad_norm) &&
           UpdateSecondMoments(sums, groups) && UpdateSquares(sum_sq) &&
           Momentum(sum_sq, sums) && UpdateResiduals(sums) && Apply() && MinClip(sum_sq);
  }
  // The smallest update clip scale over the slices into the DeviceStep (StepResult).
  bool MinClip(const double* sum_sq) {
    return launch_(1u, static_cast<unsigned>(kBlockThreads), MinClipKernel, b_.slices,
                   NumSlices(), static_cast<const DeviceGroup*>(b_.groups), sum_sq, b_.step);
  }

 private:
  int64_t NumSlices() const { return static_cast<int64_t>(b_.layout->slices.size()); }
  static unsigned Blocks(int64_t threads) {
    return static_cast<unsigned>((threads + kBlockThreads - 1) / kBlockThreads);
  }

  template <int kPhase>
  bool Phase(const double* sum_sq) {
    if (b_.layout->chunks.empty()) return true;
    PhaseArgs a;
    a.slices = b_.slices;
    a.chunks = b_.chunks;
    a.ptrs = b_.ptrs;
    a.groups = b_.groups;
    a.step = b_.step;
    a.factor = b_.factor;
    a.sum_sq = sum_sq;
    a.row_part = b_.row_part;
    a.col_part = b_.col_part;
    a.chunk_sum = b_.chunk_sum;
    return launch_(static_cast<unsigned>(b_.layout->chunks.size()),
                   static_cast<unsigned>(kBlockThreads), PhaseKernel<kPhase>, a);
  }

  bool Reduce(bool check_skip, int64_t num_stats, double* sums, double* slice_out) {
    const int64_t threads = num_stats + (slice_out != nullptr ? NumSlices() : 0);
    if (threads == 0) return true;
    ReduceArgs a;
    a.slices = b_.slices;
    a.num_slices = NumSlices();
    a.step = b_.step;
    a.check_skip = check_skip;
    a.row_part = b_.row_part;
    a.col_part = b_.col_part;
    a.chunk_sum = b_.chunk_sum;
    a.num_stats = num_stats;
    a.sums = sums;
    a.slice_out = slice_out;
    return launch_(Blocks(threads), static_cast<unsigned>(kBlockThreads), ReduceKernel, a);
  }

  template <int kKind>
  bool Stats(const double* sums) {
    if (b_.layout->stat_blocks.empty()) return true;
    return launch_(static_cast<unsigned>(b_.layout->stat_blocks.size()),
                   static_cast<unsigned>(kBlockThreads), StatsKernel<kKind>, b_.slices,
                   b_.stat_blocks, b_.ptrs, static_cast<const DeviceGroup*>(b_.groups),
                   static_cast<const DeviceStep*>(b_.step), sums, b_.factor);
  }

  PhaseBuffers b_;
  Launch launch_;
};

}  // namespace came::cuda
