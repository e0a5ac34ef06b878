// End-to-end: real trainers (PyTorch through came.ShardedCAME) under came-launch, with a
// coordinator and one came-rankd per rank, all separate processes on 127.0.0.1.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/temp_dir.h"
#include "nlohmann/json.hpp"
#include "runtime/local_cluster.h"
#include "tools/replay/case_io.h"

namespace came {
namespace {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;
  std::string output;
};

// Runs came-launch with `nproc` ranks and the e2e trainer; a hard deadline stops a hang.
RunResult Launch(int nproc, const std::string& trainer_args, const std::string& launch_args = "") {
  const std::string cmd = "timeout -k 10 300 " + std::string(CAME_LAUNCH) + " --nproc " +
                          std::to_string(nproc) + " " + launch_args +
                          " -- /usr/bin/python3 " + E2E_TRAINER + " " +
                          trainer_args + " 2>&1";
  RunResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::vector<float> ReadFloats(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

class E2eTest : public ::testing::TestWithParam<int> {};

TEST_P(E2eTest, TrainingLossDecreases) {
  testing::TempDir dir("came-e2e");
  const RunResult r = Launch(GetParam(), "--mode loss --steps 30 --out " + dir.path.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream f(dir.path / "losses.json");
  const auto losses = nlohmann::json::parse(f).get<std::vector<double>>();
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), 0.7 * losses.front()) << r.output;
}

TEST_P(E2eTest, SameDataEveryRankEqualsSingleRankEngine) {
  const int world = GetParam();
  testing::TempDir dir("came-e2e");
  const int steps = 10;
  const RunResult r = Launch(world, "--mode dump --steps " + std::to_string(steps) + " --out " +
                                        dir.path.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream mf(dir.path / "manifest.json");
  const auto manifest = nlohmann::json::parse(mf);

  std::vector<TensorSpec> specs;
  std::vector<int64_t> sizes;
  for (const auto& t : manifest["tensors"]) {
    specs.push_back({t["name"], t["shape"].get<std::vector<int64_t>>(), DType::kFloat32, t["group"]});
    int64_t n = 1;
    for (int64_t d : specs.back().shape) n *= d;
    sizes.push_back(n);
  }
  // Split a flat dump into per-tensor vectors.
  auto split = [&](const std::vector<float>& flat) {
    std::vector<std::vector<double>> out;
    size_t at = 0;
    for (int64_t n : sizes) {
      out.emplace_back(flat.begin() + at, flat.begin() + at + n);
      at += n;
    }
    EXPECT_EQ(at, flat.size());
    return out;
  };
  const auto init = ReadFloats(dir.path / "rank0_init.bin");
  const auto final0 = ReadFloats(dir.path / "rank0_final.bin");
  for (int rank = 1; rank < world; ++rank) {
    const std::string r_ = "rank" + std::to_string(rank);
    EXPECT_EQ(ReadFloats(dir.path / (r_ + "_init.bin")), init) << "rank " << rank
                                                                << " started elsewhere";
    EXPECT_EQ(ReadFloats(dir.path / (r_ + "_final.bin")), final0) << "rank " << rank;
  }

  EngineOptions options;
  CameHyper decay, no_decay;
  decay.lr = no_decay.lr = manifest["lr"].get<double>();
  decay.weight_decay = manifest["weight_decay"][0].get<double>();
  no_decay.weight_decay = manifest["weight_decay"][1].get<double>();
  options.groups = {decay, no_decay};
  auto single = LocalCluster::Create(specs, 1, 1, split(init), options);
  ASSERT_TRUE(single.ok()) << single.status();
  for (int step = 1; step <= steps; ++step) {
    const auto grads = split(ReadFloats(dir.path / ("rank0_grad" + std::to_string(step) + ".bin")));
    StepInputs in;
    in.step = step;
    ASSERT_TRUE((*single)->Step([&](int, int t, std::span<float> g) {
                              for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(grads[t][i]);
                            }, in).ok());
  }
  const auto got = split(final0);
  for (size_t t = 0; t < specs.size(); ++t) {
    const std::vector<double> want = (*single)->Param(static_cast<int>(t));
    EXPECT_LE(ParamError(got[t], want), kFloat32ParamTolerance) << specs[t].name;
    EXPECT_NE(got[t], split(init)[t]) << specs[t].name << " never changed";
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, E2eTest, ::testing::Values(2, 3));

// Save at step 5 of 10 through the service, then a new job (new coordinator and daemons,
// same --checkpoint-dir) resumes from the latest checkpoint and takes steps 6..10: it ends
// where the first job did, exactly at the same world size, within float32 tolerance when it
// reshards to another.
TEST(E2eCheckpointTest, ANewJobResumesFromTheLatestCheckpoint) {
  for (int resume_world : {2, 3}) {
    testing::TempDir dir("came-e2e");
    const std::string ckpt = "--checkpoint-dir " + (dir.path / "ckpt").string();
    const RunResult first =
        Launch(2, "--mode ckpt-save --steps 10 --out " + (dir.path / "a").string(), ckpt);
    ASSERT_EQ(first.exit_code, 0) << first.output;
    ASSERT_TRUE(fs::exists(dir.path / "ckpt" / "step-000000000005" / "manifest.json"))
        << first.output;
    const RunResult second = Launch(
        resume_world, "--mode ckpt-resume --steps 10 --out " + (dir.path / "b").string(), ckpt);
    ASSERT_EQ(second.exit_code, 0) << second.output;
    const auto want = ReadFloats(dir.path / "a" / "rank0_final.bin");
    const auto got = ReadFloats(dir.path / "b" / "rank0_resumed.bin");
    ASSERT_EQ(want.size(), got.size());
    if (resume_world == 2) {
      EXPECT_EQ(got, want) << "resuming at the same world size must be exact";
    } else {
      EXPECT_LE(ParamError(std::vector<double>(got.begin(), got.end()),
                           std::vector<double>(want.begin(), want.end())),
                kFloat32ParamTolerance);
    }
    EXPECT_NE(got, ReadFloats(dir.path / "b" / "rank0_init.bin")) << "nothing was loaded";
  }
}

TEST(E2eFailureTest, ManifestsThatDifferStopTheJobNamingTheRank) {
  testing::TempDir dir("came-e2e");
  const RunResult r = Launch(2, "--mode mismatch --steps 3 --out " + dir.path.string());
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("FAILED_PRECONDITION"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("rank 1"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace came
