// Every golden case through the CUDA kernels (as came-replay --impl cuda runs it): float32
// gradients against the stored trajectory, bf16 and fp16 gradients against the reference on
// the rounded gradients, and a CUDA-graph replay of the step against the eager step, bit for
// bit. Skips visibly without a CUDA device.
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kernels/cuda_test_util.h"
#include "tools/replay/case_io.h"
#include "tools/replay/cuda_trajectory.h"
#include "tools/replay/trajectory.h"

namespace came {
namespace {

class CudaGoldenTest : public testing::TestWithParam<std::string> {};

TEST_P(CudaGoldenTest, MatchesWithinFloat32Tolerance) {
  if (!cuda_test::HasDevice()) GTEST_SKIP() << "no CUDA device";
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  for (DType g : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    const GoldenCase expected =
        g == DType::kFloat32 ? *c : WithTrajectory(*c, RunReference(RoundGradients(*c, g)));
    auto got = RunCuda(*c, g);
    ASSERT_TRUE(got.ok()) << got.status();
    const TrajectoryErrors e = CompareTrajectory(expected, *got);
    ASSERT_EQ(e.param.size(), static_cast<size_t>(c->steps));
    for (size_t k = 0; k < e.param.size(); ++k)
      EXPECT_LE(e.param[k], kFloat32ParamTolerance) << DTypeName(g) << " step " << k + 1;
    for (const auto& [name, err] : e.state)
      EXPECT_LE(err, kFloat32StateTolerance) << DTypeName(g) << " " << name;
  }
}

TEST_P(CudaGoldenTest, GraphReplayEqualsEagerBitwise) {
  if (!cuda_test::HasDevice()) GTEST_SKIP() << "no CUDA device";
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  auto eager = RunCuda(*c, DType::kFloat32, /*graph=*/false);
  auto graph = RunCuda(*c, DType::kFloat32, /*graph=*/true);
  ASSERT_TRUE(eager.ok()) << eager.status();
  ASSERT_TRUE(graph.ok()) << graph.status();
  EXPECT_EQ(eager->params, graph->params);
  EXPECT_EQ(eager->state, graph->state);
}

TEST(CudaGoldenCliTest, UnavailableWithoutADevice) {
  if (cuda_test::HasDevice()) GTEST_SKIP() << "a CUDA device is present: this checks the error without one";
  auto c = LoadGoldenCase("tests/data/golden/2d_4x6_base.json");
  ASSERT_TRUE(c.ok()) << c.status();
  auto got = RunCuda(*c);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(got.status().message(), "no CUDA device is present");
}

INSTANTIATE_TEST_SUITE_P(AllCases, CudaGoldenTest, testing::ValuesIn(ListGoldenCases()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string n = std::filesystem::path(info.param).stem().string();
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace came
