// Restarts, preemption and multi-node jobs through real processes (Note [Restarts], Note
// [Preemption] and Note [Multi-node jobs] in runtime/launch/launcher.h): came-launch runs
// restart_trainer.py, whose data depends only on (rank, step); a job whose trainer, rankd
// or coordinator is SIGKILLed mid-training and restarted, a job stopped by SIGTERM and
// resumed by a new job, and a job over two "nodes" (two launchers on 127.0.0.2 and
// 127.0.0.3) all end with parameters and optimizer state bitwise equal to one
// uninterrupted single-launcher run.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/temp_dir.h"

extern char** environ;

namespace came {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kSteps = 12;
constexpr int kEvery = 4;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A came-launch process whose stdout and stderr go to <dir>/<name>.log.
class Launch {
 public:
  Launch(const fs::path& dir, const std::string& name, std::vector<std::string> args)
      : log_(dir / (name + ".log")) {
    args.insert(args.begin(), CAME_LAUNCH);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    if (posix_spawn(&pid_, CAME_LAUNCH, &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  ~Launch() {
    if (pid_ > 0 && exit_code_ == kRunning) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }
  std::string log() const { return ReadFile(log_); }

  // Waits until the log contains `text`; false after `timeout` or when the launcher exited.
  bool WaitFor(const std::string& text, std::chrono::seconds timeout) {
    const auto end = Clock::now() + timeout;
    while (Clock::now() < end) {
      if (log().find(text) != std::string::npos) return true;
      if (Poll()) return log().find(text) != std::string::npos;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  // Waits for the launcher to exit and returns its exit status (128 + n for signal n), or
  // kills it and returns -1 after `timeout`.
  int Wait(std::chrono::seconds timeout) {
    const auto end = Clock::now() + timeout;
    while (!Poll() && Clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (exit_code_ == kRunning) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      exit_code_ = -1;
    }
    return exit_code_;
  }

  // Returns the pid of the launcher's child whose argv[0] ends with `program` and whose
  // command line contains `word` (e.g. "--rank 1"), or -1.
  pid_t Child(const std::string& program, const std::string& word = "") const {
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      const std::string stat = ReadFile(e.path() / "stat");
      const size_t paren = stat.rfind(')');
      if (paren == std::string::npos) continue;
      std::istringstream fields(stat.substr(paren + 2));
      std::string state;
      pid_t ppid = 0;
      fields >> state >> ppid;
      if (ppid != pid_) continue;
      std::string cmdline = ReadFile(e.path() / "cmdline");
      const std::string argv0 = cmdline.substr(0, cmdline.find('\0'));
      std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
      if (argv0.size() >= program.size() &&
          argv0.compare(argv0.size() - program.size(), program.size(), program) == 0 &&
          cmdline.find(word) != std::string::npos) {
        return std::stoi(name);
      }
    }
    return -1;
  }

 private:
  static constexpr int kRunning = -2;
  bool Poll() {
    if (exit_code_ != kRunning) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) != pid_) return false;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return true;
  }

  fs::path log_;
  pid_t pid_ = -1;
  int exit_code_ = kRunning;
};

// The flags of a job over `nproc` ranks with checkpoints in <dir>/ckpt every kEvery steps;
// `trainer` are extra trainer flags.
std::vector<std::string> JobArgs(const fs::path& dir, int nproc, std::vector<std::string> launch,
                                 std::vector<std::string> trainer = {}, int steps = kSteps) {
  std::vector<std::string> args = {"--nproc-per-node", std::to_string(nproc), "--checkpoint-dir",
                                   (dir / "ckpt").string(), "--checkpoint-every",
                                   std::to_string(kEvery), "--timeout-seconds", "100"};
  args.insert(args.end(), launch.begin(), launch.end());
  args.insert(args.end(), {"--", "/usr/bin/python3", RESTART_TRAINER, "--steps",
                           std::to_string(steps), "--out", (dir / "out").string()});
  args.insert(args.end(), trainer.begin(), trainer.end());
  return args;
}

// What a finished job left: each rank's final parameters and the SHA-256 of each rank's
// shard (momentum, statistics, parameters) in the checkpoint of step `steps`.
struct Result {
  std::vector<std::string> params;
  std::vector<std::string> shard_sha256;
};

Result ResultOf(const fs::path& dir, int world, int steps = kSteps) {
  Result r;
  for (int rank = 0; rank < world; ++rank) {
    r.params.push_back(ReadFile(dir / "out" / ("rank" + std::to_string(rank) + "_final.bin")));
    EXPECT_FALSE(r.params.back().empty()) << "rank " << rank << " wrote no final parameters";
  }
  char id[32];
  std::snprintf(id, sizeof id, "step-%012d", steps);
  std::ifstream manifest(dir / "ckpt" / id / "manifest.json");
  EXPECT_TRUE(manifest.good()) << "no committed checkpoint " << id << " in " << dir;
  if (!manifest.good()) return r;
  const nlohmann::json parsed = nlohmann::json::parse(manifest);
  for (const auto& shard : parsed["shards"]) {
    r.shard_sha256.push_back(shard["sha256"].get<std::string>());
  }
  return r;
}

// The uninterrupted run every interrupted one must match, bit for bit.
Result Reference(const fs::path& dir, int world, int steps = kSteps) {
  Launch job(dir, "reference", JobArgs(dir, world, {}, {}, steps));
  EXPECT_EQ(job.Wait(std::chrono::seconds(90)), 0) << job.log();
  return ResultOf(dir, world, steps);
}

void ExpectSame(const Result& got, const Result& want) {
  ASSERT_EQ(got.params.size(), want.params.size());
  for (size_t r = 0; r < got.params.size(); ++r) {
    EXPECT_TRUE(got.params[r] == want.params[r]) << "rank " << r << ": parameters differ";
  }
  EXPECT_EQ(got.shard_sha256, want.shard_sha256) << "optimizer state differs";
  EXPECT_EQ(got.shard_sha256.size(), want.params.size());
}

// The first step of each attempt of rank 0: {attempt, first step} lines.
std::string Starts(const fs::path& dir) { return ReadFile(dir / "out" / "rank0_starts.txt"); }

// SIGKILLs the process `victim` picks once trainer 0 has done step 6, with one restart
// allowed, and checks that the job resumed from a checkpoint and ended like the reference.
void KillAndRestart(const std::function<pid_t(Launch&)>& victim, const std::string& name) {
  testing::TempDir ref_dir("came-restart-ref"), dir("came-restart");
  const Result want = Reference(ref_dir.path, 2);
  Launch job(dir.path, "job",
             JobArgs(dir.path, 2, {"--max-restarts", "1"}, {"--step-sleep", "0.1"}));
  ASSERT_TRUE(job.WaitFor("[trainer 0] step 6\n", std::chrono::seconds(60))) << job.log();
  const pid_t pid = victim(job);
  ASSERT_GT(pid, 0) << "no " << name << " found";
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_EQ(job.Wait(std::chrono::seconds(90)), 0) << job.log();
  const std::string log = job.log();
  EXPECT_NE(log.find(name + " killed by signal 9"), std::string::npos) << log;
  EXPECT_NE(log.find("restarting the job (restart 1 of 1)"), std::string::npos) << log;
  // Attempt 1 continued after a committed checkpoint (steps 4 or 8), not from scratch.
  const std::string starts = Starts(dir.path);
  EXPECT_TRUE(starts == "0 1\n1 5\n" || starts == "0 1\n1 9\n") << starts;
  ExpectSame(ResultOf(dir.path, 2), want);
}

TEST(RestartTest, KilledTrainerRestartsFromCheckpointAndMatchesUninterruptedRun) {
  testing::TempDir ref_dir("came-restart-ref"), dir("came-restart");
  const Result want = Reference(ref_dir.path, 2);
  // Trainer 1 SIGKILLs itself before step 7 on the first attempt.
  Launch job(dir.path, "job",
             JobArgs(dir.path, 2, {"--max-restarts", "2"}, {"--die-rank", "1", "--die-step", "7"}));
  ASSERT_EQ(job.Wait(std::chrono::seconds(90)), 0) << job.log();
  const std::string log = job.log();
  EXPECT_NE(log.find("trainer 1 killed by signal 9"), std::string::npos) << log;
  EXPECT_NE(log.find("restarting the job (restart 1 of 2)"), std::string::npos) << log;
  EXPECT_EQ(log.find("restart 2 of 2"), std::string::npos) << log;
  EXPECT_EQ(Starts(dir.path), "0 1\n1 5\n");  // the checkpoint of step 4
  ExpectSame(ResultOf(dir.path, 2), want);
}

TEST(RestartTest, KilledRankdRestartsAndMatchesUninterruptedRun) {
  KillAndRestart([](Launch& job) { return job.Child("came-rankd", "--rank 1 "); }, "rankd 1");
}

TEST(RestartTest, KilledCoordinatorRestartsAndMatchesUninterruptedRun) {
  KillAndRestart([](Launch& job) { return job.Child("came-coordinator"); }, "coordinator");
}

TEST(RestartTest, WithoutRestartsAKilledRankdFailsTheJob) {
  testing::TempDir dir("came-restart");
  Launch job(dir.path, "job", JobArgs(dir.path, 2, {}, {"--step-sleep", "0.1"}));
  ASSERT_TRUE(job.WaitFor("[trainer 1] step 3\n", std::chrono::seconds(60))) << job.log();
  const pid_t pid = job.Child("came-rankd", "--rank 0 ");
  ASSERT_GT(pid, 0);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  EXPECT_EQ(job.Wait(std::chrono::seconds(60)), 1) << job.log();
  const std::string log = job.log();
  EXPECT_NE(log.find("came-launch: rankd 0 killed by signal 9; stopping the job"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("restarting"), std::string::npos) << log;
}

TEST(RestartTest, KeepCheckpointsKeepsTheNewest) {
  testing::TempDir dir("came-restart");
  Launch job(dir.path, "job", JobArgs(dir.path, 2, {"--keep-checkpoints", "2"}));
  ASSERT_EQ(job.Wait(std::chrono::seconds(90)), 0) << job.log();
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.path / "ckpt")) {
    left.push_back(e.path().filename().string());
  }
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"step-000000000008", "step-000000000012"}));
}

