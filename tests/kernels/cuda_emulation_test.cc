// The CUDA phase kernels (kernels/cuda/phase_kernels.cuh) run on the CPU through a host
// emulation of threads, barriers and warp shuffles (cuda_emulation.h), in CudaCame::Step's
// sequence (the same PhaseRunner, kernels/cuda/phase_runner.h), against CpuCame: awkward shapes (one row, one column, widths that are and are not a
// multiple of the vector width, several column tiles and row bands, 3-D/4-D, 1-D over several
// chunks), fp32 and bf16 gradients, a bf16 parameter copy, gradient-norm clipping, a skipped
// step, and slices that start and end mid-row. This checks the kernels' own index arithmetic,
// masks and reductions on a machine without a GPU; it says nothing of timing or of the CUDA
// runtime calls, which the GPU tests cover.
#include "tests/kernels/cuda_emulation.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_came.h"
#include "kernels/cuda/layout.h"
#include "kernels/cuda/phase_kernels.cuh"
#include "kernels/cuda/phase_runner.h"
#include "kernels/geometry.h"
#include "tools/replay/case_io.h"

namespace came::cuda {
namespace {

using emulation::Launch;

// CudaCame::Step over host memory: the same PhaseRunner, launching through the emulation.
class EmulatedCame {
 public:
  explicit EmulatedCame(const std::vector<TensorSlice>& slices)
      : layout_(BuildLayout(slices)),
        ns_(static_cast<int64_t>(layout_.slices.size())),
        groups_(layout_.num_groups),
        factor_(layout_.stats_size + 1),
        row_part_(layout_.row_part_size + 1),
        col_part_(layout_.col_part_size + 1),
        chunk_sum_(layout_.chunks.size() + 1),
        slice_sum_(ns_ + 1),
        sums_(layout_.stats_size + 1),
        sum_sq_(ns_ + 1) {
    for (const TensorSlice& s : slices) ptrs_.push_back(PointersOf(s));
  }

  int vectorised() const {
    int n = 0;
    for (const SlicePointers& p : ptrs_) n += p.vec;
    return n;
  }

  // Returns a PhaseRunner over this object's tables and workspace, launching through the
  // emulation.
  auto Runner() {
    PhaseBuffers b;
    b.layout = &layout_;
    b.slices = layout_.slices.data();
    b.chunks = layout_.chunks.data();
    b.stat_blocks = layout_.stat_blocks.data();
    b.ptrs = ptrs_.data();
    b.groups = groups_.data();
    b.step = &step_;
    b.factor = factor_.data();
    b.row_part = row_part_.data();
    b.col_part = col_part_.data();
    b.chunk_sum = chunk_sum_.data();
    b.slice_sum = slice_sum_.data();
    auto launch = [](unsigned grid, unsigned threads, auto kernel, auto... args) {
      Launch(grid, threads, [&] { kernel(args...); });
      return true;
    };
    return PhaseRunner<decltype(launch)>(b, launch);
  }
  int64_t stats_size() const { return layout_.stats_size; }

  StepResult Step(const std::vector<CameHyper>& groups, const StepOptions& options) {
    auto runner = Runner();
    EXPECT_TRUE(runner.LocalStep(groups, options.max_grad_norm, sums_.data(), sum_sq_.data()));
    StepResult r;
    r.skipped = step_.skipped != 0;
    r.grad_norm = step_.grad_norm;
    r.grad_scale = step_.grad_scale;
    r.min_clip_scale = step_.min_clip_scale;
    return r;
  }

