// came-replay --impl cuda as a user runs it (the built binary in a subprocess): on a machine
// without a CUDA device it exits 2 with one line saying so; with a device every golden case
// passes, with float32 and bf16 gradients. Each test skips visibly where it cannot apply.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tools/replay/cuda_trajectory.h"

#ifndef CAME_REPLAY_BIN
#error "CAME_REPLAY_BIN must name the came-replay binary"
#endif

namespace came {
namespace {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs came-replay with these arguments (no shell metacharacters in them).
RunResult Replay(const std::string& args) {
  const fs::path dir = fs::temp_directory_path();
  const fs::path out = dir / ("came_replay_cuda_out_" + std::to_string(getpid()));
  const fs::path err = dir / ("came_replay_cuda_err_" + std::to_string(getpid()));
  const std::string cmd = std::string(CAME_REPLAY_BIN) + " " + args + " >" + out.string() +
                          " 2>" + err.string();
  const int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadAll(out);
  r.err = ReadAll(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

TEST(ReplayCudaTest, WithoutADeviceExits2WithOneLine) {
  const std::string why = CudaUnavailableReason();
  if (why.empty()) GTEST_SKIP() << "a CUDA device is present: this checks the error without one";
  const RunResult r = Replay("--case tests/data/golden/2d_4x6_base.json --impl cuda");
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("came-replay: " + why, 0), 0u) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(ReplayCudaTest, EveryGoldenCasePassesOnTheDevice) {
  if (!CudaUnavailableReason().empty()) GTEST_SKIP() << "no CUDA device";
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator("tests/data/golden"))
    if (e.path().extension() == ".json") files.push_back(e.path().string());
  ASSERT_FALSE(files.empty());
  for (const std::string& f : files)
    for (const char* g : {"float32", "bfloat16"}) {
      const RunResult r = Replay("--case " + f + " --impl cuda --grad-dtype " + g);
      EXPECT_EQ(r.exit_code, 0) << f << " " << g << "\n" << r.out << r.err;
      EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
    }
}

}  // namespace
}  // namespace came