TEST(PreemptionTest, SigtermCheckpointsExitsZeroAndANewJobResumesExactly) {
  constexpr int kLong = 40;
  testing::TempDir ref_dir("came-preempt-ref"), dir("came-preempt");
  const Result want = Reference(ref_dir.path, 2, kLong);
  {
    Launch job(dir.path, "preempted",
               JobArgs(dir.path, 2, {"--lease-seconds", "3", "--grace-period", "20"},
                       {"--step-sleep", "0.2"}, kLong));
    ASSERT_TRUE(job.WaitFor("[trainer 0] step 3\n", std::chrono::seconds(60))) << job.log();
    const auto signalled = Clock::now();
    ASSERT_EQ(kill(job.pid(), SIGTERM), 0);
    ASSERT_EQ(job.Wait(std::chrono::seconds(40)), 0) << job.log();
    EXPECT_LT(Clock::now() - signalled, std::chrono::seconds(20));
    const std::string log = job.log();
    EXPECT_NE(log.find("[trainer 0] preempted after step"), std::string::npos) << log;
    EXPECT_NE(log.find("[trainer 1] preempted after step"), std::string::npos) << log;
    EXPECT_NE(log.find("the job stopped at a checkpoint after SIGTERM"), std::string::npos) << log;
    EXPECT_EQ(log.find("[trainer 0] step " + std::to_string(kLong) + "\n"), std::string::npos)
        << "the job ran to the end instead of stopping";
  }
  Launch resumed(dir.path, "resumed", JobArgs(dir.path, 2, {}, {}, kLong));
  ASSERT_EQ(resumed.Wait(std::chrono::seconds(90)), 0) << resumed.log();
  const std::string starts = Starts(dir.path);
  EXPECT_EQ(starts.substr(0, 4), "0 1\n") << starts;
  EXPECT_NE(starts.substr(4), "0 1\n") << "the new job did not resume: " << starts;
  ExpectSame(ResultOf(dir.path, 2, kLong), want);
}

