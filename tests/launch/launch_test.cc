// came-launch end to end: the real binary with stand-in daemons (shell scripts in a
// temporary --bin-dir that print the "listening on" line and sleep) and shell trainers.
// Every process writes its pid to <tmp>/pids/<name>; after each test none may remain.
// The test process is a child subreaper, so processes orphaned by a SIGKILLed launcher
// come to it and are reaped here, not left as zombies under init.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/launch/spawn.h"

namespace came::launch {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

namespace fs = std::filesystem;

constexpr char kCoordinator[] = R"sh(#!/bin/sh
echo $$ > "$PIDS/coordinator"
echo "args: $*"
echo "came-coordinator listening on 127.0.0.1:4100"
exec sleep 1000
)sh";

// Parses --rank into $rank, writes its pid, then runs $BODY (default: announce and sleep).
constexpr char kRankdHead[] = R"sh(#!/bin/sh
for a in "$@"; do [ "$prev" = --rank ] && rank=$a; prev=$a; done
echo $$ > "$PIDS/rankd-$rank"
echo "args: $*"
)sh";
constexpr char kRankdBody[] =
    R"sh(echo "came-rankd rank $rank listening on 127.0.0.1:$((5000 + rank))"
exec sleep 1000
)sh";

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const fs::path& path, const std::string& text, fs::perms perms) {
  std::ofstream(path) << text;
  fs::permissions(path, perms);
}

struct LaunchRun {
  int exit_code = -1;  // 128 + n when the launcher was killed by signal n
  std::string out;
  std::string err;
};

class LaunchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    char dir[] = "/tmp/came-launch-e2e.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    fs::create_directories(dir_ / "bin");
    fs::create_directories(dir_ / "pids");
    setenv("PIDS", (dir_ / "pids").c_str(), 1);
    WriteStandIns(kCoordinator, kRankdBody);
  }

  void TearDown() override {
    // Whatever happened, nothing from this test may remain.
    for (const auto& [name, pid] : Pids()) {
      EXPECT_TRUE(Gone(pid, absl::Seconds(3))) << name << " (pid " << pid << ") is still alive";
      if (!Gone(pid, absl::ZeroDuration())) kill(pid, SIGKILL);
    }
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  void WriteStandIns(const std::string& coordinator, const std::string& rankd_body) {
    WriteFile(dir_ / "bin" / "came-coordinator", coordinator, fs::perms::owner_all);
    WriteFile(dir_ / "bin" / "came-rankd", kRankdHead + rankd_body, fs::perms::owner_all);
  }

  // Writes a trainer script and returns the command that runs it.
  std::vector<std::string> Trainer(const std::string& body) {
    const fs::path path = dir_ / "trainer.sh";
    WriteFile(path, absl::StrCat("echo $$ > \"$PIDS/trainer-$CAME_RANK\"\n", body),
              fs::perms::owner_read | fs::perms::owner_write);
    return {"/bin/sh", path.string()};
  }

  std::map<std::string, pid_t> Pids() const {
    std::map<std::string, pid_t> pids;
    for (const auto& entry : fs::directory_iterator(dir_ / "pids")) {
      pids[entry.path().filename()] = std::atoi(ReadFile(entry.path()).c_str());
    }
    return pids;
  }

  // Waits until the pid files `names` exist and hold a pid.
  void AwaitPids(const std::vector<std::string>& names) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    for (const std::string& name : names) {
      while (ReadFile(dir_ / "pids" / name).empty() && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(10));
      }
      ASSERT_FALSE(ReadFile(dir_ / "pids" / name).empty()) << name;
    }
  }

  // Reaps whatever was re-parented to us and says whether `pid` is gone within `wait`.
  static bool Gone(pid_t pid, absl::Duration wait) {
    const absl::Time deadline = absl::Now() + wait;
    for (;;) {
      while (waitpid(-1, nullptr, WNOHANG) > 0) {
      }
      if (kill(pid, 0) != 0 && errno == ESRCH) return true;
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

  // Starts came-launch with `args`; `during(pid)` runs while it does. Kills it after 20 s.
  LaunchRun Launch(std::vector<std::string> args,
                   const std::function<void(pid_t)>& during = nullptr) {
    args.insert(args.begin(), CAME_LAUNCH_BINARY);
    const int out = open((dir_ / "out").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const int err = open((dir_ / "err").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    absl::StatusOr<pid_t> pid = SpawnProcess(SpawnRequest{.path = CAME_LAUNCH_BINARY,
                                                          .argv = args,
                                                          .env = EnvironmentWith({}),
                                                          .stdout_fd = out,
                                                          .stderr_fd = err});
    close(out);
    close(err);
    LaunchRun run;
    if (!pid.ok()) {
      ADD_FAILURE() << pid.status();
      return run;
    }
    if (during) during(*pid);
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    int status = 0;
    while (waitpid(*pid, &status, WNOHANG) == 0) {
      if (absl::Now() > deadline) {
        ADD_FAILURE() << "came-launch did not finish in 20 s";
        kill(*pid, SIGKILL);
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    run.out = ReadFile(dir_ / "out");
    run.err = ReadFile(dir_ / "err");
    return run;
  }

  // The flags every test passes.
  std::vector<std::string> Flags(int nproc, std::vector<std::string> extra = {}) {
    std::vector<std::string> flags = {"--nproc",         absl::StrCat(nproc),
                                      "--bin-dir",       (dir_ / "bin").string(),
                                      "--grace-seconds", "2"};
    flags.insert(flags.end(), extra.begin(), extra.end());
    flags.push_back("--");
    return flags;
  }

  static std::vector<std::string> Join(std::vector<std::string> a,
                                       const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  // Asserts that every pid file's process is gone now, the launcher having returned.
  void ExpectNothingLeft() {
    for (const auto& [name, pid] : Pids()) {
      EXPECT_TRUE(Gone(pid, absl::ZeroDuration())) << name << " outlived the launcher";
    }
  }

  fs::path dir_;
};

TEST_F(LaunchTest, PrefixesOutputAndPassesTheEnvironment) {
  WriteFile(dir_ / "token", "secret-token\n", fs::perms::owner_read | fs::perms::owner_write);
  const LaunchRun run =
      Launch(Join(Flags(2, {"--token-file", (dir_ / "token").string(), "--metrics-port", "9100",
                            "--threads-per-rank", "3", "--backend", "gloo", "--log-dir",
                            (dir_ / "logs").string()}),
                  Trainer("echo \"rank=$CAME_RANK world=$CAME_WORLD_SIZE rankd=$CAME_RANKD_ADDRESS "
                          "coord=$CAME_COORDINATOR_ADDRESS token=$CAME_TOKEN\"\n"
                          "echo \"pythonpath=$PYTHONPATH\"\n"
                          "echo to-stderr >&2\n"
                          "printf partial\n")));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  const std::string token_file = (dir_ / "token").string();
  EXPECT_THAT(run.out, HasSubstr(absl::StrCat(
                           "[coordinator] args: --listen 127.0.0.1:0 --world-size 2 --token-file ",
                           token_file, " --backend gloo --job-id ")));
  EXPECT_THAT(run.out, HasSubstr(" --generation 0 --metrics-port 9100\n"));
  EXPECT_THAT(run.out, HasSubstr(" --metrics-port 9100\n"));
  EXPECT_THAT(run.out, HasSubstr("[coordinator] came-coordinator listening on 127.0.0.1:4100\n"));
  EXPECT_THAT(run.out, HasSubstr(absl::StrCat(
                           "[rankd 1] args: --coordinator 127.0.0.1:4100 --token-file ", token_file,
                           " --rank 1 --world-size 2 --listen 127.0.0.1:0 --gloo-host 127.0.0.1 "
                           "--threads 3 --generation 0 --shm-tag ")));
  EXPECT_THAT(run.out, HasSubstr(" --join-timeout-seconds 60 --metrics-port 9102\n"));
  for (int r = 0; r < 2; ++r) {
    EXPECT_THAT(run.out, HasSubstr(absl::StrCat("[trainer ", r, "] rank=", r,
                                                " world=2 rankd=127.0.0.1:", 5000 + r,
                                                " coord=127.0.0.1:4100 token=secret-token\n")));
    EXPECT_THAT(run.out, HasSubstr(absl::StrCat("[trainer ", r, "] partial\n")));
    EXPECT_THAT(run.err, HasSubstr(absl::StrCat("[trainer ", r, "] to-stderr\n")));
  }
  EXPECT_THAT(run.out, HasSubstr("/clients/python:"));
  EXPECT_THAT(run.out, HasSubstr("/python"));
  EXPECT_THAT(run.err, Not(HasSubstr("came-launch:")));
  EXPECT_THAT(ReadFile(dir_ / "logs" / "trainer-1.log"), HasSubstr("rank=1 world=2"));
  EXPECT_THAT(ReadFile(dir_ / "logs" / "trainer-1.log"), HasSubstr("to-stderr\n"));
  EXPECT_THAT(ReadFile(dir_ / "logs" / "rankd-0.log"), HasSubstr("came-rankd rank 0 listening"));
  EXPECT_THAT(ReadFile(dir_ / "logs" / "coordinator.log"), HasSubstr("args: --listen"));
  EXPECT_EQ(Pids().size(), 5u);
  ExpectNothingLeft();
}

TEST_F(LaunchTest, GeneratesAPrivateTokenFile) {
  // The stand-in coordinator shows the token file's mode and content.
  WriteStandIns(R"sh(#!/bin/sh
echo $$ > "$PIDS/coordinator"
for a in "$@"; do [ "$prev" = --token-file ] && f=$a; prev=$a; done
echo "mode=$(stat -c %a "$f") token=$(cat "$f")"
echo "came-coordinator listening on 127.0.0.1:4100"
exec sleep 1000
)sh",
                kRankdBody);
  const LaunchRun run = Launch(Join(Flags(1), Trainer("echo \"token=$CAME_TOKEN\"\n")));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  const size_t at = run.out.find("[trainer 0] token=");
  ASSERT_NE(at, std::string::npos) << run.out;
  const std::string token = run.out.substr(at + 18, 64);
  EXPECT_EQ(token.find_first_not_of("0123456789abcdef"), std::string::npos) << token;
  EXPECT_THAT(run.out, HasSubstr(absl::StrCat("[coordinator] mode=600 token=", token, "\n")));
  ExpectNothingLeft();
}

TEST_F(LaunchTest, FailingTrainerStopsTheOthersAndTheirChildren) {
  const absl::Time start = absl::Now();
  const LaunchRun run =
      Launch(Join(Flags(3), Trainer("if [ \"$CAME_RANK\" = 1 ]; then sleep 0.3; exit 3; fi\n"
                                    "sleep 1000 &\n"
                                    "echo $! > \"$PIDS/grandchild-$CAME_RANK\"\n"
                                    "wait\n")));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err,
              HasSubstr("came-launch: trainer 1 exited with status 3; stopping the job\n"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(Pids().count("grandchild-0"), 1u);
  EXPECT_EQ(Pids().count("grandchild-2"), 1u);
  ExpectNothingLeft();
}

TEST_F(LaunchTest, DaemonDeathStopsTheJob) {
  WriteStandIns(kCoordinator,
                R"sh(echo "came-rankd rank $rank listening on 127.0.0.1:$((5000 + rank))"
if [ "$rank" = 0 ]; then sleep 0.5; kill -9 $$; fi
exec sleep 1000
)sh");
  const LaunchRun run = Launch(Join(Flags(2), Trainer("exec sleep 1000\n")));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr("came-launch: rankd 0 killed by signal 9; stopping the job\n"));
  EXPECT_EQ(Pids().size(), 5u);
  ExpectNothingLeft();
}

TEST_F(LaunchTest, CoordinatorThatFailsToStartIsReportedWithItsStderr) {
  WriteStandIns("#!/bin/sh\necho $$ > \"$PIDS/coordinator\"\necho 'no such flag --x' >&2\nexit 1\n",
                kRankdBody);
  const LaunchRun run = Launch(Join(Flags(2), Trainer("exit 0\n")));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err,
              HasSubstr("came-launch: coordinator exited with status 1; stopping the job\n"));
  EXPECT_THAT(run.err, HasSubstr("came-launch: last lines of coordinator's stderr:\n"
                                 "    no such flag --x\n"));
  EXPECT_EQ(Pids().size(), 1u);  // no rankd, no trainer
}

TEST_F(LaunchTest, RankdThatNeverListensTimesOut) {
  WriteStandIns(kCoordinator, "echo warming up >&2\nexec sleep 1000\n");
  const LaunchRun run =
      Launch(Join(Flags(2, {"--startup-timeout-seconds", "1"}), Trainer("exit 0\n")));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr("came-launch: rankd 0 did not print 'came-rankd rank 0 "
                                 "listening on ' in time; stopping the job\n"));
  EXPECT_THAT(run.err, HasSubstr("came-launch: last lines of rankd 0's stderr:\n    warming up\n"));
  EXPECT_EQ(Pids().size(), 3u);
  ExpectNothingLeft();
}

TEST_F(LaunchTest, SigintIsForwardedAndStopsEverything) {
  const LaunchRun run =
      Launch(Join(Flags(2), Trainer("trap 'echo got SIGINT; exit 0' INT\n"
                                    "sleep 1000 &\n"
                                    "echo $! > \"$PIDS/grandchild-$CAME_RANK\"\n"
                                    "while :; do sleep 0.05; done\n")),
             [&](pid_t launcher) {
               AwaitPids({"trainer-0", "trainer-1", "grandchild-0", "grandchild-1"});
               absl::SleepFor(absl::Milliseconds(100));
               kill(launcher, SIGINT);
             });
  EXPECT_EQ(run.exit_code, 130);
  EXPECT_THAT(run.err, HasSubstr("came-launch: received SIGINT; stopping the job\n"));
  EXPECT_THAT(run.out, HasSubstr("[trainer 0] got SIGINT\n"));
  EXPECT_THAT(run.out, HasSubstr("[trainer 1] got SIGINT\n"));
  ExpectNothingLeft();
}

TEST_F(LaunchTest, TrainerIgnoringSigtermIsKilledAfterTheGracePeriod) {
  const absl::Time start = absl::Now();
  const LaunchRun run = Launch(Join(Flags(2, {"--timeout-seconds", "1"}),
                                    Trainer("trap '' TERM\nwhile :; do sleep 0.05; done\n")));
  EXPECT_EQ(run.exit_code, 124);
  EXPECT_THAT(run.err, HasSubstr("came-launch: the job timed out after 1s; stopping the job\n"));
  EXPECT_GT(absl::Now() - start, absl::Seconds(2.5));  // 1 s job + 2 s grace
  ExpectNothingLeft();
}

TEST_F(LaunchTest, TrainerThatCannotBeExecuted) {
  WriteFile(dir_ / "not-executable", "", fs::perms::owner_read);
  const std::string path = (dir_ / "not-executable").string();
  const LaunchRun run = Launch(Join(Flags(2), {path}));
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr(absl::StrCat("came-launch: trainer 0: cannot execute ", path,
                                              ": Permission denied; stopping the job\n")));
  EXPECT_EQ(Pids().size(), 3u);  // the daemons ran, and were stopped
  ExpectNothingLeft();

  const LaunchRun missing = Launch(Join(Flags(2), {"no-such-trainer-command"}));
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_EQ(missing.err,
            "came-launch: trainer command: no-such-trainer-command: command not found in PATH\n");
}

TEST_F(LaunchTest, BadFlagsAndMissingBinaries) {
  LaunchRun run = Launch({"--nproc", "two", "--", "true"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("came-launch: --nproc wants an integer"));
  run = Launch({"--nproc", "1", "--bin-dir", "/nonexistent", "--", "true"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.err,
            "came-launch: cannot run /nonexistent/came-coordinator: No such file or directory "
            "(see --bin-dir)\n");
  run = Launch({"--help"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_THAT(run.out, HasSubstr("usage: came-launch --nproc N"));
}

TEST_F(LaunchTest, SigkilledLauncherTakesItsChildrenAndTheirChildrenAlong) {
  // The trainers die by PR_SET_PDEATHSIG, their children by the GroupGuard.
  const LaunchRun run = Launch(Join(Flags(2), Trainer("sleep 1000 &\n"
                                                      "echo $! > \"$PIDS/grandchild-$CAME_RANK\"\n"
                                                      "wait\n")),
                               [&](pid_t launcher) {
                                 AwaitPids({"coordinator", "rankd-0", "rankd-1", "trainer-0",
                                            "trainer-1", "grandchild-0", "grandchild-1"});
                                 kill(launcher, SIGKILL);
                               });
  EXPECT_EQ(run.exit_code, 128 + SIGKILL);
  EXPECT_EQ(Pids().size(), 7u);
  for (const auto& [name, pid] : Pids()) {
    EXPECT_TRUE(Gone(pid, absl::Seconds(3))) << name << " survived the launcher's SIGKILL";
  }
}

}  // namespace
}  // namespace came::launch
