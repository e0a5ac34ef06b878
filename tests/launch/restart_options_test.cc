// In-process tests of the restart, preemption and multi-node pieces of the launcher: their
// flags, and the supervisor's SIGTERM handling (Note [Stopping on request] in supervisor.h)
// with /bin/sh children.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/launch/launch_options.h"
#include "runtime/launch/supervisor.h"

namespace came::launch {
namespace {

using ::testing::HasSubstr;

TEST(RestartOptionsTest, ParsesRestartPreemptionAndMultiNodeFlags) {
  absl::StatusOr<LaunchOptions> o = ParseLaunchArgs(
      {"--nnodes", "2", "--node-rank", "1", "--coordinator", "10.0.0.1:29500",
       "--nproc-per-node", "4", "--node-address", "10.0.0.2", "--token-file", "/t",
       "--checkpoint-dir", "/c", "--max-restarts", "3", "--checkpoint-every=50",
       "--keep-checkpoints", "2", "--grace-period", "45", "--lease-seconds", "5", "--", "python3"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->nnodes, 2);
  EXPECT_EQ(o->node_rank, 1);
  EXPECT_EQ(o->coordinator, "10.0.0.1:29500");
  EXPECT_EQ(o->nproc, 4);
  EXPECT_EQ(o->node_address, "10.0.0.2");
  EXPECT_EQ(o->max_restarts, 3);
  EXPECT_EQ(o->checkpoint_every, 50);
  EXPECT_EQ(o->keep_checkpoints, 2);
  EXPECT_EQ(o->grace_period_seconds, 45);
  EXPECT_EQ(o->lease_seconds, 5);
  // One node: the defaults.
  absl::StatusOr<LaunchOptions> one = ParseLaunchArgs({"--nproc", "2", "--", "x"});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->nnodes, 1);
  EXPECT_EQ(one->max_restarts, 0);
  EXPECT_EQ(one->grace_period_seconds, 30);
}

TEST(RestartOptionsTest, RejectsFlagsThatDoNotFitTogether) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--nnodes", "2", "--nproc-per-node", "2", "--token-file", "/t", "--", "x"},
       "needs --coordinator"},
      {{"--nnodes", "2", "--nproc-per-node", "2", "--coordinator", "h:1", "--", "x"},
       "needs --token-file"},
      {{"--nnodes", "2", "--node-rank", "2", "--nproc-per-node", "2", "--coordinator", "h:1",
        "--token-file", "/t", "--", "x"},
       "--node-rank 2 is outside"},
      {{"--nproc", "2", "--coordinator", "nohost", "--", "x"}, "--coordinator wants HOST:PORT"},
      {{"--nproc", "2", "--coordinator", "h:0", "--", "x"}, "--coordinator wants HOST:PORT"},
      {{"--nproc", "2", "--node-address", "h:1", "--", "x"}, "--node-address"},
      {{"--nproc", "2", "--checkpoint-every", "5", "--", "x"}, "need --checkpoint-dir"},
      {{"--nproc", "2", "--keep-checkpoints", "1", "--", "x"}, "need --checkpoint-dir"},
      {{"--nproc", "2", "--checkpoint-every", "0", "--checkpoint-dir", "c", "--", "x"},
       "--checkpoint-every wants an integer"},
      {{"--nproc", "2", "--max-restarts", "-1", "--", "x"}, "--max-restarts wants an integer"},
      {{"--nnodes", "100", "--nproc-per-node", "1000", "--coordinator", "h:1", "--token-file",
        "/t", "--", "x"},
       "more than 65536 ranks"},
  };
  for (const auto& [args, expected] : cases) {
    absl::StatusOr<LaunchOptions> o = ParseLaunchArgs(args);
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << expected;
    EXPECT_THAT(std::string(o.status().message()), HasSubstr(expected));
  }
}