// Multi-node: two launchers on one machine, "nodes" bound to 127.0.0.2 and 127.0.0.3.
class MultiNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(token_.path / "token") << "multi-node-test-token\n";
    coordinator_ = "127.0.0.2:" + std::to_string(FreePort("127.0.0.2"));
  }

  // A free TCP port on `host` (bound once and released; a small race with other programs).
  static int FreePort(const std::string& host) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    socklen_t len = sizeof a;
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << "bind " << host;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
  }

  // Node `node` of a 2-node job of 2 ranks per node.
  std::vector<std::string> NodeArgs(const fs::path& dir, int node, std::vector<std::string> launch,
                                    std::vector<std::string> trainer = {}, int steps = kSteps) {
    launch.insert(launch.end(), {"--nnodes", "2", "--node-rank", std::to_string(node),
                                 "--coordinator", coordinator_, "--node-address",
                                 node == 0 ? "127.0.0.2" : "127.0.0.3", "--token-file",
                                 (token_.path / "token").string()});
    return JobArgs(dir, 2, launch, trainer, steps);
  }

  testing::TempDir token_{"came-multinode-token"};
  std::string coordinator_;
};

TEST_F(MultiNodeTest, TwoNodesOnLoopbackTrainLikeOneLauncherWithAllRanks) {
  testing::TempDir ref_dir("came-multinode-ref"), dir("came-multinode");
  const Result want = Reference(ref_dir.path, 4);
  Launch node0(dir.path, "node0", NodeArgs(dir.path, 0, {}));
  Launch node1(dir.path, "node1", NodeArgs(dir.path, 1, {}));
  EXPECT_EQ(node1.Wait(std::chrono::seconds(90)), 0) << node1.log();
  EXPECT_EQ(node0.Wait(std::chrono::seconds(90)), 0) << node0.log();
  // Ranks 2 and 3 ran on node 1, serving and connecting on its address.
  EXPECT_NE(node1.log().find("came-rankd rank 3 listening on 127.0.0.3:"), std::string::npos)
      << node1.log();
  ExpectSame(ResultOf(dir.path, 4), want);
}

