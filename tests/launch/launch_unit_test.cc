// In-process tests of the launcher's pieces: flags, PATH lookup, spawning, the output pump
// and the supervisor's failure policy, with /bin/sh children.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/launch/launch_options.h"
#include "runtime/launch/output_pump.h"
#include "runtime/launch/spawn.h"
#include "runtime/launch/supervisor.h"

namespace came::launch {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

MATCHER_P(StatusIs, code, "") { return arg.status().code() == code; }

// A temporary file that the code under test writes to; Read returns what is in it.
class CaptureFile {
 public:
  CaptureFile() {
    char path[] = "/tmp/came-launch-test.XXXXXX";
    fd_ = mkstemp(path);
    path_ = path;
  }
  ~CaptureFile() {
    close(fd_);
    unlink(path_.c_str());
  }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  std::string Read() const {
    std::ifstream in(path_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  int fd_;
  std::string path_;
};

TEST(LaunchOptionsTest, ParsesEveryFlagAndTheCommand) {
  absl::StatusOr<LaunchOptions> o = ParseLaunchArgs({"--nproc",
                                                     "4",
                                                     "--backend=nccl",
                                                     "--metrics-port",
                                                     "9100",
                                                     "--threads-per-rank",
                                                     "2",
                                                     "--token-file",
                                                     "/t",
                                                     "--bin-dir",
                                                     "/b",
                                                     "--log-dir=/l",
                                                     "--timeout-seconds",
                                                     "30",
                                                     "--startup-timeout-seconds",
                                                     "5",
                                                     "--grace-seconds",
                                                     "0",
                                                     "--checkpoint-dir",
                                                     "/c",
                                                     "--reduce-dtype",
                                                     "float32",
                                                     "--",
                                                     "python3",
                                                     "-u",
                                                     "--nproc",
                                                     "train.py"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->nproc, 4);
  EXPECT_EQ(o->backend, "nccl");
  EXPECT_EQ(o->metrics_port, 9100);
  EXPECT_EQ(o->checkpoint_dir, "/c");
  EXPECT_TRUE(o->reduce_in_float32);
  EXPECT_EQ(o->threads_per_rank, 2);
  EXPECT_EQ(o->token_file, "/t");
  EXPECT_EQ(o->bin_dir, "/b");
  EXPECT_EQ(o->log_dir, "/l");
  EXPECT_EQ(o->timeout_seconds, 30);
  EXPECT_EQ(o->startup_timeout_seconds, 5);
  EXPECT_EQ(o->grace_seconds, 0);
  EXPECT_THAT(o->command, ElementsAre("python3", "-u", "--nproc", "train.py"));
}

TEST(LaunchOptionsTest, RejectsBadFlagsWithTheirName) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--nproc", "0", "--", "x"}, "--nproc"},
      {{"--nproc", "two", "--", "x"}, "--nproc"},
      {{"--nproc", "2", "--backend", "mpi", "--", "x"}, "--backend"},
      {{"--nproc", "2", "--frobnicate", "1", "--", "x"}, "unknown flag --frobnicate"},
      {{
           "--nproc",
           "2",
           "--",
       },
       "no trainer command"},
      {{"--", "x"}, "--nproc (or --nproc-per-node) is required"},
      {{"--nproc"}, "--nproc needs a value"},
      {{"--nproc", "2", "train.py"}, "after '--'"},
      {{"--nproc", "2", "--metrics-port", "70000", "--", "x"}, "--metrics-port"},
      {{"--nproc", "2", "--reduce-dtype", "fp8", "--", "x"}, "--reduce-dtype"},
  };
  for (const auto& [args, expected] : cases) {
    absl::StatusOr<LaunchOptions> o = ParseLaunchArgs(args);
    EXPECT_THAT(o, StatusIs(absl::StatusCode::kInvalidArgument)) << expected;
    EXPECT_THAT(std::string(o.status().message()), HasSubstr(expected));
  }
  absl::StatusOr<LaunchOptions> help = ParseLaunchArgs({"--help"});
  ASSERT_TRUE(help.ok());
  EXPECT_TRUE(help->help);
}

TEST(SpawnTest, FindExecutableFollowsPath) {
  EXPECT_EQ(*FindExecutable("sh", "/nonexistent:/bin:/usr/bin"), "/bin/sh");
  EXPECT_EQ(*FindExecutable("./relative/x", "/bin"), "./relative/x");
  EXPECT_THAT(FindExecutable("no-such-command-came", "/bin:/usr/bin"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(SpawnTest, DescribesWaitStatuses) {
  EXPECT_EQ(DescribeWaitStatus(3 << 8), "exited with status 3");
  EXPECT_EQ(DescribeWaitStatus(SIGKILL), "killed by signal 9");
}

TEST(SpawnTest, ExecFailureIsAnErrorOfSpawn) {
  CaptureFile not_executable;  // mode 0600
  absl::StatusOr<pid_t> pid =
      SpawnProcess(SpawnRequest{.path = not_executable.path(), .argv = {"x"}, .env = {}});
  EXPECT_THAT(pid, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(pid.status().message(),
            absl::StrCat("cannot execute ", not_executable.path(), ": Permission denied"));
  pid = SpawnProcess(SpawnRequest{.path = "/no/such/file", .argv = {"x"}, .env = {}});
  EXPECT_EQ(pid.status().message(), "cannot execute /no/such/file: No such file or directory");
}

TEST(SpawnTest, ChildLeadsItsGroupAndGetsTheEnvironment) {
  CaptureFile out;
  absl::StatusOr<pid_t> pid = SpawnProcess(
      SpawnRequest{.path = "/bin/sh",
                   .argv = {"sh", "-c", "echo \"$FOO $(ps -o pgid= -p $$ | tr -d ' ') $$\""},
                   .env = {"FOO=bar", "PATH=/bin:/usr/bin"},
                   .stdout_fd = out.fd()});
  ASSERT_TRUE(pid.ok()) << pid.status();
  int status = 0;
  ASSERT_EQ(waitpid(*pid, &status, 0), *pid);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(out.Read(), absl::StrCat("bar ", *pid, " ", *pid, "\n"));
}

TEST(OutputPumpTest, PrefixesLinesAndFlushesPartialOnes) {
  CaptureFile out, log;
  absl::StatusOr<std::unique_ptr<OutputPump>> pump = OutputPump::Create();
  ASSERT_TRUE(pump.ok());
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  std::vector<std::string> lines;
  bool closed = false;
  (*pump)->Add(PumpStream{.fd = p[0],
                          .out_fd = out.fd(),
                          .log_fd = log.fd(),
                          .prefix = "[x 1] ",
                          .on_line = [&](absl::string_view l) { lines.emplace_back(l); },
                          .on_close = [&] { closed = true; }});
  const std::string long_line(OutputPump::kMaxLineBytes + 10, 'a');
  WriteAll(p[1], "one\ntw");
  WriteAll(p[1], "o\n" + long_line + "\nlast");
  close(p[1]);
  (*pump)->Close(absl::Now() + absl::Seconds(5));
  EXPECT_TRUE(closed);
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0], "one");
  EXPECT_EQ(lines[1], "two");
  EXPECT_EQ(lines[2].size(), OutputPump::kMaxLineBytes);
  EXPECT_EQ(lines[3], "aaaaaaaaaa");
  EXPECT_EQ(lines[4], "last");
  EXPECT_THAT(out.Read(), HasSubstr("[x 1] one\n[x 1] two\n[x 1] aaa"));
  EXPECT_THAT(out.Read(), HasSubstr("\n[x 1] last\n"));
  EXPECT_EQ(log.Read().substr(0, 8), "one\ntwo\n");
}

TEST(OutputPumpTest, CloseGivesUpOnAPipeThatStaysOpen) {
  absl::StatusOr<std::unique_ptr<OutputPump>> pump = OutputPump::Create();
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  CaptureFile out;
  PumpStream stream;
  stream.fd = p[0];
  stream.out_fd = out.fd();
  stream.prefix = "> ";
  (*pump)->Add(std::move(stream));
  WriteAll(p[1], "held");
  const absl::Time start = absl::Now();
  (*pump)->Close(absl::Now() + absl::Milliseconds(200));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(out.Read(), "> held\n");
  close(p[1]);
}

// A supervisor whose output goes to files and whose interrupts come from a pipe.
class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(pipe(interrupt_), 0); }
  void TearDown() override {
    close(interrupt_[0]);
    close(interrupt_[1]);
  }
  std::unique_ptr<Supervisor> Make(absl::Duration grace = absl::Seconds(5)) {
    SupervisorOptions options;
    options.out_fd = out_.fd();
    options.err_fd = err_.fd();
    options.interrupt_fd = interrupt_[0];
    options.grace = grace;
    options.drain = absl::Milliseconds(500);
    absl::StatusOr<std::unique_ptr<Supervisor>> s = Supervisor::Create(options);
    EXPECT_TRUE(s.ok()) << s.status();
    return *std::move(s);
  }
  static ChildSpec Sh(std::string name, ChildKind kind, std::string script) {
    ChildSpec spec;
    spec.name = std::move(name);
    spec.kind = kind;
    spec.path = "/bin/sh";
    spec.argv = {"sh", "-c", std::move(script)};
    spec.env = {"PATH=/bin:/usr/bin"};
    return spec;
  }
  static bool Gone(pid_t pid) { return kill(pid, 0) != 0 && errno == ESRCH; }

  CaptureFile out_, err_;
  int interrupt_[2];
};

TEST_F(SupervisorTest, AllWorkersSucceedThenDaemonsStop) {
  std::unique_ptr<Supervisor> s = Make();
  ChildSpec daemon = Sh("daemon", ChildKind::kDaemon, "echo ready at 7; exec sleep 100");
  daemon.ready_prefix = "ready at ";
  const int d = *s->Spawn(daemon);
  EXPECT_EQ(*s->WaitReady(d, absl::Now() + absl::Seconds(10)), "7");
  ASSERT_TRUE(s->Spawn(Sh("w 0", ChildKind::kWorker, "echo hi; echo oops >&2")).ok());
  ASSERT_TRUE(s->Spawn(Sh("w 1", ChildKind::kWorker, "sleep 0.2")).ok());
  const JobResult result = s->Supervise();
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_EQ(result.reason, "");
  s->Stop();
  EXPECT_TRUE(Gone(s->pid(d)));
  EXPECT_EQ(out_.Read(), "[daemon] ready at 7\n[w 0] hi\n");
  EXPECT_EQ(err_.Read(), "[w 0] oops\n");
}

TEST_F(SupervisorTest, FailingWorkerEndsTheJobAndStopsTheOthers) {
  std::unique_ptr<Supervisor> s = Make();
  const int sleeper = *s->Spawn(Sh("w 0", ChildKind::kWorker, "exec sleep 100"));
  ASSERT_TRUE(s->Spawn(Sh("w 1", ChildKind::kWorker, "sleep 0.1; exit 3")).ok());
  const absl::Time start = absl::Now();
  const JobResult result = s->Supervise();
  s->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.reason, "w 1 exited with status 3");
  EXPECT_THAT(err_.Read(), HasSubstr("came-launch: w 1 exited with status 3; stopping the job\n"));
  EXPECT_TRUE(Gone(s->pid(sleeper)));
}

TEST_F(SupervisorTest, DaemonExitEndsTheJobEvenWithStatusZero) {
  std::unique_ptr<Supervisor> s = Make();
  ASSERT_TRUE(s->Spawn(Sh("d", ChildKind::kDaemon, "sleep 0.1")).ok());
  ASSERT_TRUE(s->Spawn(Sh("w 0", ChildKind::kWorker, "exec sleep 100")).ok());
  const JobResult result = s->Supervise();
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.reason, "d exited with status 0 while the job was running");
}

