// The one step sequence (kernels/step_sequence.h) on the CUDA backend (CudaPhases) equals it
// on the CPU backend (LocalStepper over CpuCame) within the float32 tolerances, over 10
// steps with bf16/fp16 parameters among fp32 ones, gradient-norm clipping, and a skipped
// (non-finite) step that changes nothing. Skips visibly without a GPU.
#include <cuda_runtime_api.h>

#include <chrono>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_came.h"
#include "kernels/cuda/cuda_came.h"
#include "kernels/cuda/cuda_phases.h"
#include "kernels/step_sequence.h"
#include "tests/kernels/cuda_test_util.h"
#include "tools/replay/case_io.h"

namespace came {
namespace {

using cuda::CudaCame;
using cuda::CudaError;
using cuda::CudaPhases;
using cuda_test::GradKind;
using cuda_test::HostTensor;
using cuda_test::TensorSpec;
using cuda_test::TwinModel;

std::vector<TensorSpec> Specs() {
  return {{{7}, DType::kFloat32, DType::kFloat32, 0},
          {{130, 513}, DType::kBFloat16, DType::kBFloat16, 1},
          {{3, 129, 72}, DType::kFloat32, DType::kFloat32, 0},
          {{5, 1024}, DType::kFloat16, DType::kFloat16, 1},
          {{1000}, DType::kBFloat16, DType::kBFloat16, 0},
          {{9, 1}, DType::kFloat32, DType::kFloat32, 1}};
}

std::vector<CameHyper> Groups() {
  CameHyper a;
  a.lr = 1e-2;
  CameHyper b;
  b.lr = 3e-3;
  b.weight_decay = 0.01;
  b.clip_threshold = 0.5;
  return {a, b};
}

void ExpectClose(const std::vector<HostTensor>& got, const std::vector<HostTensor>& ref,
                 const std::string& what) {
  for (size_t t = 0; t < got.size(); ++t) {
    const std::string where = what + ", tensor " + std::to_string(t);
    EXPECT_LE(cuda_test::ParamErrorF(got[t].master, ref[t].master), kFloat32ParamTolerance)
        << where;
    for (auto [g, r] : {std::pair{&got[t].exp_avg, &ref[t].exp_avg},
                        std::pair{&got[t].exp_avg_sq, &ref[t].exp_avg_sq},
                        std::pair{&got[t].sq_row, &ref[t].sq_row},
                        std::pair{&got[t].sq_col, &ref[t].sq_col},
                        std::pair{&got[t].res_row, &ref[t].res_row},
                        std::pair{&got[t].res_col, &ref[t].res_col}})
      EXPECT_LE(cuda_test::StateErrorF(*g, *r), kFloat32StateTolerance) << where;
  }
}

void RunTenSteps(double max_grad_norm) {
  TwinModel model(Specs(), 7);
  CpuCame cpu(model.HostSlices(), 1);
  LocalStepper stepper(cpu);
  CudaError error;
  std::unique_ptr<CudaCame> came = CudaCame::Create(model.DeviceSlices(), 0, &error);
  ASSERT_NE(came, nullptr) << error.message;
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  std::unique_ptr<CudaPhases> phases =
      CudaPhases::Create(*came, stream, std::chrono::seconds(30), &error);
  ASSERT_NE(phases, nullptr) << error.message;
  const std::vector<CameHyper> groups = Groups();
  StepOptions options;
  options.max_grad_norm = max_grad_norm;
  for (int step = 1; step <= 10; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    model.NextGradients(GradKind{});
    const bool nan_step = step == 4;
    if (nan_step) model.SetGradient(1, 17, std::numeric_limits<float>::quiet_NaN());
    const std::vector<HostTensor> before = model.Download();
    const StepResult want = stepper.Step(groups, options);
    SequenceResult got;
    const PhaseStatus s = RunStepSequence(*phases, groups, max_grad_norm, nullptr, &got);
    ASSERT_TRUE(s.ok()) << s.message;
    EXPECT_EQ(got.decision.skipped, want.skipped);
    EXPECT_EQ(got.decision.skipped, nan_step);
    if (!nan_step) {
      EXPECT_NEAR(got.decision.grad_norm, want.grad_norm, 1e-6 * want.grad_norm);
      EXPECT_NEAR(got.decision.grad_scale, want.grad_scale, 1e-6);
      EXPECT_NEAR(got.min_clip_scale, want.min_clip_scale, 1e-5);
    }
    const std::vector<HostTensor> after = model.Download();
    if (nan_step) {
      for (size_t t = 0; t < after.size(); ++t) {
        EXPECT_EQ(after[t].master, before[t].master) << "a skipped step changed tensor " << t;
        EXPECT_EQ(after[t].exp_avg, before[t].exp_avg) << "a skipped step changed tensor " << t;
      }
    }
    ExpectClose(after, model.host(), "CUDA vs CPU");
  }
  phases.reset();
  cudaStreamDestroy(stream);
}

TEST(CudaPhasesTest, TheStepSequenceOnCudaEqualsItOnTheCpu) {
  if (!cuda_test::HasDevice()) GTEST_SKIP() << "no CUDA device";
  RunTenSteps(0.0);
}

TEST(CudaPhasesTest, WithGradientNormClipping) {
  if (!cuda_test::HasDevice()) GTEST_SKIP() << "no CUDA device";
  RunTenSteps(0.05);
}

}  // namespace
}  // namespace came