 private:
  Layout layout_;
  int64_t ns_;
  std::vector<SlicePointers> ptrs_;
  std::vector<DeviceGroup> groups_;
  DeviceStep step_{};
  std::vector<float> factor_;
  std::vector<double> row_part_, col_part_, chunk_sum_, slice_sum_, sums_, sum_sq_;
};

struct Spec {
  std::vector<int64_t> shape;
  DType grad_dtype;
  DType param_dtype;
  int64_t begin = 0, end = -1;  // the slice; end -1: the whole tensor
};

// One tensor's buffers (16-byte aligned: std::vector's allocation).
struct Buffers {
  std::vector<uint8_t> grad, param;
  std::vector<float> master, exp_avg, exp_avg_sq, sq_row, sq_col, res_row, res_col;
};

TensorSlice SliceOf(const Spec& sp, Buffers& b) {
  TensorSlice s;
  s.geom = TensorGeometry::FromShape(sp.shape);
  s.begin = sp.begin;
  s.end = sp.end < 0 ? s.geom.numel : sp.end;
  const size_t gs = DTypeSize(sp.grad_dtype), ps = DTypeSize(sp.param_dtype);
  s.grad = b.grad.data() + s.begin * gs;
  s.grad_dtype = sp.grad_dtype;
  s.master = b.master.data() + s.begin;
  s.param = b.param.empty() ? nullptr : b.param.data() + s.begin * ps;
  s.param_dtype = sp.param_dtype;
  s.exp_avg = b.exp_avg.data() + s.begin;
  s.exp_avg_sq = b.exp_avg_sq.empty() ? nullptr : b.exp_avg_sq.data() + s.begin;
  s.exp_avg_sq_row = b.sq_row.empty() ? nullptr : b.sq_row.data();
  s.exp_avg_sq_col = b.sq_col.empty() ? nullptr : b.sq_col.data();
  s.exp_avg_res_row = b.res_row.empty() ? nullptr : b.res_row.data();
  s.exp_avg_res_col = b.res_col.empty() ? nullptr : b.res_col.data();
  return s;
}

Buffers MakeBuffers(const Spec& sp, std::mt19937_64& rng) {
  const TensorGeometry g = TensorGeometry::FromShape(sp.shape);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  Buffers b;
  b.grad.assign(g.numel * DTypeSize(sp.grad_dtype), 0);
  b.master.resize(g.numel);
  for (float& x : b.master) x = normal(rng);
  if (sp.param_dtype != DType::kFloat32) b.param.assign(g.numel * DTypeSize(sp.param_dtype), 0);
  b.exp_avg.assign(g.numel, 0.0f);
  if (!g.factored) b.exp_avg_sq.assign(g.numel, 0.0f);
  b.sq_row.assign(g.rows(), 0.0f);
  b.sq_col.assign(g.cols(), 0.0f);
  b.res_row.assign(g.rows(), 0.0f);
  b.res_col.assign(g.cols(), 0.0f);
  return b;
}

void Expect(const std::vector<float>& got, const std::vector<float>& want, double tol,
            const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (want.empty()) return;
  const std::vector<double> g(got.begin(), got.end()), w(want.begin(), want.end());
  EXPECT_LE(StateError(g, w), tol) << what;
}

// Runs the emulated kernels and CpuCame side by side for `steps` steps and compares.
// `hard`: each row scaled by 10^k, k uniform in [-15, 15], and row 0 of every matrix zero.
void RunBoth(const std::vector<Spec>& specs, int steps, const StepOptions& options,
             int expect_vectorised, int nan_step = -1, bool hard = false) {
  std::mt19937_64 rng(17);
  std::vector<Buffers> cpu_b, emu_b;
  for (const Spec& sp : specs) {
    cpu_b.push_back(MakeBuffers(sp, rng));
    emu_b.push_back(cpu_b.back());
  }
  std::vector<TensorSlice> cpu_s, emu_s;
  for (size_t t = 0; t < specs.size(); ++t) {
    cpu_s.push_back(SliceOf(specs[t], cpu_b[t]));
    emu_s.push_back(SliceOf(specs[t], emu_b[t]));
    cpu_s.back().group = emu_s.back().group = static_cast<int>(t % 2);
  }
  CpuCame cpu(cpu_s, 1);
  LocalStepper stepper(cpu);
  EmulatedCame emu(emu_s);
  EXPECT_EQ(emu.vectorised(), expect_vectorised);
  CameHyper h0, h1;
  h0.lr = 1e-2;
  h1.lr = 3e-3;
  h1.weight_decay = 0.01;
  h1.clip_threshold = 0.5;
  const std::vector<CameHyper> groups = {h0, h1};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-15, 15);
  for (int k = 0; k < steps; ++k) {
    for (size_t t = 0; t < specs.size(); ++t) {
      const TensorGeometry geom = TensorGeometry::FromShape(specs[t].shape);
      float scale = 1.0f;
      for (int64_t i = 0; i < geom.numel; ++i) {
        if (hard && i % geom.m == 0) scale = std::pow(10.0f, static_cast<float>(exponent(rng)));
        const bool zero = hard && geom.factored && (i % (geom.n * geom.m)) / geom.m == 0;
        StoreFromFloat(cpu_b[t].grad.data(), specs[t].grad_dtype, i,
                       zero ? 0.0f : normal(rng) * scale);
      }
      if (k == nan_step && t == 0)
        StoreFromFloat(cpu_b[t].grad.data(), specs[t].grad_dtype, cpu_s[t].begin,
                       std::numeric_limits<float>::quiet_NaN());
      emu_b[t].grad = cpu_b[t].grad;  // same size: the slices' pointers stay valid
    }
    const std::vector<Buffers> before = emu_b;
    const StepResult want = stepper.Step(groups, options);
    const StepResult got = emu.Step(groups, options);
    ASSERT_EQ(got.skipped, want.skipped) << "step " << k + 1;
    if (want.skipped) {
      for (size_t t = 0; t < specs.size(); ++t) {
        EXPECT_EQ(emu_b[t].master, before[t].master);
        EXPECT_EQ(emu_b[t].exp_avg, before[t].exp_avg);
        EXPECT_EQ(emu_b[t].sq_row, before[t].sq_row);
        EXPECT_EQ(emu_b[t].res_col, before[t].res_col);
        EXPECT_EQ(emu_b[t].exp_avg_sq, before[t].exp_avg_sq);
        EXPECT_EQ(emu_b[t].param, before[t].param);
      }
      continue;
    }
    EXPECT_NEAR(got.grad_norm, want.grad_norm, 1e-12 * want.grad_norm) << "step " << k + 1;
    EXPECT_NEAR(got.grad_scale, want.grad_scale, 1e-12 * want.grad_scale);
    EXPECT_NEAR(got.min_clip_scale, want.min_clip_scale, 1e-5 * want.min_clip_scale);
  }
  for (size_t t = 0; t < specs.size(); ++t) {
    const std::string what = ShapeString(specs[t].shape) + " " +
                             std::string(DTypeName(specs[t].grad_dtype));
    const std::vector<double> g(emu_b[t].master.begin(), emu_b[t].master.end());
    const std::vector<double> w(cpu_b[t].master.begin(), cpu_b[t].master.end());
    EXPECT_LE(ParamError(g, w), 1e-5) << what << " master";
    Expect(emu_b[t].exp_avg, cpu_b[t].exp_avg, 1e-6, what + " exp_avg");
    Expect(emu_b[t].exp_avg_sq, cpu_b[t].exp_avg_sq, 1e-6, what + " exp_avg_sq");
    Expect(emu_b[t].sq_row, cpu_b[t].sq_row, 1e-6, what + " exp_avg_sq_row");
    Expect(emu_b[t].sq_col, cpu_b[t].sq_col, 1e-6, what + " exp_avg_sq_col");
    Expect(emu_b[t].res_row, cpu_b[t].res_row, 1e-6, what + " exp_avg_res_row");
    Expect(emu_b[t].res_col, cpu_b[t].res_col, 1e-6, what + " exp_avg_res_col");
    for (int64_t i = cpu_s[t].begin; i < cpu_s[t].end && !emu_b[t].param.empty(); ++i) {
      alignas(4) uint8_t rounded[4];
      StoreFromFloat(rounded, specs[t].param_dtype, 0, emu_b[t].master[i]);
      ASSERT_EQ(std::memcmp(rounded, emu_b[t].param.data() + 2 * i, 2), 0) << what << " " << i;
    }
  }
}

std::vector<Spec> AwkwardSpecs(DType grad, DType param) {
  return {{{7}, grad, param},        {{70000}, grad, param},   {{1, 9}, grad, param},
          {{9, 1}, grad, param},     {{4, 6}, grad, param},    {{3, 300}, grad, param},
          {{130, 8}, grad, param},   {{2, 3, 5}, grad, param}, {{2, 2, 3, 4}, grad, param}};
}

TEST(CudaEmulationTest, Float32MatchesCpu) {
  // Vectorised (4 per vector): [7], [70000], [3, 300], [130, 8], [2, 2, 3, 4].
  RunBoth(AwkwardSpecs(DType::kFloat32, DType::kFloat32), 3, StepOptions{}, 5);
}

TEST(CudaEmulationTest, BFloat16GradsAndParamsMatchCpu) {
  // Vectorised (8 per vector): the 1-D ones and [130, 8].
  RunBoth(AwkwardSpecs(DType::kBFloat16, DType::kBFloat16), 3, StepOptions{.max_grad_norm = 0.5},
          3);
}

TEST(CudaEmulationTest, SlicesThatStartAndEndMidRow) {
  const std::vector<Spec> specs = {{{5, 300}, DType::kFloat32, DType::kFloat32, 257, 1203},
                                   {{130, 8}, DType::kFloat16, DType::kFloat16, 3, 1037},
                                   {{70000}, DType::kFloat32, DType::kBFloat16, 65530, 65541}};
  RunBoth(specs, 2, StepOptions{}, 3);
}

TEST(CudaEmulationTest, HugeDynamicRangeAndZeroRowsMatchCpu) {
  RunBoth({{{3, 300}, DType::kFloat32, DType::kFloat32}, {{130, 8}, DType::kFloat32, DType::kBFloat16},
           {{2, 3, 5}, DType::kFloat32, DType::kFloat32}},
          3, StepOptions{}, 2, /*nan_step=*/-1, /*hard=*/true);
}

// The phase API as ranks use it: one tensor split at mid-row points into parts, each with its
// own copy of the state; the partial sums are completed (summed over the parts, in order)
// between phases. Equals the whole-tensor step to rounding.
TEST(CudaEmulationTest, PhaseApiOverRangesStitchedEqualsWholeTensor) {
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{37, 300}, {2, 130, 9}}) {
    const TensorGeometry geom = TensorGeometry::FromShape(shape);
    const std::vector<int64_t> cuts = {0, geom.numel / 3 + 1, geom.numel / 3 + 2, geom.numel - 5,
                                       geom.numel};
    const int parts = static_cast<int>(cuts.size()) - 1;
    std::mt19937_64 rng(5);
    const Spec whole_spec{shape, DType::kFloat32, DType::kFloat32};
    Buffers whole_b = MakeBuffers(whole_spec, rng);
    std::vector<Buffers> part_b(parts, whole_b);
    EmulatedCame whole({SliceOf(whole_spec, whole_b)});
    std::vector<std::unique_ptr<EmulatedCame>> part;
    for (int k = 0; k < parts; ++k) {
      const Spec sp{shape, DType::kFloat32, DType::kFloat32, cuts[k], cuts[k + 1]};
      part.push_back(std::make_unique<EmulatedCame>(std::vector<TensorSlice>{SliceOf(sp, part_b[k])}));
    }
    const int64_t stats = whole.stats_size();
    std::vector<std::vector<double>> sums(parts, std::vector<double>(stats)),
        total(parts, std::vector<double>(1)), sum_sq(parts, std::vector<double>(1));
    auto all_reduce = [&](std::vector<std::vector<double>>& v) {
      std::vector<double> sum(v[0].size(), 0.0);
      for (int k = 0; k < parts; ++k)
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += v[k][i];
      for (auto& x : v) x = sum;
    };
    CameHyper h;
    h.lr = 1e-2;
    const std::vector<CameHyper> groups = {h};
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int step = 0; step < 3; ++step) {
      for (int64_t i = 0; i < geom.numel; ++i)
        StoreFromFloat(whole_b.grad.data(), DType::kFloat32, i, normal(rng));
      for (Buffers& b : part_b) std::memcpy(b.grad.data(), whole_b.grad.data(), whole_b.grad.size());
      whole.Step(groups, StepOptions{});
      std::vector<decltype(part[0]->Runner())> runners;
      for (int k = 0; k < parts; ++k) runners.push_back(part[k]->Runner());
      for (int k = 0; k < parts; ++k) ASSERT_TRUE(runners[k].GradStats(sums[k].data(), total[k].data()));
      all_reduce(sums);
      all_reduce(total);
      for (int k = 0; k < parts; ++k) {
        ASSERT_TRUE(runners[k].BeginStep(total[k].data(), 0.0));
        ASSERT_TRUE(runners[k].UpdateSecondMoments(sums[k].data(), groups));
        ASSERT_TRUE(runners[k].UpdateSquares(sum_sq[k].data()));
      }
      all_reduce(sum_sq);
      for (int k = 0; k < parts; ++k) ASSERT_TRUE(runners[k].Momentum(sum_sq[k].data(), sums[k].data()));
      all_reduce(sums);
      for (int k = 0; k < parts; ++k) {
        ASSERT_TRUE(runners[k].UpdateResiduals(sums[k].data()));
        ASSERT_TRUE(runners[k].Apply());
      }
    }
    std::vector<double> master(geom.numel), want(whole_b.master.begin(), whole_b.master.end());
    for (int k = 0; k < parts; ++k) {
      for (int64_t i = cuts[k]; i < cuts[k + 1]; ++i) {
        master[i] = part_b[k].master[i];
        EXPECT_NEAR(part_b[k].exp_avg[i], whole_b.exp_avg[i], 1e-6 * std::fabs(whole_b.exp_avg[i]) + 1e-12);
      }
      Expect(part_b[k].sq_row, whole_b.sq_row, 1e-6, "exp_avg_sq_row of part " + std::to_string(k));
      Expect(part_b[k].sq_col, whole_b.sq_col, 1e-6, "exp_avg_sq_col of part " + std::to_string(k));
      Expect(part_b[k].res_row, whole_b.res_row, 1e-6, "exp_avg_res_row of part " + std::to_string(k));
      Expect(part_b[k].res_col, whole_b.res_col, 1e-6, "exp_avg_res_col of part " + std::to_string(k));
    }
    EXPECT_LE(ParamError(master, want), 1e-6) << ShapeString(shape);
  }
}

TEST(CudaEmulationTest, NonFiniteGradientSkipsEverything) {
  RunBoth({{{3, 300}, DType::kFloat32, DType::kBFloat16}, {{7}, DType::kFloat32, DType::kFloat32}},
          3, StepOptions{}, 2, /*nan_step=*/1);
}

}  // namespace
}  // namespace came::cuda
