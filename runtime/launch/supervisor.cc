#include "runtime/launch/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <deque>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "runtime/launch/errno_error.h"
#include "runtime/launch/spawn.h"

namespace came::launch {
namespace {

constexpr size_t kRecentLines = 20;
// How long a failure report waits for a dead child's last output to arrive.
constexpr absl::Duration kLastOutputWait = absl::Seconds(1);
// How long SIGKILLed processes get to disappear before Stop gives up reaping.
constexpr absl::Duration kReapAfterKill = absl::Seconds(5);

std::string SignalName(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGHUP:
      return "SIGHUP";
    default:
      return absl::StrCat("signal ", sig);
  }
}

}  // namespace

struct Supervisor::Child {
  ChildSpec spec;
  pid_t pid = -1;
  bool running = false;
  int log_fd = -1;
  // Written by the pump's callbacks.
  absl::Mutex mu;
  int open_streams ABSL_GUARDED_BY(mu) = 0;
  std::optional<std::string> ready_rest ABSL_GUARDED_BY(mu);
  std::deque<std::string> recent_stderr ABSL_GUARDED_BY(mu);
};

absl::StatusOr<std::unique_ptr<Supervisor>> Supervisor::Create(SupervisorOptions options) {
  if (options.adopt_orphans && prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    return ErrnoError("prctl(PR_SET_CHILD_SUBREAPER)");
  }
  // The guard first, while no pump thread runs (group_guard.h).
  std::unique_ptr<GroupGuard> guard;
  if (options.guard_groups) {
    absl::StatusOr<std::unique_ptr<GroupGuard>> started = GroupGuard::Start();
    if (!started.ok()) return started.status();
    guard = *std::move(started);
  }
  const int dev_null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (dev_null < 0) return ErrnoError("open /dev/null");
  absl::StatusOr<std::unique_ptr<OutputPump>> pump = OutputPump::Create();
  if (!pump.ok()) {
    close(dev_null);
    return pump.status();
  }
  return std::unique_ptr<Supervisor>(
      new Supervisor(std::move(options), std::move(guard), *std::move(pump), dev_null));
}

Supervisor::Supervisor(SupervisorOptions options, std::unique_ptr<GroupGuard> guard,
                       std::unique_ptr<OutputPump> pump, int dev_null)
    : options_(std::move(options)),
      job_deadline_(options_.job_deadline != absl::InfiniteFuture()
                        ? options_.job_deadline
                        : absl::Now() + options_.job_timeout),
      guard_(std::move(guard)),
      pump_(std::move(pump)),
      dev_null_(dev_null) {}

Supervisor::~Supervisor() {
  Stop();
  for (const auto& child : children_) {
    if (child->log_fd >= 0) close(child->log_fd);
  }
  close(dev_null_);
}

pid_t Supervisor::pid(int index) const { return children_.at(index)->pid; }

void Supervisor::Message(absl::string_view text) {
  WriteAll(options_.err_fd, absl::StrCat(options_.name, ": ", text, "\n"));
}

absl::StatusOr<int> Supervisor::Spawn(ChildSpec spec) {
  auto child = std::make_unique<Child>();
  if (!options_.log_dir.empty()) {
    const std::string path =
        absl::StrCat(options_.log_dir, "/", absl::StrReplaceAll(spec.name, {{" ", "-"}}), ".log");
    child->log_fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (child->log_fd < 0) return ErrnoError(absl::StrCat("open ", path));
  }
  children_.push_back(std::move(child));
  Child& c = *children_.back();
  c.spec = std::move(spec);

  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return ErrnoError("pipe");
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return ErrnoError("pipe");
  }
  absl::StatusOr<pid_t> pid = SpawnProcess(SpawnRequest{.path = c.spec.path,
                                                        .argv = c.spec.argv,
                                                        .env = c.spec.env,
                                                        .stdin_fd = dev_null_,
                                                        .stdout_fd = out_pipe[1],
                                                        .stderr_fd = err_pipe[1]});
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (!pid.ok()) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return absl::Status(pid.status().code(),
                        absl::StrCat(c.spec.name, ": ", pid.status().message()));
  }
  c.pid = *pid;
  c.running = true;
  if (guard_) guard_->Add(c.pid);
  {
    absl::MutexLock lock(&c.mu);
    c.open_streams = 2;
  }
  const std::string prefix = absl::StrCat("[", c.spec.name, "] ");
  auto on_close = [this, &c] {
    absl::MutexLock lock(&c.mu);
    --c.open_streams;
  };
  pump_->Add(PumpStream{.fd = out_pipe[0],
                        .out_fd = options_.out_fd,
                        .log_fd = c.log_fd,
                        .prefix = prefix,
                        .on_line =
                            [this, &c](absl::string_view line) {
                              if (c.spec.ready_prefix.empty() ||
                                  !absl::StartsWith(line, c.spec.ready_prefix)) {
                                return;
                              }
                              absl::MutexLock lock(&c.mu);
                              if (!c.ready_rest)
                                c.ready_rest = std::string(line.substr(c.spec.ready_prefix.size()));
                            },
                        .on_close = on_close});
  pump_->Add(PumpStream{.fd = err_pipe[0],
                        .out_fd = options_.err_fd,
                        .log_fd = c.log_fd,
                        .prefix = prefix,
                        .on_line =
                            [this, &c](absl::string_view line) {
                              absl::MutexLock lock(&c.mu);
                              c.recent_stderr.emplace_back(line);
                              if (c.recent_stderr.size() > kRecentLines) {
                                c.recent_stderr.pop_front();
                              }
                            },
                        .on_close = on_close});
  return static_cast<int>(children_.size()) - 1;
}