// The supervisor of one /bin/sh worker that finishes once it sees the file `go`.
class StopOnRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(pipe(interrupt_), 0);
    char dir[] = "/tmp/came-stop-test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
  }
  void TearDown() override {
    close(interrupt_[0]);
    close(interrupt_[1]);
    std::system(("rm -rf " + dir_).c_str());
  }
  std::unique_ptr<Supervisor> Make(std::function<bool()> on_terminate, absl::Duration stop_grace,
                                   absl::Duration grace = absl::Milliseconds(200)) {
    SupervisorOptions options;
    options.out_fd = out_;
    options.err_fd = err_fd();
    options.interrupt_fd = interrupt_[0];
    options.grace = grace;
    options.tick = absl::Milliseconds(10);
    options.on_terminate = std::move(on_terminate);
    options.stop_grace = stop_grace;
    absl::StatusOr<std::unique_ptr<Supervisor>> s = Supervisor::Create(std::move(options));
    EXPECT_TRUE(s.ok()) << s.status();
    return *std::move(s);
  }
  // A worker that ignores SIGTERM and exits 0 once <dir>/go exists.
  ChildSpec Worker() {
    const std::string script = "trap '' TERM; while [ ! -e " + dir_ + "/go ]; do sleep 0.02; done";
    return ChildSpec{.name = "w 0",
                     .kind = ChildKind::kWorker,
                     .path = "/bin/sh",
                     .argv = {"/bin/sh", "-c", script},
                     .env = {"PATH=/usr/bin:/bin"}};
  }
  void Signal(int sig) {
    const unsigned char byte = static_cast<unsigned char>(sig);
    ASSERT_EQ(write(interrupt_[1], &byte, 1), 1);
  }
  int err_fd() {
    if (err_ < 0) err_ = open((dir_ + "/err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    return err_;
  }
  std::string Err() {
    std::ifstream in(dir_ + "/err");
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  int interrupt_[2] = {-1, -1};
  int out_ = open("/dev/null", O_WRONLY);
  int err_ = -1;
  std::string dir_;
};

TEST_F(StopOnRequestTest, TakenSigtermLetsTheJobFinishAndReportsIt) {
  int asked = 0;
  std::unique_ptr<Supervisor> s = Make([&] { return ++asked > 0; }, absl::Seconds(20));
  ASSERT_TRUE(s->Spawn(Worker()).ok());
  Signal(SIGTERM);
  std::thread finisher([this] {
    absl::SleepFor(absl::Milliseconds(300));
    std::ofstream(dir_ + "/go") << "";
  });
  const JobResult result = s->Supervise();
  finisher.join();
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(result.exit_code, 0) << result.reason;
  EXPECT_TRUE(result.stopped_on_request);
  EXPECT_THAT(Err(), HasSubstr("received SIGTERM: the job checkpoints after its next step"));
}

TEST_F(StopOnRequestTest, JobStillRunningAfterTheGracePeriodIsKilledAtOnce) {
  std::unique_ptr<Supervisor> s =
      Make([] { return true; }, absl::Milliseconds(300), absl::Seconds(5));
  const int w = *s->Spawn(Worker());
  const absl::Time start = absl::Now();
  Signal(SIGTERM);
  const JobResult result = s->Supervise();
  s->Stop();
  EXPECT_EQ(result.exit_code, 128 + SIGTERM);
  EXPECT_EQ(result.reason, "the job did not stop within the grace period of 300ms after SIGTERM");
  // No second grace period (5 s) for the worker that ignores SIGTERM: SIGKILL at once.
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_NE(kill(s->pid(w), 0), 0);
}

TEST_F(StopOnRequestTest, DeclinedOrSecondSigtermStopsTheJobAtOnce) {
  {
    std::unique_ptr<Supervisor> s = Make([] { return false; }, absl::Seconds(20));
    ASSERT_TRUE(s->Spawn(Worker()).ok());
    Signal(SIGTERM);
    const JobResult result = s->Supervise();
    EXPECT_EQ(result.exit_code, 128 + SIGTERM);
    EXPECT_FALSE(result.stopped_on_request);
  }
  std::unique_ptr<Supervisor> s = Make([] { return true; }, absl::Seconds(20));
  ASSERT_TRUE(s->Spawn(Worker()).ok());
  Signal(SIGTERM);
  Signal(SIGTERM);
  const JobResult result = s->Supervise();
  EXPECT_EQ(result.exit_code, 128 + SIGTERM);
  EXPECT_EQ(result.reason, "received SIGTERM");
}

}  // namespace
}  // namespace came::launch
