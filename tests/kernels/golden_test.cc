// Every golden case through the double reference and the fused CPU kernels.
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tools/replay/case_io.h"
#include "tools/replay/trajectory.h"

namespace came {
namespace {

std::vector<std::string> GoldenFiles() {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator("tests/data/golden"))
    if (e.path().extension() == ".json") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

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

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenTest, testing::ValuesIn(GoldenFiles()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string n = std::filesystem::path(info.param).stem().string();
                           for (char& ch : n)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace came
