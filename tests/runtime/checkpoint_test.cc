// Checkpoint shards: save after 5 steps, continue to 10; a fresh job that loads the shards
// (same or another world size) and runs steps 6..10 ends where the first did.
#include "runtime/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <thread>

#include "gtest/gtest.h"
#include "tests/util/temp_dir.h"
#include "runtime/local_cluster.h"
#include "tests/runtime/reference_model.h"
#include "tests/runtime/test_model.h"
#include "tools/replay/case_io.h"

namespace came {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<LocalCluster> Cluster(int world) {
  const auto specs = testing::TestModel();
  EngineOptions o;
  o.groups = testing::TestGroups();
  auto c = LocalCluster::Create(specs, world, 1, testing::InitialParams(specs), o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

void Train(LocalCluster& c, int first, int last) {
  for (int step = first; step <= last; ++step) {
    auto s = c.Step(
        [&](int rank, int t, std::span<float> g) {
          for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(testing::Grad(rank % 2, step, t, i));
        },
        StepInputs{.step = step, .lr = testing::StepLr(step)});
    ASSERT_TRUE(s.ok()) << s.status();
  }
}

std::vector<std::string> Save(LocalCluster& c, const fs::path& dir, int64_t step) {
  std::vector<std::string> paths;
  for (int r = 0; r < c.world_size(); ++r) {
    auto f = WriteShard(c.engine(r), step, (dir / ("rank-" + std::to_string(r) + ".safetensors")).string());
    EXPECT_TRUE(f.ok()) << f.status();
    if (f.ok()) {
      EXPECT_EQ(f->sha256.size(), 64u);
      EXPECT_EQ(static_cast<int64_t>(fs::file_size(f->path)), f->bytes);
      paths.push_back(f->path);
    }
  }
  return paths;
}

absl::Status LoadAll(LocalCluster& c, const std::vector<std::string>& shards) {
  for (int r = 0; r < c.world_size(); ++r)
    if (absl::Status s = LoadShards(c.engine(r), shards); !s.ok()) return s;
  std::vector<absl::Status> st(c.world_size());
  std::vector<std::thread> th;
  for (int r = 0; r < c.world_size(); ++r)
    th.emplace_back([&, r] { st[r] = c.engine(r).GatherParameters(); });
  for (auto& t : th) t.join();
  for (auto& s : st)
    if (!s.ok()) return s;
  return absl::OkStatus();
}

// Gradients depend on rank % 2 so that a 2-rank and a 3-rank job see different per-rank
// gradients; the mean is the same only at equal world sizes, so resharded runs below feed
// every rank the same gradient.
TEST(CheckpointTest, ResumeAtTheSameWorldSizeIsExact) {
  testing::TempDir dir("came-ckpt");
  auto a = Cluster(2);
  ASSERT_NE(a, nullptr);
  Train(*a, 1, 5);
  const auto shards = Save(*a, dir.path, 5);
  Train(*a, 6, 10);

  auto b = Cluster(2);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(LoadAll(*b, shards).ok());
  Train(*b, 6, 10);
  for (size_t t = 0; t < a->plan().tensors.size(); ++t) {
    EXPECT_EQ(a->Param(t), b->Param(t)) << a->plan().tensors[t].spec.name;
    auto sa = a->State(t), sb = b->State(t);
    ASSERT_TRUE(sa.ok() && sb.ok());
    EXPECT_EQ(*sa, *sb) << a->plan().tensors[t].spec.name;
  }
}

TEST(CheckpointTest, ResumeWithAnotherWorldSizeReshards) {
  for (int saved_world : {1, 3}) {
    for (int load_world : {2, 4}) {
      testing::TempDir dir("came-ckpt");
      auto a = Cluster(saved_world);
      ASSERT_NE(a, nullptr);
      auto same_grad = [](LocalCluster& c, int first, int last) {
        for (int step = first; step <= last; ++step)
          ASSERT_TRUE(c.Step([&](int, int t, std::span<float> g) {
                         for (size_t i = 0; i < g.size(); ++i)
                           g[i] = static_cast<float>(testing::Grad(0, step, t, i));
                       }, StepInputs{.step = step, .lr = testing::StepLr(step)}).ok());
      };
      same_grad(*a, 1, 5);
      const auto shards = Save(*a, dir.path, 5);
      same_grad(*a, 6, 10);
      auto b = Cluster(load_world);
      ASSERT_NE(b, nullptr);
      ASSERT_TRUE(LoadAll(*b, shards).ok());
      same_grad(*b, 6, 10);
      for (size_t t = 0; t < a->plan().tensors.size(); ++t) {
        const std::string& name = a->plan().tensors[t].spec.name;
        EXPECT_LE(ParamError(b->Param(t), a->Param(t)), kFloat32ParamTolerance)
            << name << " saved at W=" << saved_world << ", loaded at W=" << load_world;
        auto sa = a->State(t), sb = b->State(t);
        ASSERT_TRUE(sa.ok() && sb.ok());
        for (const auto& [k, v] : *sa)
          EXPECT_LE(StateError(sb->at(k), v), kFloat32StateTolerance) << name << "." << k;
      }
    }
  }
}

TEST(CheckpointTest, DamagedOrForeignShardsAreRejectedAndChangeNothing) {
  testing::TempDir dir("came-ckpt");
  auto a = Cluster(2);
  ASSERT_NE(a, nullptr);
  Train(*a, 1, 2);
  auto shards = Save(*a, dir.path, 2);
  auto b = Cluster(2);
  ASSERT_NE(b, nullptr);
  Train(*b, 1, 1);
  const auto before = b->Param(0);

  // Only one of the two shards: rank 1's range is missing.
  absl::Status s = LoadShards(b->engine(1), {shards[0]});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("embed"), std::string::npos) << s;

  // A truncated shard.
  const fs::path cut = dir.path / "cut.safetensors";
  fs::copy_file(shards[1], cut);
  fs::resize_file(cut, fs::file_size(cut) / 2);
  s = LoadShards(b->engine(1), {shards[0], cut.string()});
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;

  // Not a shard at all; a missing file.
  std::ofstream(dir.path / "junk") << "not a checkpoint";
  EXPECT_EQ(LoadShards(b->engine(0), {(dir.path / "junk").string()}).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(LoadShards(b->engine(0), {(dir.path / "missing").string()}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(b->Param(0), before);
}

TEST(CheckpointTest, VerifyShardsChecksSizeAndSha256) {
  testing::TempDir dir("came-ckpt");
  auto a = Cluster(2);
  ASSERT_NE(a, nullptr);
  Train(*a, 1, 1);
  CheckpointManifest m;
  for (int r = 0; r < 2; ++r) {
    auto f = WriteShard(a->engine(r), 1, (dir.path / ("rank-" + std::to_string(r))).string());
    ASSERT_TRUE(f.ok()) << f.status();
    m.shard_paths.push_back(f->path);
    m.shard_bytes.push_back(f->bytes);
    m.shard_sha256.push_back(f->sha256);
  }
  EXPECT_TRUE(VerifyShards(m).ok());
  {  // flip one byte in the data
    std::fstream f(m.shard_paths[1], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x7f');
  }
  absl::Status s = VerifyShards(m);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("rank-1"), std::string::npos) << s;
  m.shard_bytes[0] += 1;
  EXPECT_EQ(VerifyShards(m).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace came
