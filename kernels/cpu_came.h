// The fused CAME step on the CPU, in float32 math, split into the phases that the sharded
// engine runs with collectives in between (docs/design.md, "One optimizer step").
//
// Note [Phases]
// One step over a rank's slices is:
//   1. GradStats          partial row/column sums of g^2 of every factored slice, the sum of
//                         g^2 and a finiteness flag;            -> complete sums across ranks
//   2. UpdateSecondMoments (host, O(rows + cols)) r, c EMAs and their factors;
//   3. UpdateSquares      sum of u^2 per slice (unfactored slices update v here);
//                                                               -> complete sums across ranks
//   4. Momentum           clip, momentum, partial row/column sums of the residual; unfactored
//                         slices are finished here;             -> complete sums across ranks
//   5. UpdateResiduals    (host) R, C EMAs and their factors;
//   6. Apply              parameter update of factored slices, written in the param dtype.
// The eps1 that the reference adds to every g^2 is added to the completed mean instead, and
// a global gradient scale s (gradient-norm clipping) multiplies g^2 sums by s^2, so phase 1
// runs before the scale is known. Between phases the caller completes the partial sums of
// slices that are parts of a larger tensor (a no-op when every slice is a whole tensor).
// The sequence is written once, in kernels/step_sequence.h, for every backend
// (Note [Phase backends]); LocalStepper runs it for one process.
//
// Memory per step: every phase streams its slices once (g three times in all, m twice, the
// parameter once); nothing is allocated after construction.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kernels/came_math.h"
#include "kernels/cpu_loops.h"
#include "kernels/dtype.h"
#include "kernels/geometry.h"
#include "kernels/phase_backend.h"
#include "kernels/thread_pool.h"

namespace came {

// The part [begin, end) of one tensor that this CpuCame updates, with views of its buffers.
// All pointers are borrowed; the buffers must outlive the CpuCame that uses them.
struct TensorSlice {
  TensorGeometry geom;       // of the whole tensor
  int64_t begin = 0;         // first element (flat, row-major)
  int64_t end = 0;           // one past the last
  int group = 0;             // parameter group: index into the hyperparameters of a step
  const void* grad = nullptr;  // element `begin` of the gradient
  DType grad_dtype = DType::kFloat32;
  float* master = nullptr;   // fp32 parameter values of [begin, end), updated in place
  void* param = nullptr;     // optional copy in param_dtype to refresh (nullptr: none)
  DType param_dtype = DType::kFloat32;
  float* exp_avg = nullptr;  // momentum of [begin, end)
  float* exp_avg_sq = nullptr;  // unfactored only: second moment of [begin, end)
  // Factored only: the statistics of the WHOLE tensor (rows() and cols() entries).
  float* exp_avg_sq_row = nullptr;
  float* exp_avg_sq_col = nullptr;
  float* exp_avg_res_row = nullptr;
  float* exp_avg_res_col = nullptr;

  int64_t size() const { return end - begin; }
};

// What phase 1 saw of the gradient.
struct GradSummary {
  double sum_sq = 0.0;  // sum of g^2 over all slices (before any scale)
  bool finite() const;
};

class CpuCame {
 public:
  // Prepares the phases for these slices on `num_threads` threads (the caller being one).
  // Slices must be valid (begin < end <= numel, pointers set for their kind). `loops` picks
  // an instruction set's loops (tests of every ISA); null: the best this CPU runs.
  CpuCame(std::vector<TensorSlice> slices, int num_threads,
          const cpu::CpuLoops* loops = nullptr);
  ~CpuCame();

  const std::vector<TensorSlice>& slices() const { return slices_; }

  // Points slice i at other buffers of the same tensor between steps: copies only the buffer
  // pointers of `buffers` (grad, master, param, exp_avg*), keeping the geometry, range, group
  // and dtypes fixed at construction. Allocates nothing.
  void RebindBuffers(int i, const TensorSlice& buffers);
  int num_threads() const { return team_->size(); }
  const char* isa() const { return loops_.isa; }

  // Layout of the factored partial sums (phases 1 and 4): slice i's row sums start at
  // stats_offset(i) (rows() entries), its column sums follow (cols() entries). Unfactored
  // slices have none.
  int64_t stats_offset(int i) const { return stats_offset_[i]; }
  int64_t stats_size() const { return stats_size_; }

