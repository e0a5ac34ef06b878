// Every golden case through the double reference and the fused CPU kernels.
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_loops.h"
#include "tools/replay/case_io.h"
#include "tools/replay/trajectory.h"

namespace came {
namespace {

class GoldenTest : public testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, ReferenceMatchesToDoublePrecision) {
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  const TrajectoryErrors e = CompareTrajectory(*c, RunReference(*c));
  ASSERT_EQ(e.param.size(), static_cast<size_t>(c->steps));
  EXPECT_LE(e.max_param(), kFloat64Tolerance);
  EXPECT_LE(e.max_state(), kFloat64Tolerance);
}

TEST_P(GoldenTest, CpuMatchesWithinFloat32Tolerance) {
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  for (int threads : {1, 2, 3}) {
    const TrajectoryErrors e = CompareTrajectory(*c, RunCpu(*c, DType::kFloat32, threads));
    for (size_t k = 0; k < e.param.size(); ++k)
      EXPECT_LE(e.param[k], kFloat32ParamTolerance) << "step " << k + 1 << " threads " << threads;
    for (const auto& [name, err] : e.state)
      EXPECT_LE(err, kFloat32StateTolerance) << name << " threads " << threads;
  }
}

// Every instruction set's loops that this CPU can run, explicitly: the dispatcher only ever
// picks the best one, so the portable fallback would otherwise go untested here.
TEST_P(GoldenTest, EveryInstructionSetMatches) {
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  __builtin_cpu_init();
  std::vector<const cpu::CpuLoops*> isas = {&cpu::GenericLoops()};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    isas.push_back(&cpu::Avx2Loops());
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    isas.push_back(&cpu::Avx512Loops());
  for (const cpu::CpuLoops* loops : isas) {
    for (DType g : {DType::kFloat32, DType::kBFloat16}) {
      const GoldenCase expected = g == DType::kFloat32 ? *c : WithTrajectory(*c, RunReference(RoundGradients(*c, g)));
      const TrajectoryErrors e = CompareTrajectory(expected, RunCpu(*c, g, 2, loops));
      EXPECT_LE(e.max_param(), kFloat32ParamTolerance) << loops->isa << " " << DTypeName(g);
      EXPECT_LE(e.max_state(), kFloat32StateTolerance) << loops->isa << " " << DTypeName(g);
    }
  }
}

// The dispatcher picks the best instruction set; says visibly when AVX-512 went unrun.
TEST(IsaTest, DispatcherPicksTheBestInstructionSet) {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const std::string want = avx512 ? "avx512" : avx2 ? "avx2" : "generic";
  EXPECT_EQ(std::string(cpu::GetCpuLoops().isa), want);
  if (!avx512) GTEST_SKIP() << "this CPU has no AVX-512: the AVX-512 loops were built but not run";
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenTest, testing::ValuesIn(ListGoldenCases()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string n = std::filesystem::path(info.param).stem().string();
                           for (char& ch : n)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace came
