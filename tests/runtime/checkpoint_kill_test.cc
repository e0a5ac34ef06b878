// A process killed (SIGKILL) while it writes a checkpoint shard leaves no file under the
// shard's name and no manifest: the newer checkpoint does not exist, the previous one still
// verifies and loads, and a new save of the same step succeeds over the leftovers.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/checkpoint.h"
#include "tests/runtime/checkpoint_edit.h"
#include "tests/runtime/reference_model.h"
#include "tests/runtime/test_model.h"
#include "tests/util/temp_dir.h"

namespace came {
namespace {

namespace fs = std::filesystem;

TEST(CheckpointKillTest, AWriterKilledMidShardLeavesThePreviousCheckpointLoadable) {
  testing::TempDir dir("came-ckpt-kill");
  const auto specs = testing::TestModel();
  EngineOptions o;
  o.groups = testing::TestGroups();
  fs::create_directories(dir.path / "step-2");
  std::string previous;
  {  // gone (its threads joined) before the fork
    auto c = LocalCluster::Create(specs, 1, 16, testing::InitialParams(specs), o);
    ASSERT_TRUE(c.ok()) << c.status();
    previous = testing::SaveCheckpointOf(**c, dir.path / "step-2", 2);
  }

  // The child writes a large shard (no threads: fork is safe) and is killed mid-write.
  const fs::path next = dir.path / "step-3";
  fs::create_directories(next);
  const std::string shard = (next / "rank-0.safetensors").string();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<float> big(int64_t{1} << 27, 0.5f);  // 512 MiB per entry
    ShardPieceData p;
    p.tensor = ShardTensor{"big", 0, {static_cast<int64_t>(big.size())}, static_cast<int64_t>(big.size()), 0,
                           static_cast<int64_t>(big.size())};
    p.entries = {{"master", big}, {"exp_avg", big}, {"exp_avg_sq", big}};
    (void)WriteShardFile(shard, 3, 1, 16, {p});
    _exit(0);
  }
  // Kill it once its temporary file holds some data.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool writing = false;
  while (!writing && std::chrono::steady_clock::now() < deadline) {
    for (const auto& e : fs::directory_iterator(next))
      writing = writing || (e.path().string().find(".tmp.") != std::string::npos && fs::file_size(e.path()) > (1 << 20));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(writing) << "the child never started writing";
  ASSERT_TRUE(WIFSIGNALED(status)) << "the child finished its 1.5 GiB write before the kill";

  EXPECT_FALSE(fs::exists(shard)) << "a partial shard under its final name";
  EXPECT_EQ(ReadCheckpointManifest((next / "manifest.json").string()).status().code(),
            absl::StatusCode::kNotFound);
  auto m = ReadCheckpointManifest(previous);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(VerifyShards(*m).ok());
  auto fresh = LocalCluster::Create(specs, 1, 16, testing::InitialParams(specs), o);
  ASSERT_TRUE(fresh.ok());
  auto load = ReadShards((*fresh)->engine(0), *m);
  EXPECT_TRUE(load.ok()) << load.status();
  // Saving step 3 again works next to the dead writer's temporary file.
  EXPECT_TRUE(WriteShard((*fresh)->engine(0), 3, shard).ok());
}

}  // namespace
}  // namespace came