TEST_F(SupervisorTest, DaemonThatDiesBeforeReadyShowsItsStderr) {
  std::unique_ptr<Supervisor> s = Make();
  ChildSpec daemon = Sh("coordinator", ChildKind::kDaemon, "echo 'bad flag --x' >&2; exit 1");
  daemon.ready_prefix = "listening on ";
  const int d = *s->Spawn(daemon);
  absl::StatusOr<std::string> ready = s->WaitReady(d, absl::Now() + absl::Seconds(10));
  EXPECT_THAT(ready, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(ready.status().message(),
            "coordinator exited with status 1; last lines of its stderr:\n    bad flag --x");
  EXPECT_EQ(s->result().exit_code, 1);
}

TEST_F(SupervisorTest, DaemonThatNeverGetsReadyTimesOut) {
  std::unique_ptr<Supervisor> s = Make();
  ChildSpec daemon = Sh("rankd 0", ChildKind::kDaemon, "echo starting >&2; exec sleep 100");
  daemon.ready_prefix = "listening on ";
  const int d = *s->Spawn(daemon);
  absl::StatusOr<std::string> ready = s->WaitReady(d, absl::Now() + absl::Milliseconds(300));
  EXPECT_THAT(ready, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(ready.status().message(),
            "rankd 0 did not print 'listening on ' in time; last lines of its stderr:\n"
            "    starting");
  s->Stop();
  EXPECT_TRUE(Gone(s->pid(d)));
}

TEST_F(SupervisorTest, InterruptForwardsTheSignalAndKillsAfterGrace) {
  std::unique_ptr<Supervisor> s = Make(absl::Milliseconds(300));
  // The worker reports SIGINT and exits; the daemon ignores it and needs SIGKILL.
  ASSERT_TRUE(s->Spawn(Sh("w 0", ChildKind::kWorker,
                          "trap 'echo got INT; exit 0' INT; while :; do sleep 0.05; done"))
                  .ok());
  const int d =
      *s->Spawn(Sh("d", ChildKind::kDaemon, "trap '' INT TERM; while :; do sleep 0.05; done"));
  absl::SleepFor(absl::Milliseconds(200));  // let the traps be set
  const unsigned char sig = SIGINT;
  ASSERT_EQ(write(interrupt_[1], &sig, 1), 1);
  const JobResult result = s->Supervise();
  EXPECT_EQ(result.exit_code, 130);
  EXPECT_EQ(result.reason, "received SIGINT");
  s->Stop();
  EXPECT_TRUE(Gone(s->pid(d)));
  EXPECT_THAT(out_.Read(), HasSubstr("[w 0] got INT\n"));
}

TEST_F(SupervisorTest, JobTimeout) {
  SupervisorOptions options;
  options.out_fd = out_.fd();
  options.err_fd = err_.fd();
  options.job_timeout = absl::Milliseconds(200);
  absl::StatusOr<std::unique_ptr<Supervisor>> s = Supervisor::Create(options);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->Spawn(Sh("w 0", ChildKind::kWorker, "exec sleep 100")).ok());
  const JobResult result = (*s)->Supervise();
  EXPECT_EQ(result.exit_code, 124);
  EXPECT_EQ(result.reason, "the job timed out after 200ms");
}

TEST_F(SupervisorTest, GrandchildOfAFinishedWorkerIsKilledAndReaped) {
  SupervisorOptions options;
  options.out_fd = out_.fd();
  options.err_fd = err_.fd();
  options.adopt_orphans = true;  // the grandchild is re-parented to us, and Stop reaps it
  absl::StatusOr<std::unique_ptr<Supervisor>> s = Supervisor::Create(options);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->Spawn(Sh("w 0", ChildKind::kWorker, "sleep 100 & echo $!; exit 0")).ok());
  EXPECT_EQ((*s)->Supervise().exit_code, 0);
  (*s)->Stop();
  const std::string out = out_.Read();
  ASSERT_THAT(out, HasSubstr("[w 0] "));
  const pid_t grandchild = std::atoi(out.substr(out.find("] ") + 2).c_str());
  ASSERT_GT(grandchild, 0);
  EXPECT_TRUE(Gone(grandchild));
}

}  // namespace
}  // namespace came::launch
