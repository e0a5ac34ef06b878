// The one step sequence (kernels/step_sequence.h) against a recording backend: the order of
// phases and completions, the early stop on a skip, and failures of either side; and
// LocalStepper (the sequence on CpuPhases) against ShardedCame's former hand-written order of
// CpuCame's phases, bitwise.
#include "kernels/step_sequence.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_came.h"

namespace came {
namespace {

// Records every call as a letter; fails the call named `fail_at` (if any).
class RecordingBackend final : public PhaseBackend {
 public:
  explicit RecordingBackend(double grad_sum_sq) : grad_sum_sq_(grad_sum_sq) {}
  std::string calls;
  char fail_at = 0;

  MemoryKind memory() const override { return MemoryKind::kHost; }
  int num_slices() const override { return 1; }
  int64_t stats_offset(int) const override { return 0; }
  int64_t stats_size() const override { return 2; }
  StepBuffers buffers() override { return {sums_, &grad_sum_sq_, &sum_sq_}; }
  PhaseStatus GradStats() override { return Call('g'); }
  PhaseStatus BeginStep(double) override { return Call('b'); }
  PhaseStatus ReadDecision(StepDecision* d) override {
    d->skipped = !std::isfinite(grad_sum_sq_);
    d->grad_norm = std::sqrt(grad_sum_sq_);
    return Call('d');
  }
  PhaseStatus UpdateSecondMoments(std::span<const CameHyper>) override { return Call('2'); }
  PhaseStatus UpdateSquares() override { return Call('3'); }
  PhaseStatus Momentum() override { return Call('4'); }
  PhaseStatus UpdateResiduals() override { return Call('5'); }
  PhaseStatus Apply() override { return Call('6'); }
  PhaseStatus Finish(double* min_clip) override {
    *min_clip = 0.25;
    return Call('f');
  }

 private:
  PhaseStatus Call(char c) {
    calls += c;
    if (c == fail_at) return {PhaseStatus::kInternal, std::string("failed at ") + c};
    return {};
  }
  double sums_[2] = {0, 0};
  double grad_sum_sq_;
  double sum_sq_ = 0;
};

class RecordingCompleter final : public SumCompleter {
 public:
  explicit RecordingCompleter(std::string* calls) : calls_(calls) {}
  bool fail = false;
  PhaseStatus Complete(SumKind kind) override {
    *calls_ += kind == SumKind::kGradStats ? 'G' : kind == SumKind::kSquares ? 'S' : 'R';
    if (fail) return {PhaseStatus::kUnavailable, "peer gone"};
    return {};
  }