  // Phase 1: writes partial row/column sums of g^2 to `sums` (stats_size()).
  GradSummary GradStats(std::span<double> sums);

  // Phase 2: updates r and c from complete sums; `groups` holds each group's hyperparameters
  // for this step and `grad_scale` the global gradient scale (1 for none).
  void UpdateSecondMoments(std::span<const double> sums, std::span<const CameHyper> groups,
                           double grad_scale);

  // Phase 3: writes the partial sum of u^2 of every slice to sum_sq (one per slice).
  void UpdateSquares(std::span<double> sum_sq);

  // Phase 4: clip_scale[i] is slice i's clip scale (ClipScale of its tensor's complete sum of
  // u^2); writes partial row/column sums of the residual to `sums`.
  void Momentum(std::span<const double> clip_scale, std::span<double> sums);

  // Phase 5: updates R and C from complete residual sums.
  void UpdateResiduals(std::span<const double> sums);

  // Phase 6: updates the parameters of factored slices.
  void Apply();

 private:
  struct Run {  // a contiguous part of one slice that one thread handles
    int slice;
    int64_t begin, end;  // tensor element coordinates
  };
  void ReduceThreadSums(std::span<double> out, int64_t count);
  void ComputeFactors(const float* row, const float* col, const TensorGeometry& g, float* row_f,
                      float* col_f);

  std::vector<TensorSlice> slices_;
  const cpu::CpuLoops& loops_;
  std::unique_ptr<ThreadTeam> team_;
  std::vector<std::vector<Run>> runs_;  // per thread
  std::vector<int64_t> stats_offset_;
  int64_t stats_size_ = 0;
  std::vector<double> thread_sums_;     // per thread: max(stats_size_, slices) entries
  int64_t thread_stride_ = 0;
  std::vector<float> factor_;           // row then column factors, at stats_offset
  std::vector<StepScalars<float>> scalars_;  // per group, for the current step
  std::vector<float> slice_scale_;      // per slice: clip scale * grad scale (phase 4)
  double grad_scale_ = 1.0;
};

// Options of a whole local step (LocalStepper, CudaCame::Step).
struct StepOptions {
  double max_grad_norm = 0.0;  // > 0: clip the global gradient norm like clip_grad_norm_
};

struct StepResult {
  bool skipped = false;       // non-finite gradient: nothing was changed
  double grad_norm = 0.0;     // global L2 norm of the gradient (before clipping)
  double grad_scale = 1.0;    // gradient-norm clip factor applied
  double min_clip_scale = 1.0;  // smallest update clip scale over the tensors
};

// CpuCame's phases as a PhaseBackend (Note [Phase backends]) over host buffers it owns; the
// skip decision, the gradient-norm scale and the clip scales are computed on the host.
class CpuPhases final : public PhaseBackend {
 public:
  explicit CpuPhases(CpuCame& cpu);

  CpuCame& cpu() { return cpu_; }
  MemoryKind memory() const override { return MemoryKind::kHost; }
  int num_slices() const override { return static_cast<int>(cpu_.slices().size()); }
  int64_t stats_offset(int i) const override { return cpu_.stats_offset(i); }
  int64_t stats_size() const override { return cpu_.stats_size(); }
  StepBuffers buffers() override { return {sums_.data(), &grad_sum_sq_, sum_sq_.data()}; }

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
  CpuCame& cpu_;
  std::vector<double> sums_;
  double grad_sum_sq_ = 0.0;
  std::vector<double> sum_sq_;
  std::vector<double> clip_;
  std::span<const CameHyper> groups_;
  StepDecision decision_;
  double min_clip_scale_ = 1.0;
};

// Runs one whole step over slices that are whole tensors (no communication): the step
// sequence (kernels/step_sequence.h) on CpuPhases, reusing its buffers between steps.
class LocalStepper {
 public:
  explicit LocalStepper(CpuCame& cpu);
  StepResult Step(std::span<const CameHyper> groups, const StepOptions& options);

 private:
  CpuPhases phases_;
};

}  // namespace came