void Supervisor::AwaitLastOutput(Child& child) {
  absl::MutexLock lock(&child.mu);
  auto closed = [&child]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(child.mu) { return child.open_streams == 0; };
  child.mu.AwaitWithTimeout(absl::Condition(&closed), kLastOutputWait);
}

std::string Supervisor::RecentStderr(Child& child) {
  absl::MutexLock lock(&child.mu);
  if (child.recent_stderr.empty()) return "";
  return absl::StrCat("    ", absl::StrJoin(child.recent_stderr, "\n    "));
}

void Supervisor::End(JobResult result, bool report) {
  if (ended_) return;
  ended_ = true;
  result_ = std::move(result);
  if (report) Message(absl::StrCat(result_.reason, "; stopping the job"));
}

void Supervisor::Record(pid_t pid, int wait_status) {
  auto it = std::find_if(children_.begin(), children_.end(),
                         [pid](const auto& c) { return c->running && c->pid == pid; });
  if (it == children_.end()) return;  // an adopted grandchild
  Child& c = **it;
  c.running = false;
  if (ended_ || stopped_) return;
  const bool clean_exit = WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  if (c.spec.kind == ChildKind::kWorker && clean_exit) {
    const bool all_done = std::none_of(children_.begin(), children_.end(), [](const auto& o) {
      return o->spec.kind == ChildKind::kWorker && o->running;
    });
    if (all_done) {
      End(JobResult{.stopped_on_request = stop_deadline_ != absl::InfiniteFuture()},
          /*report=*/false);
    }
    return;
  }
  failed_ = &c;
  AwaitLastOutput(c);  // so that its last words come before the report
  std::string reason = absl::StrCat(c.spec.name, " ", DescribeWaitStatus(wait_status));
  if (c.spec.kind == ChildKind::kDaemon && clean_exit)
    absl::StrAppend(&reason, " while the job was running");
  End(JobResult{1, std::move(reason)}, /*report=*/true);
}

void Supervisor::Reap() {
  for (;;) {
    int status = 0;
    pid_t pid = 0;
    if (options_.adopt_orphans) {
      pid = waitpid(-1, &status, WNOHANG);
    } else {
      for (const auto& c : children_) {
        if (c->running && (pid = waitpid(c->pid, &status, WNOHANG)) != 0) break;
      }
    }
    if (pid < 0 && errno == EINTR) continue;
    if (pid <= 0) return;
    Record(pid, status);
  }
}

int Supervisor::WaitForInterrupt(absl::Duration wait) {
  const int ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(wait)));
  if (options_.interrupt_fd < 0) {
    absl::SleepFor(absl::Milliseconds(ms));
    return 0;
  }
  pollfd p{options_.interrupt_fd, POLLIN, 0};
  unsigned char sig = 0;
  if (poll(&p, 1, ms) <= 0 || read(options_.interrupt_fd, &sig, 1) != 1) return 0;
  return sig;
}

bool Supervisor::Step(absl::Time wake_by) {
  Reap();
  if (ended_) return true;
  if (const int sig = WaitForInterrupt(std::min(wake_by - absl::Now(), options_.tick)); sig != 0) {
    const bool first_term = sig == SIGTERM && stop_deadline_ == absl::InfiniteFuture();
    if (first_term && options_.on_terminate && options_.on_terminate()) {
      stop_deadline_ = absl::Now() + options_.stop_grace;
      Message(absl::StrCat("received SIGTERM: the job checkpoints after its next step and "
                           "stops (grace period ",
                           absl::FormatDuration(options_.stop_grace), ")"));
      return false;
    }
    interrupt_signal_ = sig;
    End(JobResult{128 + sig, absl::StrCat("received ", SignalName(sig))}, /*report=*/true);
    return true;
  }
  Reap();
  if (!ended_ && absl::Now() >= stop_deadline_) {
    kill_at_once_ = true;
    End(JobResult{128 + SIGTERM,
                  absl::StrCat("the job did not stop within the grace period of ",
                               absl::FormatDuration(options_.stop_grace), " after SIGTERM"),
                  /*stopped_on_request=*/true},
        /*report=*/true);
    return true;
  }
  if (!ended_ && absl::Now() >= job_deadline_) {
    End(JobResult{124, absl::StrCat("the job timed out after ",
                                    absl::FormatDuration(options_.job_timeout))},
        /*report=*/true);
  }
  return ended_;
}

