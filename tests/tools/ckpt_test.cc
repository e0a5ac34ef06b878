// came-ckpt (tools/ckpt): a checkpoint of 4 ranks resharded to 2, trained on, saved, resharded to
// 3 and trained on ends where the uninterrupted 4-rank run does; verify refuses a flipped
// byte, a truncated shard and a missing manifest naming the file; export/import round-trips;
// the command line answers bad usage with exit code 2.
#include "tools/ckpt/full_state.h"

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/local_cluster.h"
#include "tests/runtime/checkpoint_edit.h"
#include "tests/runtime/reference_model.h"
#include "tests/runtime/test_model.h"
#include "tests/util/temp_dir.h"
#include "tools/replay/case_io.h"

namespace came::ckpt {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::unique_ptr<LocalCluster> Cluster(int world) {
  const auto specs = testing::TestModel();
  EngineOptions o;
  o.groups = testing::TestGroups();
  auto c = LocalCluster::Create(specs, world, 1, testing::InitialParams(specs), o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// Every rank gets the same gradient, so that runs at different world sizes agree.
void Train(LocalCluster& c, int first, int last) {
  for (int step = first; step <= last; ++step)
    ASSERT_TRUE(c.Step([&](int, int t, std::span<float> g) {
                   for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(testing::Grad(0, step, t, i));
                 }, StepInputs{.step = step, .lr = testing::StepLr(step)}).ok());
}

absl::Status LoadAll(LocalCluster& c, const std::string& manifest_path) {
  auto m = ReadCheckpointManifest(manifest_path);
  if (!m.ok()) return m.status();
  for (int r = 0; r < c.world_size(); ++r) {
    auto load = ReadShards(c.engine(r), *m);
    if (!load.ok()) return load.status();
    if (absl::Status s = ApplyShards(c.engine(r), *load); !s.ok()) return s;
  }
  std::vector<absl::Status> st(c.world_size());
  std::vector<std::thread> th;
  for (int r = 0; r < c.world_size(); ++r) th.emplace_back([&, r] { st[r] = c.engine(r).GatherParameters(); });
  for (auto& t : th) t.join();
  for (auto& s : st)
    if (!s.ok()) return s;
  return absl::OkStatus();
}

absl::StatusOr<std::string> Reshard(const std::string& manifest, int world, const fs::path& out) {
  auto m = ReadCheckpointManifest(manifest);
  if (!m.ok()) return m.status();
  auto state = ReadFullState(*m);
  if (!state.ok()) return state.status();
  return WriteCheckpoint(*state, world, out.string());
}

// Runs came-ckpt with `args`; returns its exit code and stdout+stderr.
std::pair<int, std::string> Cli(const std::string& args, const fs::path& dir) {
  const fs::path log = dir / "cli.log";
  const int status = std::system((std::string(CAME_CKPT_BIN) + " " + args + " > " + log.string() + " 2>&1").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, testing::Slurp(log)};
}

TEST(CkptTest, Reshard4To2To3AndContinueEqualsTheUninterruptedRun) {
  testing::TempDir dir("came-ckpt-tool");
  auto a = Cluster(4);
  ASSERT_NE(a, nullptr);
  Train(*a, 1, 5);
  fs::create_directories(dir.path / "w4");
  const std::string w4 = testing::SaveCheckpointOf(*a, dir.path / "w4", 5);
  Train(*a, 6, 10);

  auto w2 = Reshard(w4, 2, dir.path / "w2");
  ASSERT_TRUE(w2.ok()) << w2.status();
  auto b = Cluster(2);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(LoadAll(*b, *w2).ok());
  Train(*b, 6, 7);
  fs::create_directories(dir.path / "b7");
  const std::string b7 = testing::SaveCheckpointOf(*b, dir.path / "b7", 7);
  auto w3 = Reshard(b7, 3, dir.path / "w3");
  ASSERT_TRUE(w3.ok()) << w3.status();
  auto c = Cluster(3);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(LoadAll(*c, *w3).ok());
  Train(*c, 8, 10);
  for (size_t t = 0; t < a->plan().tensors.size(); ++t) {
    const std::string& name = a->plan().tensors[t].spec.name;
    EXPECT_LE(ParamError(c->Param(t), a->Param(t)), kFloat32ParamTolerance) << name;
    auto sa = a->State(t), sc = c->State(t);
    ASSERT_TRUE(sa.ok() && sc.ok());
    for (const auto& [k, v] : *sa) EXPECT_LE(StateError(sc->at(k), v), kFloat32StateTolerance) << name << "." << k;
  }
  // The command line does the same and verify accepts the result.
  auto [code, out] = Cli("reshard " + w4 + " --world 3 --out " + (dir.path / "cli3").string(), dir.path);
  EXPECT_EQ(code, 0) << out;
  std::tie(code, out) = Cli("verify " + (dir.path / "cli3" / "manifest.json").string(), dir.path);
  EXPECT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("every element covered exactly once"));
  std::tie(code, out) = Cli("inspect " + w4, dir.path);
  EXPECT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("step 5, world size 4"));
  EXPECT_THAT(out, HasSubstr("embed [150, 16] factored"));
}

TEST(CkptTest, VerifyRefusesDamageNamingTheFile) {
  testing::TempDir dir("came-ckpt-tool");
  auto a = Cluster(2);
  ASSERT_NE(a, nullptr);
  Train(*a, 1, 2);
  const std::string manifest = testing::SaveCheckpointOf(*a, dir.path, 2);
  const fs::path shard = dir.path / "rank-1.safetensors";
  const std::string good = testing::Slurp(shard);
  std::string flipped = good;
  flipped[flipped.size() - 3] ^= 0x40;
  testing::Spit(shard, flipped);
  auto [code, out] = Cli("verify " + manifest, dir.path);
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("rank-1.safetensors does not match its SHA-256"));
  testing::Spit(shard, good.substr(0, good.size() / 2));
  std::tie(code, out) = Cli("verify " + manifest, dir.path);
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("rank-1.safetensors has"));
  testing::Spit(shard, good);
  std::tie(code, out) = Cli("verify " + manifest, dir.path);
  EXPECT_EQ(code, 0) << out;
  fs::remove(manifest);
  std::tie(code, out) = Cli("verify " + manifest, dir.path);
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("manifest.json"));
  EXPECT_THAT(out, HasSubstr("NOT_FOUND"));
}