TEST_F(MultiNodeTest, KilledNodeLauncherEndsTheOtherNodeWithinTheLease) {
  constexpr int kLeaseSeconds = 2;
  testing::TempDir dir("came-multinode");
  const std::vector<std::string> slow = {"--step-sleep", "0.1"};
  const std::vector<std::string> lease = {"--lease-seconds", std::to_string(kLeaseSeconds)};
  Launch node0(dir.path, "node0", NodeArgs(dir.path, 0, lease, slow, 1000));
  Launch node1(dir.path, "node1", NodeArgs(dir.path, 1, lease, slow, 1000));
  ASSERT_TRUE(node0.WaitFor("[trainer 0] step 3\n", std::chrono::seconds(60))) << node0.log();
  const auto killed = Clock::now();
  ASSERT_EQ(kill(node1.pid(), SIGKILL), 0);
  EXPECT_EQ(node0.Wait(std::chrono::seconds(30)), 1) << node0.log();
  // The lease, one heartbeat interval and the teardown.
  EXPECT_LT(Clock::now() - killed, std::chrono::seconds(2 * kLeaseSeconds + 5)) << node0.log();
  EXPECT_NE(node0.log().find("came-launch (node 0): "), std::string::npos) << node0.log();
}

TEST_F(MultiNodeTest, SigtermToEveryNodeCheckpointsAndEveryNodeExitsZero) {
  testing::TempDir dir("came-multinode");
  const std::vector<std::string> slow = {"--step-sleep", "0.1"};
  const std::vector<std::string> lease = {"--lease-seconds", "3", "--grace-period", "20"};
  Launch node0(dir.path, "node0", NodeArgs(dir.path, 0, lease, slow, 1000));
  Launch node1(dir.path, "node1", NodeArgs(dir.path, 1, lease, slow, 1000));
  ASSERT_TRUE(node1.WaitFor("[trainer 3] step 3\n", std::chrono::seconds(60))) << node1.log();
  // A cluster signals every node; node 1's launcher waits for its trainers to stop.
  ASSERT_EQ(kill(node1.pid(), SIGTERM), 0);
  ASSERT_EQ(kill(node0.pid(), SIGTERM), 0);
  EXPECT_EQ(node0.Wait(std::chrono::seconds(40)), 0) << node0.log();
  EXPECT_EQ(node1.Wait(std::chrono::seconds(40)), 0) << node1.log();
  const std::string log1 = node1.log();
  const size_t at = log1.find("[trainer 3] preempted after step ");
  ASSERT_NE(at, std::string::npos) << log1;
  const int step = std::stoi(log1.substr(at + std::strlen("[trainer 3] preempted after step ")));
  EXPECT_NE(node0.log().find("[trainer 0] preempted after step " + std::to_string(step) + "\n"),
            std::string::npos)
      << node0.log();
  char id[32];
  std::snprintf(id, sizeof id, "step-%012d", step);
  EXPECT_TRUE(fs::exists(dir.path / "ckpt" / id / "manifest.json")) << id;
}

TEST_F(MultiNodeTest, AFailureOnOneNodeRestartsBothAndMatchesOneLauncher) {
  testing::TempDir ref_dir("came-multinode-ref"), dir("came-multinode");
  const Result want = Reference(ref_dir.path, 4);
  const std::vector<std::string> restarts = {"--max-restarts", "1"};
  Launch node0(dir.path, "node0", NodeArgs(dir.path, 0, restarts));
  Launch node1(dir.path, "node1",
               NodeArgs(dir.path, 1, restarts, {"--die-rank", "3", "--die-step", "7"}));
  EXPECT_EQ(node1.Wait(std::chrono::seconds(120)), 0) << node1.log();
  EXPECT_EQ(node0.Wait(std::chrono::seconds(60)), 0) << node0.log();
  EXPECT_NE(node1.log().find("came-launch (node 1): trainer 3 killed by signal 9"),
            std::string::npos)
      << node1.log();
  for (const Launch* node : {&node0, &node1}) {
    EXPECT_NE(node->log().find("restarting the job (restart 1 of 1)"), std::string::npos)
        << node->log();
  }
  EXPECT_EQ(Starts(dir.path), "0 1\n1 5\n");
  ExpectSame(ResultOf(dir.path, 4), want);
}

}  // namespace
}  // namespace came
