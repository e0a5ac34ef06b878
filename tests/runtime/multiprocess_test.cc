// The sharded engine across real processes (Gloo over 127.0.0.1, FileStore rendezvous):
// W = 1..5 ranks, 10 steps, a different gradient on every rank; parameters and every state
// tensor must equal the double reference and the single-rank engine on the mean gradient.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "gtest/gtest.h"
#include "tests/util/temp_dir.h"
#include "nlohmann/json.hpp"
#include "runtime/local_cluster.h"
#include "tests/runtime/reference_model.h"
#include "tests/runtime/test_model.h"
#include "tools/replay/case_io.h"

extern char** environ;

namespace came {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kSteps = 10;

// Runs W workers to completion (or kills them all after `timeout`); returns their outputs.
std::vector<json> RunWorkers(int world, const std::vector<std::string>& extra) {
  testing::TempDir dir("came-mp");
  fs::create_directories(dir.path / "store");
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> args = {ENGINE_WORKER,   "--rank",  std::to_string(r),
                                     "--world",       std::to_string(world),
                                     "--store",       (dir.path / "store").string(),
                                     "--steps",       std::to_string(kSteps),
                                     "--out",         (dir.path / ("rank" + std::to_string(r))).string()};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    EXPECT_EQ(posix_spawn(&pid, ENGINE_WORKER, nullptr, nullptr, argv.data(), environ), 0);
    pids.push_back(pid);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::set<pid_t> running(pids.begin(), pids.end());
  while (!running.empty()) {
    for (auto it = running.begin(); it != running.end();) {
      int status = 0;
      if (waitpid(*it, &status, WNOHANG) == *it) {
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a worker failed";
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "workers did not finish in time; killing them";
      for (pid_t p : running) kill(p, SIGKILL);
      for (pid_t p : running) waitpid(p, nullptr, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::vector<json> outs;
  for (int r = 0; r < world; ++r) {
    std::ifstream f(dir.path / ("rank" + std::to_string(r)));
    if (!f) {
      ADD_FAILURE() << "rank " << r << " wrote no output";
      outs.push_back(json::object());
      continue;
    }
    outs.push_back(json::parse(f));
  }
  return outs;
}

// Assembles tensor `name`'s state from the ranks' pieces (factored stats: every sharer's copy
// must be identical).
std::map<std::string, std::vector<double>> Assemble(const std::vector<json>& outs,
                                                    const std::string& name, int64_t numel) {
  std::map<std::string, std::vector<double>> st;
  for (size_t r = 0; r < outs.size(); ++r) {
    if (!outs[r].contains("pieces") || !outs[r]["pieces"].contains(name)) continue;
    const json& p = outs[r]["pieces"][name];
    const int64_t begin = p["begin"];
    for (const char* key : {"exp_avg", "exp_avg_sq"}) {
      if (!p.contains(key)) continue;
      auto& full = st[key];
      full.resize(numel, NAN);
      const auto v = p[key].get<std::vector<double>>();
      std::copy(v.begin(), v.end(), full.begin() + begin);
    }
    for (const char* key : {"exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row", "exp_avg_res_col"}) {
      if (!p.contains(key)) continue;
      const auto v = p[key].get<std::vector<double>>();
      if (st.count(key)) {
        EXPECT_EQ(st[key], v) << name << "." << key << ": rank " << r << "'s copy differs";
      } else {
        st[key] = v;
      }
    }
  }
  return st;
}

void ExpectMatches(const std::vector<json>& outs, const testing::ReferenceRun& ref,
                   LocalCluster* single) {
  const auto specs = testing::TestModel();
  for (size_t t = 0; t < specs.size(); ++t) {
    const std::string& name = specs[t].name;
    const auto p0 = outs[0]["params"][name].get<std::vector<double>>();
    for (size_t r = 1; r < outs.size(); ++r)
      EXPECT_EQ(outs[r]["params"][name].get<std::vector<double>>(), p0)
          << name << ": rank " << r << "'s parameters differ from rank 0's";
    EXPECT_LE(ParamError(p0, ref.params[t]), kFloat32ParamTolerance) << name;
    std::map<std::string, std::vector<double>> single_state;
    if (single) {
      EXPECT_LE(ParamError(p0, single->Param(t)), kFloat32ParamTolerance) << name;
      auto s = single->State(t);
      ASSERT_TRUE(s.ok()) << s.status();
      single_state = *std::move(s);
    }
    const auto st = Assemble(outs, name, static_cast<int64_t>(ref.params[t].size()));
    for (const auto& [key, values] : testing::NamedState(ref.states[t])) {
      ASSERT_EQ(st.count(key), 1u) << name << "." << key << " missing";
      EXPECT_LE(StateError(st.at(key), values), kFloat32StateTolerance) << name << "." << key;
      if (single) {
        EXPECT_LE(StateError(st.at(key), single_state.at(key)), kFloat32StateTolerance)
            << name << "." << key;
      }
    }
  }
}

// Trains TestModel for kSteps steps on one rank in this process, with gradient grad(step, t, i).
std::unique_ptr<LocalCluster> RunSingleRank(DType dtype,
                                            std::function<double(int, int, int64_t)> grad) {
  const auto specs = testing::TestModel(dtype);
  EngineOptions options;
  options.groups = testing::TestGroups();
  auto single = LocalCluster::Create(specs, 1, 1, testing::InitialParams(specs), options);
  EXPECT_TRUE(single.ok()) << single.status();
  if (!single.ok()) return nullptr;
  for (int step = 1; step <= kSteps; ++step) {
    auto stats = (*single)->Step(
        [&](int, int t, std::span<float> g) {
          for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(grad(step, t, i));
        },
        {step, testing::StepLr(step)});
    EXPECT_TRUE(stats.ok()) << stats.status();
    if (!stats.ok()) return nullptr;
  }
  return *std::move(single);
}

class MultiProcessTest : public ::testing::TestWithParam<int> {};

TEST_P(MultiProcessTest, EqualsReferenceAndSingleRankEngine) {
  const int world = GetParam();
  const auto outs = RunWorkers(world, {});
  if (::testing::Test::HasFailure()) return;
  for (const json& o : outs) EXPECT_EQ(o["steps_taken"], kSteps);

  // The single-rank engine (in this process) on the mean gradient.
  auto single = RunSingleRank(DType::kFloat32, [world](int step, int t, int64_t i) {
    return testing::MeanGrad(world, step, t, i);
  });
  ASSERT_NE(single, nullptr);
  ExpectMatches(outs, testing::RunReferenceModel(world, kSteps), single.get());
}

INSTANTIATE_TEST_SUITE_P(Worlds, MultiProcessTest, ::testing::Values(1, 2, 3, 4, 5));

TEST(MultiProcessSkipTest, NanOnOneRankSkipsTheStepOnEveryRank) {
  const int world = 3, nan_step = 4;
  const auto outs = RunWorkers(world, {"--nan-rank", "2", "--nan-step", std::to_string(nan_step)});
  if (::testing::Test::HasFailure()) return;
  for (const json& o : outs) {
    EXPECT_EQ(o["skipped"], json::array({nan_step}));
    EXPECT_EQ(o["steps_taken"], kSteps - 1);
  }
  ExpectMatches(outs, testing::RunReferenceModel(world, kSteps, {nan_step}), nullptr);
}

// bf16 and fp16 parameters and gradients over 4 processes, the same gradient on every rank:
// the fp32 master copies equal the single-rank engine's (with a power-of-two world the 16-bit
// average of equal values is exact: Note [16-bit reduction] in runtime/sharded_came.h), and
// the 16-bit parameters are the masters rounded.
TEST(MultiProcess16BitTest, MastersEqualSingleRankFp32Master) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    const int world = 4;
    const auto outs = RunWorkers(world, {"--dtype", std::string(DTypeName(dtype)), "--same-grads"});
    if (::testing::Test::HasFailure()) return;
    const auto specs = testing::TestModel(dtype);
    auto single = RunSingleRank(dtype, [](int step, int t, int64_t i) {
      return testing::Grad(0, step, t, i);
    });
    ASSERT_NE(single, nullptr);
    for (size_t t = 0; t < specs.size(); ++t) {
      const std::string& name = specs[t].name;
      std::vector<double> master(single->plan().tensors[t].geom.numel, NAN);
      for (const json& o : outs) {
        if (!o["pieces"].contains(name)) continue;
        const auto m = o["pieces"][name]["master"].get<std::vector<double>>();
        std::copy(m.begin(), m.end(), master.begin() + o["pieces"][name]["begin"].get<int64_t>());
      }
      const TensorStateView sv = single->engine(0).tensor_state(static_cast<int>(t));
      const std::vector<double> want(sv.master.begin(), sv.master.end());
      EXPECT_LE(ParamError(master, want), kFloat32ParamTolerance) << DTypeName(dtype) << " " << name;
      const auto p = outs[0]["params"][name].get<std::vector<double>>();
      for (size_t i = 0; i < p.size(); ++i) {
        const float m = static_cast<float>(master[i]);
        const float rounded = dtype == DType::kBFloat16 ? BFloat16ToFloat(FloatToBFloat16(m))
                                                        : HalfToFloat(FloatToHalf(m));
        ASSERT_EQ(static_cast<float>(p[i]), rounded) << name << "[" << i << "]";
      }
    }
  }
}

}  // namespace
}  // namespace came