TEST(CkptTest, ExportThenImportGivesTheSameState) {
  testing::TempDir dir("came-ckpt-tool");
  auto a = Cluster(3);
  ASSERT_NE(a, nullptr);
  Train(*a, 1, 3);
  const std::string manifest = testing::SaveCheckpointOf(*a, dir.path, 3);
  const std::string file = (dir.path / "export.safetensors").string();
  auto [code, out] = Cli("export " + manifest + " --out " + file, dir.path);
  ASSERT_EQ(code, 0) << out;
  std::tie(code, out) = Cli("import " + file + " --world 2 --out " + (dir.path / "imported").string(), dir.path);
  ASSERT_EQ(code, 0) << out;
  auto b = Cluster(2);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(LoadAll(*b, (dir.path / "imported" / "manifest.json").string()).ok());
  Train(*a, 4, 5);
  Train(*b, 4, 5);
  for (size_t t = 0; t < a->plan().tensors.size(); ++t)
    EXPECT_LE(ParamError(b->Param(t), a->Param(t)), kFloat32ParamTolerance) << a->plan().tensors[t].spec.name;
}

TEST(CkptTest, BadUsageIsExitCode2) {
  testing::TempDir dir("came-ckpt-tool");
  for (const std::string args : {"", "frobnicate x", "reshard m.json --out d", "export m.json",
                                 "reshard m.json --world zero --out d", "verify"}) {
    auto [code, out] = Cli(args, dir.path);
    EXPECT_EQ(code, 2) << args << ": " << out;
  }
  EXPECT_EQ(Cli("--help", dir.path).first, 0);
}

}  // namespace
}  // namespace came::ckpt
