// Starting one child process for the launcher: fork, a process group of its own, a parent
// death signal, a chosen environment and file descriptors, exec; exec failures come back to
// the caller as a Status (Note [Exec failure pipe]).
//
// Note [Children die with the launcher]
// Every child runs in a new process group that it leads (setpgid(0, 0) in the child, and
// again in the parent so that a kill(-pid) right after SpawnProcess cannot miss it), so a
// signal to -pid reaches the child and everything it started (a shell wrapper's python).
// Between fork and exec the child sets PR_SET_PDEATHSIG = SIGKILL and then checks that its
// parent is still the process that forked it: if the launcher died in between, the child
// exits at once. PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so
// call SpawnProcess from a thread that lives as long as the children (the launcher's main
// thread). Grandchildren do not inherit the death signal: they are reached through the
// process group while the launcher lives.
//
// Note [Exec failure pipe]
// The parent creates a pipe with O_CLOEXEC before fork. A successful exec closes the
// child's end, so the parent's read returns 0; a failed exec writes errno into it first.
// So "cannot execute" is an error of SpawnProcess, not an exit status 127 found later.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace came::launch {

struct SpawnRequest {
  std::string path;               // the executable; a path, not looked up in PATH
  std::vector<std::string> argv;  // argv[0] included
  std::vector<std::string> env;   // the child's whole environment, "NAME=value" entries
  int stdin_fd = -1;              // dup2'ed onto 0, 1 and 2 in the child; -1 keeps ours
  int stdout_fd = -1;
  int stderr_fd = -1;
};

// Starts the child (Note [Children die with the launcher]) and returns its pid, which is
// also its process group id. The caller owns the child and must reap it. Fails with
// FailedPrecondition naming the path and the errno when exec fails (the child is reaped
// then), Internal when fork or pipe fails. Thread-safe; see the note about threads.
absl::StatusOr<pid_t> SpawnProcess(const SpawnRequest& request);

// Returns `name` when it contains a '/', otherwise the first executable file called `name`
// in the ':'-separated `path_variable` (execvp's rule). NotFound when there is none.
absl::StatusOr<std::string> FindExecutable(absl::string_view name, absl::string_view path_variable);

// Describes a waitpid status: "exited with status 3", "killed by signal 9".
std::string DescribeWaitStatus(int wait_status);

// Returns the current environment as "NAME=value" entries, with each entry of `overrides`
// replacing (or adding) the variable of the same name.
std::vector<std::string> EnvironmentWith(
    const std::vector<std::pair<std::string, std::string>>& overrides);

}  // namespace came::launch
