#include "kernels/cpu_came.h"

#include <algorithm>
#include <cassert>
#include <cmath>

#include "kernels/step_sequence.h"

namespace came {
namespace {

constexpr int64_t kRunAlignment = 64;  // thread boundaries fall on multiples of this

const uint8_t* At(const void* base, DType t, int64_t index) {
  return static_cast<const uint8_t*>(base) + index * static_cast<int64_t>(DTypeSize(t));
}
uint8_t* At(void* base, DType t, int64_t index) {
  return static_cast<uint8_t*>(base) + index * static_cast<int64_t>(DTypeSize(t));
}

int ParamIndex(const TensorSlice& s) {
  return s.param == nullptr ? cpu::kNoParamCopy : static_cast<int>(s.param_dtype);
}

// Calls fn(row, first_col, element, len) for each piece of [begin, end) that lies in one row
// of an [rows, m] view.
template <typename Fn>
void ForEachRowPiece(int64_t begin, int64_t end, int64_t m, Fn&& fn) {
  int64_t e = begin;
  int64_t row = begin / m;
  int64_t col = begin % m;
  while (e < end) {
    const int64_t len = std::min(m - col, end - e);
    fn(row, col, e, len);
    e += len;
    ++row;
    col = 0;
  }
}

}  // namespace

bool GradSummary::finite() const { return std::isfinite(sum_sq); }

CpuCame::CpuCame(std::vector<TensorSlice> slices, int num_threads, const cpu::CpuLoops* loops)
    : slices_(std::move(slices)),
      loops_(loops != nullptr ? *loops : cpu::GetCpuLoops()),
      team_(std::make_unique<ThreadTeam>(num_threads)) {
  const int n = static_cast<int>(slices_.size());
  stats_offset_.resize(n);
  int max_group = 0;
  int64_t total = 0;
  for (int i = 0; i < n; ++i) {
    const TensorSlice& s = slices_[i];
    assert(s.begin >= 0 && s.begin <= s.end && s.end <= s.geom.numel);
    stats_offset_[i] = stats_size_;
    stats_size_ += s.geom.stats_size();
    max_group = std::max(max_group, s.group);
    total += s.size();
  }
  scalars_.resize(max_group + 1);
  slice_scale_.assign(n, 1.0f);
  factor_.assign(stats_size_, 0.0f);

  // Split the slices' elements into one contiguous range per thread.
  const int threads = team_->size();
  runs_.resize(threads);
  std::vector<int64_t> cut(threads + 1);
  for (int t = 0; t <= threads; ++t) {
    int64_t c = total * t / threads;
    if (t != 0 && t != threads) c = c / kRunAlignment * kRunAlignment;
    cut[t] = c;
  }
  int64_t pos = 0;
  for (int i = 0; i < n; ++i) {
    const TensorSlice& s = slices_[i];
    for (int t = 0; t < threads; ++t) {
      const int64_t lo = std::max(pos, cut[t]);
      const int64_t hi = std::min(pos + s.size(), cut[t + 1]);
      if (lo < hi) runs_[t].push_back({i, s.begin + (lo - pos), s.begin + (hi - pos)});
    }
    pos += s.size();
  }
  thread_stride_ = std::max<int64_t>(stats_size_, n) + 1;
  thread_sums_.assign(thread_stride_ * threads, 0.0);
}

CpuCame::~CpuCame() = default;

void CpuCame::RebindBuffers(int i, const TensorSlice& buffers) {
  TensorSlice& s = slices_[i];
  s.grad = buffers.grad;
  s.master = buffers.master;
  s.param = buffers.param;
  s.exp_avg = buffers.exp_avg;
  s.exp_avg_sq = buffers.exp_avg_sq;
  s.exp_avg_sq_row = buffers.exp_avg_sq_row;
  s.exp_avg_sq_col = buffers.exp_avg_sq_col;
  s.exp_avg_res_row = buffers.exp_avg_res_row;
  s.exp_avg_res_col = buffers.exp_avg_res_col;
}

void CpuCame::ReduceThreadSums(std::span<double> out, int64_t count) {
  const int threads = team_->size();
  for (int64_t k = 0; k < count; ++k) {
    double s = 0.0;
    for (int t = 0; t < threads; ++t) s += thread_sums_[t * thread_stride_ + k];
    out[k] = s;
  }
}

GradSummary CpuCame::GradStats(std::span<double> sums) {
  assert(static_cast<int64_t>(sums.size()) >= stats_size_);
  const cpu::CpuLoops& loops = loops_;
  auto body = [&](int t) {
    double* acc = &thread_sums_[t * thread_stride_];
    std::fill(acc, acc + thread_stride_, 0.0);
    double total = 0.0;
    for (const Run& run : runs_[t]) {
      const TensorSlice& s = slices_[run.slice];
      const int gi = static_cast<int>(s.grad_dtype);
      if (!s.geom.factored) {
        total += loops.sum_sq[gi](At(s.grad, s.grad_dtype, run.begin - s.begin),
                                  run.end - run.begin);
        continue;
      }
      double* row = acc + stats_offset_[run.slice];
      double* col = row + s.geom.rows();
      const int64_t m = s.geom.m, nrows = s.geom.n;
      ForEachRowPiece(run.begin, run.end, m, [&](int64_t i, int64_t j0, int64_t e, int64_t len) {
        const double r = loops.sq_stats[gi](At(s.grad, s.grad_dtype, e - s.begin), len,
                                            col + (i / nrows) * m + j0);
        row[i] += r;
        total += r;
      });
    }
    acc[thread_stride_ - 1] = total;
  };
  team_->Run(body);
  ReduceThreadSums(sums, stats_size_);
  GradSummary summary;
  for (int t = 0; t < team_->size(); ++t)
    summary.sum_sq += thread_sums_[t * thread_stride_ + thread_stride_ - 1];
  return summary;
}

void CpuCame::ComputeFactors(const float* row, const float* col, const TensorGeometry& g,
                             float* row_f, float* col_f) {
  for (int64_t b = 0; b < g.batch; ++b) {
    double mean = 0.0;
    for (int64_t i = 0; i < g.n; ++i) mean += row[b * g.n + i];
    // In double: r / mean(r) of a zero row next to large rows (1e-33 / 1e12) underflows
    // float, and rsqrt(0) would turn the whole tensor into NaN.
    const double mean_d = mean / static_cast<double>(g.n);
    for (int64_t i = 0; i < g.n; ++i)
      row_f[b * g.n + i] = static_cast<float>(RowFactor<double>(row[b * g.n + i], mean_d));
  }
  for (int64_t j = 0; j < g.cols(); ++j) col_f[j] = ColFactor(col[j]);
}

void CpuCame::UpdateSecondMoments(std::span<const double> sums,
                                  std::span<const CameHyper> groups, double grad_scale) {
  assert(groups.size() >= scalars_.size());
  for (size_t k = 0; k < scalars_.size(); ++k) scalars_[k] = MakeStepScalars<float>(groups[k]);
  grad_scale_ = grad_scale;
  const double scale_sq = grad_scale * grad_scale;
  for (size_t i = 0; i < slices_.size(); ++i) {
    const TensorSlice& s = slices_[i];
    if (!s.geom.factored) continue;
    const StepScalars<float>& k = scalars_[s.group];
    const double eps1 = groups[s.group].eps1;
    const double* row_sum = &sums[stats_offset_[i]];
    const double* col_sum = row_sum + s.geom.rows();
    for (int64_t r = 0; r < s.geom.rows(); ++r)
      s.exp_avg_sq_row[r] = EmaOfMean(s.exp_avg_sq_row[r], row_sum[r], double(s.geom.m),
                                      scale_sq, eps1, k.beta2, k.one_minus_beta2);
    for (int64_t c = 0; c < s.geom.cols(); ++c)
      s.exp_avg_sq_col[c] = EmaOfMean(s.exp_avg_sq_col[c], col_sum[c], double(s.geom.n),
                                      scale_sq, eps1, k.beta2, k.one_minus_beta2);
    float* f = &factor_[stats_offset_[i]];
    ComputeFactors(s.exp_avg_sq_row, s.exp_avg_sq_col, s.geom, f, f + s.geom.rows());
  }
}

void CpuCame::UpdateSquares(std::span<double> sum_sq) {
  const cpu::CpuLoops& loops = loops_;
  const int n = static_cast<int>(slices_.size());
  auto body = [&](int t) {
    double* acc = &thread_sums_[t * thread_stride_];
    std::fill(acc, acc + n, 0.0);
    for (const Run& run : runs_[t]) {
      const TensorSlice& s = slices_[run.slice];
      const int gi = static_cast<int>(s.grad_dtype);
      const float scale = static_cast<float>(grad_scale_);
      if (!s.geom.factored) {
        const int64_t off = run.begin - s.begin;
        acc[run.slice] += loops.second_moment_1d[gi](At(s.grad, s.grad_dtype, off),
                                                     s.exp_avg_sq + off, run.end - run.begin,
                                                     scale, scalars_[s.group]);
        continue;
      }
      const float* row_f = &factor_[stats_offset_[run.slice]];
      const float* col_f = row_f + s.geom.rows();
      const int64_t m = s.geom.m, nrows = s.geom.n;
      ForEachRowPiece(run.begin, run.end, m, [&](int64_t i, int64_t j0, int64_t e, int64_t len) {
        acc[run.slice] += loops.precond_sumsq[gi](At(s.grad, s.grad_dtype, e - s.begin), len,
                                                  row_f[i] * scale, col_f + (i / nrows) * m + j0);
      });
    }
  };
  team_->Run(body);
  ReduceThreadSums(sum_sq, n);
}

void CpuCame::Momentum(std::span<const double> clip_scale, std::span<double> sums) {
  const cpu::CpuLoops& loops = loops_;
  for (size_t i = 0; i < slices_.size(); ++i)
    slice_scale_[i] = static_cast<float>(clip_scale[i] * grad_scale_);
  auto body = [&](int t) {
    double* acc = &thread_sums_[t * thread_stride_];
    std::fill(acc, acc + stats_size_, 0.0);
    for (const Run& run : runs_[t]) {
      const TensorSlice& s = slices_[run.slice];
      const int gi = static_cast<int>(s.grad_dtype);
      const float a = slice_scale_[run.slice];
      const StepScalars<float>& k = scalars_[s.group];
      if (!s.geom.factored) {
        const int64_t off = run.begin - s.begin;
        void* param = s.param ? At(s.param, s.param_dtype, off) : nullptr;
        loops.momentum_apply_1d[gi][ParamIndex(s)](
            At(s.grad, s.grad_dtype, off), s.exp_avg_sq + off, s.exp_avg + off, s.master + off,
            param, run.end - run.begin, a, k);
        continue;
      }
      const float* row_f = &factor_[stats_offset_[run.slice]];
      const float* col_f = row_f + s.geom.rows();
      double* row = acc + stats_offset_[run.slice];
      double* col = row + s.geom.rows();
      const int64_t m = s.geom.m, nrows = s.geom.n;
      ForEachRowPiece(run.begin, run.end, m, [&](int64_t i, int64_t j0, int64_t e, int64_t len) {
        const int64_t c0 = (i / nrows) * m + j0;
        row[i] += loops.momentum[gi](At(s.grad, s.grad_dtype, e - s.begin),
                                     s.exp_avg + (e - s.begin), len, row_f[i] * a, col_f + c0,
                                     col + c0, k);
      });
    }
  };
  team_->Run(body);
  ReduceThreadSums(sums, stats_size_);
}

void CpuCame::UpdateResiduals(std::span<const double> sums) {
  for (size_t i = 0; i < slices_.size(); ++i) {
    const TensorSlice& s = slices_[i];
    if (!s.geom.factored) continue;
    const StepScalars<float>& k = scalars_[s.group];
    const double* row_sum = &sums[stats_offset_[i]];
    const double* col_sum = row_sum + s.geom.rows();
    // The residual sums already include eps2 per element; the EMA adds no further eps.
    for (int64_t r = 0; r < s.geom.rows(); ++r)
      s.exp_avg_res_row[r] = EmaOfMean(s.exp_avg_res_row[r], row_sum[r], double(s.geom.m), 1.0,
                                       0.0, k.beta3, k.one_minus_beta3);
    for (int64_t c = 0; c < s.geom.cols(); ++c)
      s.exp_avg_res_col[c] = EmaOfMean(s.exp_avg_res_col[c], col_sum[c], double(s.geom.n), 1.0,
                                       0.0, k.beta3, k.one_minus_beta3);
    float* f = &factor_[stats_offset_[i]];
    ComputeFactors(s.exp_avg_res_row, s.exp_avg_res_col, s.geom, f, f + s.geom.rows());
  }
}

void CpuCame::Apply() {
  const cpu::CpuLoops& loops = loops_;
  auto body = [&](int t) {
    for (const Run& run : runs_[t]) {
      const TensorSlice& s = slices_[run.slice];
      if (!s.geom.factored) continue;
      const float* row_f = &factor_[stats_offset_[run.slice]];
      const float* col_f = row_f + s.geom.rows();
      const int64_t m = s.geom.m, nrows = s.geom.n;
      const int pi = ParamIndex(s);
      ForEachRowPiece(run.begin, run.end, m, [&](int64_t i, int64_t j0, int64_t e, int64_t len) {
        const int64_t off = e - s.begin;
        loops.apply[pi](s.exp_avg + off, s.master + off,
                        s.param ? At(s.param, s.param_dtype, off) : nullptr, len, row_f[i],
                        col_f + (i / nrows) * m + j0, scalars_[s.group]);
      });
    }
  };
  team_->Run(body);
}

CpuPhases::CpuPhases(CpuCame& cpu)
    : cpu_(cpu),
      sums_(cpu.stats_size()),
      sum_sq_(cpu.slices().size()),
      clip_(cpu.slices().size()) {}

PhaseStatus CpuPhases::GradStats() {
  grad_sum_sq_ = cpu_.GradStats(sums_).sum_sq;
  return {};
}

PhaseStatus CpuPhases::BeginStep(double max_grad_norm) {
  decision_ = StepDecision{};
  decision_.grad_norm = std::sqrt(grad_sum_sq_);
  decision_.skipped = !std::isfinite(grad_sum_sq_);
  if (!decision_.skipped) decision_.grad_scale = GradNormScale(decision_.grad_norm, max_grad_norm);
  return {};
}

PhaseStatus CpuPhases::ReadDecision(StepDecision* decision) {
  *decision = decision_;
  return {};
}

PhaseStatus CpuPhases::UpdateSecondMoments(std::span<const CameHyper> groups) {
  if (decision_.skipped) return {};
  groups_ = groups;
  cpu_.UpdateSecondMoments(sums_, groups, decision_.grad_scale);
  return {};
}

PhaseStatus CpuPhases::UpdateSquares() {
  if (decision_.skipped) return {};
  cpu_.UpdateSquares(sum_sq_);
  return {};
}

PhaseStatus CpuPhases::Momentum() {
  if (decision_.skipped) return {};
  const auto& slices = cpu_.slices();
  min_clip_scale_ = 1.0;
  for (size_t i = 0; i < slices.size(); ++i) {
    clip_[i] = ClipScale(sum_sq_[i], static_cast<double>(slices[i].geom.numel),
                         groups_[slices[i].group].clip_threshold);
    min_clip_scale_ = std::min(min_clip_scale_, clip_[i]);
  }
  cpu_.Momentum(clip_, sums_);
  return {};
}

PhaseStatus CpuPhases::UpdateResiduals() {
  if (decision_.skipped) return {};
  cpu_.UpdateResiduals(sums_);
  return {};
}

PhaseStatus CpuPhases::Apply() {
  if (decision_.skipped) return {};
  cpu_.Apply();
  return {};
}

PhaseStatus CpuPhases::Finish(double* min_clip_scale) {
  *min_clip_scale = decision_.skipped ? 1.0 : min_clip_scale_;
  return {};
}

LocalStepper::LocalStepper(CpuCame& cpu) : phases_(cpu) {}

StepResult LocalStepper::Step(std::span<const CameHyper> groups, const StepOptions& options) {
  SequenceResult r;
  // The CPU phases cannot fail.
  RunStepSequence(phases_, groups, options.max_grad_norm, nullptr, &r);
  StepResult result;
  result.skipped = r.decision.skipped;
  result.grad_norm = r.decision.grad_norm;
  result.grad_scale = r.decision.grad_scale;
  result.min_clip_scale = r.min_clip_scale;
  return result;
}

}  // namespace came