 private:
  std::string* calls_;
};

const std::vector<CameHyper> kGroups(1);

TEST(StepSequenceTest, RunsPhasesAndCompletionsInOrder) {
  RecordingBackend b(4.0);
  RecordingCompleter c(&b.calls);
  SequenceResult r;
  ASSERT_TRUE(RunStepSequence(b, kGroups, 0.0, &c, &r).ok());
  EXPECT_EQ(b.calls, "gGbd23S4R56f");
  EXPECT_FALSE(r.decision.skipped);
  EXPECT_EQ(r.decision.grad_norm, 2.0);
  EXPECT_EQ(r.min_clip_scale, 0.25);
}

TEST(StepSequenceTest, WithoutACompleterCompletesNothing) {
  RecordingBackend b(1.0);
  SequenceResult r;
  ASSERT_TRUE(RunStepSequence(b, kGroups, 0.0, nullptr, &r).ok());
  EXPECT_EQ(b.calls, "gbd23456f");
}

TEST(StepSequenceTest, ASkippedStepStopsAfterTheDecision) {
  RecordingBackend b(std::numeric_limits<double>::infinity());
  RecordingCompleter c(&b.calls);
  SequenceResult r;
  ASSERT_TRUE(RunStepSequence(b, kGroups, 0.0, &c, &r).ok());
  EXPECT_EQ(b.calls, "gGbd");
  EXPECT_TRUE(r.decision.skipped);
  EXPECT_EQ(r.min_clip_scale, 1.0);
}

TEST(StepSequenceTest, TheFirstFailureEndsTheStep) {
  RecordingBackend b(1.0);
  b.fail_at = '3';
  RecordingCompleter c(&b.calls);
  SequenceResult r;
  const PhaseStatus s = RunStepSequence(b, kGroups, 0.0, &c, &r);
  EXPECT_EQ(s.code, PhaseStatus::kInternal);
  EXPECT_EQ(s.message, "failed at 3");
  EXPECT_EQ(b.calls, "gGbd23");

  RecordingBackend b2(1.0);
  RecordingCompleter c2(&b2.calls);
  c2.fail = true;
  EXPECT_EQ(RunStepSequence(b2, kGroups, 0.0, &c2, &r).code, PhaseStatus::kUnavailable);
  EXPECT_EQ(b2.calls, "gG");
}

// Whole tensors of every kind, two copies of every buffer.
struct Model {
  std::vector<TensorGeometry> geoms;
  std::vector<std::vector<float>> grad, master, exp_avg, exp_avg_sq, sq_row, sq_col, res_row,
      res_col;
  std::vector<TensorSlice> Slices() {
    std::vector<TensorSlice> out;
    for (size_t t = 0; t < geoms.size(); ++t) {
      TensorSlice s;
      s.geom = geoms[t];
      s.end = geoms[t].numel;
      s.group = static_cast<int>(t % 2);
      s.grad = grad[t].data();
      s.master = master[t].data();
      s.exp_avg = exp_avg[t].data();
      if (geoms[t].factored) {
        s.exp_avg_sq_row = sq_row[t].data();
        s.exp_avg_sq_col = sq_col[t].data();
        s.exp_avg_res_row = res_row[t].data();
        s.exp_avg_res_col = res_col[t].data();
      } else {
        s.exp_avg_sq = exp_avg_sq[t].data();
      }
      out.push_back(s);
    }
    return out;
  }
};

Model MakeModel() {
  Model m;
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{33}, {17, 5}, {2, 3, 7}, {1, 9}}) {
    const TensorGeometry g = TensorGeometry::FromShape(shape);
    m.geoms.push_back(g);
    m.grad.emplace_back(g.numel);
    m.master.emplace_back(g.numel, 0.5f);
    m.exp_avg.emplace_back(g.numel, 0.0f);
    m.exp_avg_sq.emplace_back(g.factored ? 0 : g.numel, 0.0f);
    m.sq_row.emplace_back(g.rows(), 0.0f);
    m.sq_col.emplace_back(g.cols(), 0.0f);
    m.res_row.emplace_back(g.rows(), 0.0f);
    m.res_col.emplace_back(g.cols(), 0.0f);
  }
  return m;
}

TEST(StepSequenceTest, LocalStepperEqualsTheHandWrittenPhaseOrderBitwise) {
  Model a = MakeModel(), b = MakeModel();
  CpuCame cpu_a(a.Slices(), 2), cpu_b(b.Slices(), 2);
  LocalStepper stepper(cpu_a);
  std::vector<CameHyper> groups(2);
  groups[0].lr = 1e-2;
  groups[1].lr = 3e-3;
  groups[1].weight_decay = 0.01;
  groups[1].clip_threshold = 0.5;
  std::vector<double> sums(cpu_b.stats_size()), sum_sq(a.geoms.size()), clip(a.geoms.size());
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (int step = 0; step < 6; ++step) {
    for (size_t t = 0; t < a.geoms.size(); ++t)
      for (size_t i = 0; i < a.grad[t].size(); ++i) a.grad[t][i] = b.grad[t][i] = normal(rng);
    StepOptions options;
    options.max_grad_norm = step % 2 == 0 ? 0.0 : 0.3;
    const StepResult got = stepper.Step(groups, options);
    // The order ShardedCame and LocalStepper spelled out before the sequence existed.
    const double g2 = cpu_b.GradStats(sums).sum_sq;
    const double scale = GradNormScale(std::sqrt(g2), options.max_grad_norm);
    cpu_b.UpdateSecondMoments(sums, groups, scale);
    cpu_b.UpdateSquares(sum_sq);
    double min_clip = 1.0;
    for (size_t i = 0; i < clip.size(); ++i) {
      clip[i] = ClipScale(sum_sq[i], static_cast<double>(a.geoms[i].numel),
                          groups[i % 2].clip_threshold);
      min_clip = std::min(min_clip, clip[i]);
    }
    cpu_b.Momentum(clip, sums);
    cpu_b.UpdateResiduals(sums);
    cpu_b.Apply();
    EXPECT_EQ(got.grad_norm, std::sqrt(g2));
    EXPECT_EQ(got.grad_scale, scale);
    EXPECT_EQ(got.min_clip_scale, min_clip);
    EXPECT_EQ(a.master, b.master) << "step " << step;
    EXPECT_EQ(a.exp_avg, b.exp_avg) << "step " << step;
    EXPECT_EQ(a.exp_avg_sq, b.exp_avg_sq) << "step " << step;
    EXPECT_EQ(a.sq_row, b.sq_row) << "step " << step;
    EXPECT_EQ(a.res_col, b.res_col) << "step " << step;
  }
}

}  // namespace
}  // namespace came
