// GroupGuard: a helper process that SIGKILLs the job's process groups if the launcher dies
// without shutting the job down (SIGKILL, a crash).
//
// PR_SET_PDEATHSIG (spawn.h) takes the launcher's direct children along, but is not
// inherited: a trainer's own children (a shell wrapper's python) would outlive a SIGKILLed
// launcher. The guard is forked before any child, in a session of its own (so a kill of
// the launcher's process group spares it) with SIGINT, SIGTERM and SIGHUP ignored. It reads
// process group ids from a pipe whose write end only the launcher holds (O_CLOEXEC, so
// children lose it at exec). At end of file it SIGKILLs every group it was told about,
// unless Disarm said first that the job is over; then it exits.
//
// Not thread-safe: use from the thread that spawns the children.
#pragma once

#include <sys/types.h>

#include <memory>

#include "absl/status/statusor.h"

namespace came::launch {

class GroupGuard {
 public:
  // The most groups one guard can hold; later Adds are dropped.
  static constexpr int kMaxGroups = 4096;

  // Forks the guard. Call it while this process has one thread (before the output pump):
  // the guard runs only async-signal-safe code, but fork from one thread is simplest.
  static absl::StatusOr<std::unique_ptr<GroupGuard>> Start();
  // Disarms the guard if Disarm was not called.
  ~GroupGuard();

  GroupGuard(const GroupGuard&) = delete;
  GroupGuard& operator=(const GroupGuard&) = delete;

  // Tells the guard about the process group `pgid`.
  void Add(pid_t pgid);

  // Tells the guard the job ended cleanly, then waits for it to exit. Later calls do
  // nothing.
  void Disarm();

  pid_t pid() const { return pid_; }

 private:
  GroupGuard(pid_t pid, int write_fd) : pid_(pid), write_fd_(write_fd) {}

  const pid_t pid_;
  int write_fd_;
};

}  // namespace came::launch