absl::Status Supervisor::NotReady(Child& child, absl::Status status) {
  const std::string lines = RecentStderr(child);
  if (lines.empty()) {
    Message(absl::StrCat(child.spec.name, " wrote nothing to stderr"));
    return absl::Status(status.code(), absl::StrCat(status.message(), "; ", child.spec.name,
                                                    " wrote nothing to stderr"));
  }
  Message(absl::StrCat("last lines of ", child.spec.name, "'s stderr:\n", lines));
  return absl::Status(status.code(),
                      absl::StrCat(status.message(), "; last lines of its stderr:\n", lines));
}

absl::StatusOr<std::string> Supervisor::WaitReady(int index, absl::Time deadline) {
  Child& c = *children_.at(index);
  auto ready = [&c]() -> std::optional<std::string> {
    absl::MutexLock lock(&c.mu);
    return c.ready_rest;
  };
  for (;;) {
    if (std::optional<std::string> rest = ready()) return *rest;
    if (ended_ || Step(deadline)) {
      const absl::Status status = absl::UnavailableError(result_.reason);
      // A daemon that died while we waited: show what it said.
      if (failed_ != nullptr && failed_->spec.kind == ChildKind::kDaemon) {
        return NotReady(*failed_, status);
      }
      return status;
    }
    if (absl::Now() >= deadline) {
      if (std::optional<std::string> rest = ready()) return *rest;
      const std::string reason =
          absl::StrCat(c.spec.name, " did not print '", c.spec.ready_prefix, "' in time");
      End(JobResult{1, reason}, /*report=*/true);
      return NotReady(c, absl::DeadlineExceededError(reason));
    }
  }
}

JobResult Supervisor::Supervise() {
  while (!Step(absl::InfiniteFuture())) {
  }
  return result_;
}

void Supervisor::Stop() {
  if (stopped_) return;
  stopped_ = true;
  const int sig = interrupt_signal_ != 0 ? interrupt_signal_ : SIGTERM;
  std::vector<Child*> order;
  for (const auto& c : children_) {
    if (c->spec.kind == ChildKind::kWorker) order.push_back(c.get());
  }
  for (auto it = children_.rbegin(); it != children_.rend(); ++it) {
    if ((*it)->spec.kind == ChildKind::kDaemon) order.push_back(it->get());
  }
  for (Child* c : order) {
    if (c->running) kill(-c->pid, sig);
  }
  const absl::Time grace_end = absl::Now() + (kill_at_once_ ? absl::ZeroDuration() : options_.grace);
  auto any_running = [&] {
    return std::any_of(children_.begin(), children_.end(),
                       [](const auto& c) { return c->running; });
  };
  while (any_running() && absl::Now() < grace_end) {
    Reap();
    if (!any_running()) break;
    if (const int again = WaitForInterrupt(std::min(options_.tick, grace_end - absl::Now()));
        again != 0) {
      Message(absl::StrCat("received ", SignalName(again), " again; killing the job"));
      break;
    }
  }
  // Every group, running or not: a child that exited may have left grandchildren behind.
  for (Child* c : order) {
    if (c->pid > 0) kill(-c->pid, SIGKILL);
  }
  const absl::Time reap_end = absl::Now() + kReapAfterKill;
  while (any_running() && absl::Now() < reap_end) {
    Reap();
    if (any_running()) absl::SleepFor(absl::Milliseconds(5));
  }
  if (guard_) guard_->Disarm();
  if (options_.adopt_orphans) {
    // Grandchildren re-parented to us were SIGKILLed with their group; reap them until
    // there is nothing left (ECHILD) or the time is up.
    while (absl::Now() < reap_end) {
      const pid_t pid = waitpid(-1, nullptr, WNOHANG);
      if (pid < 0 && errno != EINTR) break;
      if (pid == 0) absl::SleepFor(absl::Milliseconds(5));
    }
  }
  for (const auto& c : children_) {
    if (c->running)
      Message(absl::StrCat(c->spec.name, " (pid ", c->pid, ") did not die after SIGKILL"));
  }
  pump_->Close(absl::Now() + options_.drain);
}

}  // namespace came::launch
