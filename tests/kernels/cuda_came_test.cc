// CudaCame against CpuCame on awkward shapes over many steps (one row, one column, widths that
// are not a multiple of the vector width, 3-D/4-D, a huge dynamic range, zero rows; bf16 and
// fp16 gradients and parameters), the phase API over ranges of one tensor stitched together
// against the whole tensor, repeatability, skipped steps and moved buffers. Every test skips
// visibly without a CUDA device.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_came.h"
#include "kernels/cuda/cuda_came.h"
#include "tests/kernels/cuda_test_util.h"
#include "tools/replay/case_io.h"

namespace came {
namespace {

using cuda::CudaCame;
using cuda::CudaError;
using cuda_test::GradKind;
using cuda_test::HasDevice;
using cuda_test::HostTensor;
using cuda_test::TensorSpec;
using cuda_test::TwinModel;

#define REQUIRE_DEVICE() \
  if (!HasDevice()) GTEST_SKIP() << "no CUDA device"

std::vector<TensorSpec> AwkwardSpecs(DType grad, DType param) {
  std::vector<TensorSpec> specs;
  const std::vector<std::vector<int64_t>> shapes = {
      {1}, {7}, {1000}, {1, 1}, {1, 9}, {9, 1}, {3, 1031}, {5, 1024}, {130, 513},
      {2, 3, 5}, {2, 2, 3, 4}, {3, 129, 72}, {600, 40}};
  int group = 0;
  for (const auto& s : shapes) specs.push_back({s, grad, param, group++ % 2});
  return specs;
}

std::vector<CameHyper> TwoGroups() {
  CameHyper a;
  a.lr = 1e-2;
  CameHyper b;
  b.lr = 3e-3;
  b.weight_decay = 0.01;
  b.clip_threshold = 0.5;
  return {a, b};
}

std::unique_ptr<CudaCame> MakeCuda(std::vector<TensorSlice> slices) {
  CudaError e;
  std::unique_ptr<CudaCame> c = CudaCame::Create(std::move(slices), 0, &e);
  EXPECT_TRUE(e.ok()) << e.message;
  return c;
}

// Checks every buffer of `got` against `ref` with the golden README's float32 criteria.
void ExpectClose(const std::vector<HostTensor>& got, const std::vector<HostTensor>& ref,
                 const std::vector<TensorSpec>& specs, const std::string& what) {
  for (size_t t = 0; t < got.size(); ++t) {
    const std::string where = what + " tensor " + ShapeString(specs[t].shape);
    EXPECT_LE(cuda_test::ParamErrorF(got[t].master, ref[t].master), kFloat32ParamTolerance) << where;
    EXPECT_LE(cuda_test::StateErrorF(got[t].exp_avg, ref[t].exp_avg), kFloat32StateTolerance) << where;
    EXPECT_LE(cuda_test::StateErrorF(got[t].exp_avg_sq, ref[t].exp_avg_sq), kFloat32StateTolerance) << where;
    EXPECT_LE(cuda_test::StateErrorF(got[t].sq_row, ref[t].sq_row), kFloat32StateTolerance) << where;
    EXPECT_LE(cuda_test::StateErrorF(got[t].sq_col, ref[t].sq_col), kFloat32StateTolerance) << where;
    EXPECT_LE(cuda_test::StateErrorF(got[t].res_row, ref[t].res_row), kFloat32StateTolerance) << where;
    EXPECT_LE(cuda_test::StateErrorF(got[t].res_col, ref[t].res_col), kFloat32StateTolerance) << where;
    // The 16-bit copy is exactly the rounded master.
    for (size_t i = 0; i < got[t].param.size() / 2; ++i) {
      alignas(4) uint8_t rounded[4];
      StoreFromFloat(rounded, specs[t].param_dtype, 0, got[t].master[i]);
      uint16_t want_bits;
      std::memcpy(&want_bits, rounded, 2);
      uint16_t got_bits;
      std::memcpy(&got_bits, got[t].param.data() + 2 * i, 2);
      ASSERT_EQ(got_bits, want_bits) << where << " element " << i;
    }
  }
}

void RunAgainstCpu(DType grad, DType param, const GradKind& kind, int steps,
                   StepOptions options = {}) {
  const std::vector<TensorSpec> specs = AwkwardSpecs(grad, param);
  TwinModel model(specs, 11);
  CpuCame cpu(model.HostSlices(), 2);
  LocalStepper stepper(cpu);
  std::unique_ptr<CudaCame> gpu = MakeCuda(model.DeviceSlices());
  ASSERT_NE(gpu, nullptr);
  const std::vector<CameHyper> groups = TwoGroups();
  for (int k = 0; k < steps; ++k) {
    model.NextGradients(kind);
    const StepResult want = stepper.Step(groups, options);
    ASSERT_TRUE(gpu->Step(groups, options, nullptr).ok());
    StepResult got;
    ASSERT_TRUE(gpu->ReadResult(&got, nullptr).ok());
    EXPECT_EQ(got.skipped, want.skipped);
    EXPECT_NEAR(got.grad_norm, want.grad_norm, 1e-9 * want.grad_norm) << "step " << k + 1;
    EXPECT_NEAR(got.grad_scale, want.grad_scale, 1e-9 * want.grad_scale);
    EXPECT_NEAR(got.min_clip_scale, want.min_clip_scale, 1e-5 * want.min_clip_scale);
  }
  ExpectClose(model.Download(), model.host(), specs,
              std::string(DTypeName(grad)) + " grads, " + std::string(DTypeName(param)) +
                  " params");
}

TEST(CudaCameTest, MatchesCpuOnAwkwardShapesFloat32) {
  REQUIRE_DEVICE();
  RunAgainstCpu(DType::kFloat32, DType::kFloat32, {}, 12);
}

TEST(CudaCameTest, MatchesCpuWithBFloat16GradsAndParams) {
  REQUIRE_DEVICE();
  RunAgainstCpu(DType::kBFloat16, DType::kBFloat16, {}, 12);
}

TEST(CudaCameTest, MatchesCpuWithGradientNormClipping) {
  REQUIRE_DEVICE();
  RunAgainstCpu(DType::kFloat32, DType::kFloat32, {}, 10, StepOptions{.max_grad_norm = 0.5});
}

TEST(CudaCameTest, MatchesCpuWithFloat16GradsAndParams) {
  REQUIRE_DEVICE();
  RunAgainstCpu(DType::kFloat16, DType::kFloat16, {}, 12);
}

TEST(CudaCameTest, MatchesCpuWithHugeDynamicRangeAndZeroRows) {
  REQUIRE_DEVICE();
  RunAgainstCpu(DType::kFloat32, DType::kBFloat16, {.huge_range = true, .zero_row = true}, 10);
}

TEST(CudaCameTest, TwoRunsAreBitwiseEqual) {
  REQUIRE_DEVICE();
  std::vector<std::vector<HostTensor>> runs;
  for (int run = 0; run < 2; ++run) {
    TwinModel model(AwkwardSpecs(DType::kBFloat16, DType::kFloat32), 5);
    std::unique_ptr<CudaCame> gpu = MakeCuda(model.DeviceSlices());
    ASSERT_NE(gpu, nullptr);
    for (int k = 0; k < 4; ++k) {
      model.NextGradients({});
      ASSERT_TRUE(gpu->Step(TwoGroups(), StepOptions{.max_grad_norm = 1.0}, nullptr).ok());
    }
    runs.push_back(model.Download());
  }
  for (size_t t = 0; t < runs[0].size(); ++t) {
    EXPECT_EQ(runs[0][t].master, runs[1][t].master) << t;
    EXPECT_EQ(runs[0][t].exp_avg, runs[1][t].exp_avg) << t;
    EXPECT_EQ(runs[0][t].sq_row, runs[1][t].sq_row) << t;
    EXPECT_EQ(runs[0][t].res_col, runs[1][t].res_col) << t;
  }
}

TEST(CudaCameTest, NonFiniteGradientSkipsTheStepBitwise) {
  REQUIRE_DEVICE();
  TwinModel model(AwkwardSpecs(DType::kFloat32, DType::kBFloat16), 3);
  std::unique_ptr<CudaCame> gpu = MakeCuda(model.DeviceSlices());
  ASSERT_NE(gpu, nullptr);
  model.NextGradients({});
  ASSERT_TRUE(gpu->Step(TwoGroups(), StepOptions{}, nullptr).ok());
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    model.NextGradients({});
    model.SetGradient(8, 77, bad);
    const std::vector<HostTensor> before = model.Download();
    ASSERT_TRUE(gpu->Step(TwoGroups(), StepOptions{}, nullptr).ok());
    StepResult r;
    ASSERT_TRUE(gpu->ReadResult(&r, nullptr).ok());
    EXPECT_TRUE(r.skipped);
    const std::vector<HostTensor> after = model.Download();
    for (size_t t = 0; t < before.size(); ++t) {
      EXPECT_EQ(std::memcmp(before[t].master.data(), after[t].master.data(), before[t].master.size() * 4), 0);
      EXPECT_EQ(before[t].param, after[t].param);
      EXPECT_EQ(std::memcmp(before[t].exp_avg.data(), after[t].exp_avg.data(), before[t].exp_avg.size() * 4), 0);
      EXPECT_EQ(std::memcmp(before[t].sq_row.data(), after[t].sq_row.data(), before[t].sq_row.size() * 4), 0);
      EXPECT_EQ(std::memcmp(before[t].res_col.data(), after[t].res_col.data(), before[t].res_col.size() * 4), 0);
      EXPECT_EQ(std::memcmp(before[t].exp_avg_sq.data(), after[t].exp_avg_sq.data(), before[t].exp_avg_sq.size() * 4), 0);
    }
  }
}

TEST(CudaCameTest, MovedGradientBuffersAreFollowed) {
  REQUIRE_DEVICE();
  const std::vector<TensorSpec> specs = AwkwardSpecs(DType::kFloat32, DType::kFloat32);
  TwinModel moved(specs, 9), fixed(specs, 9);
  std::unique_ptr<CudaCame> a = MakeCuda(moved.DeviceSlices());
  std::unique_ptr<CudaCame> b = MakeCuda(fixed.DeviceSlices());
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  for (int k = 0; k < 4; ++k) {
    moved.NextGradients({});
    fixed.NextGradients({});
    if (k >= 2) {
      for (int t = 0; t < static_cast<int>(specs.size()); t += 2) moved.MoveDeviceGradient(t);
      ASSERT_TRUE(a->SetBuffers(moved.DeviceSlices(), nullptr).ok());
    }
    ASSERT_TRUE(a->Step(TwoGroups(), StepOptions{}, nullptr).ok());
    ASSERT_TRUE(b->Step(TwoGroups(), StepOptions{}, nullptr).ok());
  }
  const auto x = moved.Download(), y = fixed.Download();
  for (size_t t = 0; t < x.size(); ++t) EXPECT_EQ(x[t].master, y[t].master) << t;
}

// Phase API: a [37, 700] tensor split at arbitrary (mid-row) points into three CudaCames, as
// three ranks would hold it; the host completes the partial sums between phases (the
// all-reduce). The result equals one CudaCame over the whole tensor to rounding.
TEST(CudaCameTest, PhaseApiOverRangesStitchedEqualsWholeTensor) {
  REQUIRE_DEVICE();
  const std::vector<int64_t> shape = {37, 700};
  const TensorGeometry geom = TensorGeometry::FromShape(shape);
  const int64_t cuts[] = {0, 5001, 5002, geom.numel};
  constexpr int kParts = 3;
  TwinModel whole({{shape}}, 21);
  std::vector<std::unique_ptr<TwinModel>> parts;
  std::vector<std::unique_ptr<CudaCame>> gpus;
  for (int k = 0; k < kParts; ++k) {
    parts.push_back(std::make_unique<TwinModel>(std::vector<TensorSpec>{{shape}}, 21));
    TensorSlice s = parts[k]->DeviceSlices()[0];
    const int64_t off = cuts[k];
    s.begin = cuts[k];
    s.end = cuts[k + 1];
    s.grad = static_cast<const float*>(s.grad) + off;
    s.master += off;
    s.exp_avg += off;
    gpus.push_back(MakeCuda({s}));
    ASSERT_NE(gpus.back(), nullptr);
  }
  std::unique_ptr<CudaCame> gpu = MakeCuda(whole.DeviceSlices());
  ASSERT_NE(gpu, nullptr);
  const int64_t stats = gpus[0]->stats_size();
  double *d_sums, *d_total, *d_sum_sq;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_sums), sizeof(double) * stats * kParts), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_total), sizeof(double) * kParts), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_sum_sq), sizeof(double) * kParts), cudaSuccess);
  // Completes part k's device buffer `d + k * count` by summing all parts (in part order).
  auto all_reduce = [&](double* d, int64_t count) {
    std::vector<double> h(count * kParts), sum(count, 0.0);
    ASSERT_EQ(cudaMemcpy(h.data(), d, sizeof(double) * h.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    for (int k = 0; k < kParts; ++k)
      for (int64_t i = 0; i < count; ++i) sum[i] += h[k * count + i];
    for (int k = 0; k < kParts; ++k)
      ASSERT_EQ(cudaMemcpy(d + k * count, sum.data(), sizeof(double) * count, cudaMemcpyHostToDevice), cudaSuccess);
  };
  const std::vector<CameHyper> groups = {TwoGroups()[0]};
  for (int step = 0; step < 4; ++step) {
    whole.NextGradients({});
    const std::vector<HostTensor> g = whole.Download();
    for (int k = 0; k < kParts; ++k) {
      ASSERT_EQ(cudaMemcpy(const_cast<void*>(parts[k]->DeviceSlices()[0].grad), g[0].grad.data(),
                           g[0].grad.size(), cudaMemcpyHostToDevice), cudaSuccess);
    }
    ASSERT_TRUE(gpu->Step(groups, StepOptions{}, nullptr).ok());
    for (int k = 0; k < kParts; ++k) ASSERT_TRUE(gpus[k]->GradStats(d_sums + k * stats, d_total + k, nullptr).ok());
    all_reduce(d_sums, stats);
    all_reduce(d_total, 1);
    for (int k = 0; k < kParts; ++k) {
      ASSERT_TRUE(gpus[k]->BeginStep(d_total + k, 0.0, nullptr).ok());
      ASSERT_TRUE(gpus[k]->UpdateSecondMoments(d_sums + k * stats, groups, nullptr).ok());
      ASSERT_TRUE(gpus[k]->UpdateSquares(d_sum_sq + k, nullptr).ok());
    }
    all_reduce(d_sum_sq, 1);
    for (int k = 0; k < kParts; ++k)
      ASSERT_TRUE(gpus[k]->Momentum(d_sum_sq + k, d_sums + k * stats, nullptr).ok());
    all_reduce(d_sums, stats);
    for (int k = 0; k < kParts; ++k) {
      ASSERT_TRUE(gpus[k]->UpdateResiduals(d_sums + k * stats, nullptr).ok());
      ASSERT_TRUE(gpus[k]->Apply(nullptr).ok());
    }
  }
  const std::vector<HostTensor> want = whole.Download();
  std::vector<float> master(geom.numel), exp_avg(geom.numel);
  for (int k = 0; k < kParts; ++k) {
    const std::vector<HostTensor> got = parts[k]->Download();
    for (int64_t i = cuts[k]; i < cuts[k + 1]; ++i) {
      master[i] = got[0].master[i];
      exp_avg[i] = got[0].exp_avg[i];
    }
    // Every part holds the whole tensor's statistics.
    EXPECT_LE(cuda_test::StateErrorF(got[0].sq_row, want[0].sq_row), 1e-6) << k;
    EXPECT_LE(cuda_test::StateErrorF(got[0].sq_col, want[0].sq_col), 1e-6) << k;
    EXPECT_LE(cuda_test::StateErrorF(got[0].res_row, want[0].res_row), 1e-6) << k;
    EXPECT_LE(cuda_test::StateErrorF(got[0].res_col, want[0].res_col), 1e-6) << k;
  }
  EXPECT_LE(cuda_test::ParamErrorF(master, want[0].master), 1e-6);
  EXPECT_LE(cuda_test::StateErrorF(exp_avg, want[0].exp_avg), 1e-6);
  cudaFree(d_sums);
  cudaFree(d_total);
  cudaFree(d_sum_sq);
}

TEST(CudaCameTest, CreateWithoutADeviceIsUnavailable) {
  if (HasDevice()) GTEST_SKIP() << "a CUDA device is present: this checks the error without one";
  TensorSlice s;
  s.geom = TensorGeometry::FromShape(std::vector<int64_t>{4, 6});
  s.end = 24;
  CudaError e;
  EXPECT_EQ(CudaCame::Create({s}, 0, &e), nullptr);
  EXPECT_EQ(e.code, CudaError::kUnavailable);
  EXPECT_EQ(e.message, "no CUDA device is present");
}

}  // namespace
}  // namespace came
