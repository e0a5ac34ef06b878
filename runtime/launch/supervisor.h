// Supervisor: starts the processes of one job, pumps their output and applies the failure
// policy. It knows nothing of coordinators or trainers; launcher.h says what to start.
//
// Two kinds of children:
//   - workers (trainers): the job succeeds when every worker has exited 0; a worker that
//     exits non-zero or is killed by a signal fails the job;
//   - daemons (coordinator, rankd): serve the workers; a daemon that exits at all while
//     the job runs fails it. They may announce readiness with a line on stdout.
// The job also ends when the interrupt fd yields a signal number (signal_pipe.h) or the
// job timeout passes, except for a first SIGTERM that on_terminate takes (Note [Stopping
// on request]). Whatever ends it, Stop() then takes every child down (Note [Stopping
// the job]) and reaps it: no child outlives the supervisor.
//
// Note [Stopping the job]
// Stop sends one signal (the one the launcher received, otherwise SIGTERM) to the process
// group of every running child: workers first, then daemons in reverse start order (rankd
// before the coordinator). It waits up to the grace period for them to exit; a second
// interrupt cuts the wait short. Then every child's process group gets SIGKILL, running or
// not, so grandchildren left behind by a child that already exited go too, and everything
// is reaped. With adopt_orphans the supervisor is a child subreaper (PR_SET_CHILD_SUBREAPER)
// and also reaps the grandchildren that were re-parented to it. With guard_groups, a
// GroupGuard SIGKILLs every child's process group if the supervisor's process dies before
// Stop has finished.
//
// Note [Stopping on request]
// A preempted cluster job gets SIGTERM and a grace period. With on_terminate set, the first
// SIGTERM calls it instead of ending the job; when it returns true (it asked the job to
// stop by itself: checkpoint, then the workers exit 0), the job goes on for up to
// stop_grace and ends as usual when the workers are done (JobResult::stopped_on_request).
// If it is still running then, it ends with 128 + SIGTERM and Stop sends SIGKILL at once.
// A second SIGTERM or a SIGINT ends it at once.
//
// Every child gets its own process group and dies with the launcher's thread (spawn.h):
// call Create, Spawn, WaitReady, Supervise and Stop from one thread, the one that lives
// longest (main). The output pump runs on a thread of its own.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/launch/group_guard.h"
#include "runtime/launch/output_pump.h"

namespace came::launch {

enum class ChildKind { kWorker, kDaemon };

struct ChildSpec {
  std::string name;  // "trainer 0", "coordinator": prefixes and messages
  ChildKind kind = ChildKind::kWorker;
  std::string path;               // the executable (not looked up in PATH)
  std::vector<std::string> argv;  // argv[0] included
  std::vector<std::string> env;   // the whole environment, "NAME=value"
  std::string ready_prefix;       // WaitReady looks for a stdout line starting with it
};

struct SupervisorOptions {
  int out_fd = 1;         // children's stdout lines go here, prefixed "[name] "
  int err_fd = 2;         // their stderr lines and the supervisor's own messages
  std::string log_dir;    // if set, each child's lines also go to <log_dir>/<name>.log
                          // (spaces in the name become '-')
  int interrupt_fd = -1;  // each byte read is a signal number; -1: none
  absl::Duration job_timeout = absl::InfiniteDuration();  // from Create
  // The job's end when it started before Create (a restarted job, Note [Restarts] in
  // launcher.h); InfiniteFuture: Create + job_timeout.
  absl::Time job_deadline = absl::InfiniteFuture();
  absl::Duration grace = absl::Seconds(10);               // between the stop signal and SIGKILL
  absl::Duration drain = absl::Seconds(2);       // output still read after the children died
  absl::Duration tick = absl::Milliseconds(20);  // how often children are checked
  bool adopt_orphans = false;  // become a child subreaper (Note [Stopping the job])
  bool guard_groups = false;   // run a GroupGuard (group_guard.h), so that the children's
                               // process groups die even if this process is SIGKILLed
  std::string name = "came-launch";  // prefixes the supervisor's own messages
  // Note [Stopping on request]; null: SIGTERM ends the job like SIGINT.
  std::function<bool()> on_terminate;
  absl::Duration stop_grace = absl::Seconds(30);
};

// How a job ended. exit_code: 0 success, 1 a child failed or did not get ready,
// 124 the job timed out, 128 + n the launcher received signal n.
struct JobResult {
  int exit_code = 0;
  std::string reason;  // names what ended the job; empty on success
  bool stopped_on_request = false;  // on_terminate took a SIGTERM (Note [Stopping on request])
};

class Supervisor {
 public:
  static absl::StatusOr<std::unique_ptr<Supervisor>> Create(SupervisorOptions options);
  // Stops whatever still runs (Stop) and closes the pump.
  ~Supervisor();

  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts a child and returns its index. FailedPrecondition when its executable cannot
  // be run (spawn.h), Internal for other system errors; nothing is left running then.
  absl::StatusOr<int> Spawn(ChildSpec spec);

  // Waits until child `index` prints a stdout line starting with its ready_prefix and
  // returns the rest of that line. Applies the failure policy to every child meanwhile:
  // if the job ends first, or the deadline passes, returns an error whose message is the
  // reason (result() then says how the job ended); for a child that died or did not get
  // ready the message includes its last stderr lines.
  absl::StatusOr<std::string> WaitReady(int index, absl::Time deadline);

  // Waits until the job ends (see the header comment) and returns how. Reports a failure
  // on err_fd ("came-launch: trainer 1 exited with status 3; stopping the job").
  JobResult Supervise();

  // Stops and reaps every child (Note [Stopping the job]) and drains their output. Later
  // calls do nothing.
  void Stop();

  // How the job ended, once it has; exit_code 0 with an empty reason before that.
  const JobResult& result() const { return result_; }

  // Returns the pid of child `index` (also its process group id).
  pid_t pid(int index) const;

 private:
  struct Child;
  Supervisor(SupervisorOptions options, std::unique_ptr<GroupGuard> guard,
             std::unique_ptr<OutputPump> pump, int dev_null);

  // Waits one tick for an interrupt, reaps children and applies the failure policy.
  // Returns true once the job has ended (result_ is set).
  bool Step(absl::Time wake_by);
  // Waits up to `wait` for a byte on the interrupt fd; returns the signal number or 0.
  int WaitForInterrupt(absl::Duration wait);
  // Reaps the children that exited (and adopted orphans) and applies the policy.
  void Reap();
  void Record(pid_t pid, int wait_status);
  void End(JobResult result, bool report);
  // Waits a little (kLastOutputWait) for the pipes of a dead child to reach end of file.
  void AwaitLastOutput(Child& child);
  // Returns the last stderr lines of `child`, indented; "" if none.
  std::string RecentStderr(Child& child);
  // Reports the last stderr lines of `child` and appends them to `status`'s message.
  absl::Status NotReady(Child& child, absl::Status status);
  void Message(absl::string_view text);

  const SupervisorOptions options_;
  const absl::Time job_deadline_;
  std::unique_ptr<GroupGuard> guard_;  // null without guard_groups
  std::unique_ptr<OutputPump> pump_;
  const int dev_null_;
  std::vector<std::unique_ptr<Child>> children_;
  bool ended_ = false;
  JobResult result_;
  int interrupt_signal_ = 0;
  bool stopped_ = false;
  absl::Time stop_deadline_ = absl::InfiniteFuture();  // set once on_terminate took SIGTERM
  bool kill_at_once_ = false;  // Stop skips the grace period
  Child* failed_ = nullptr;  // the child whose exit ended the job, if one did
};

}  // namespace came::launch
