#include "runtime/launch/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/launch/errno_error.h"

extern char** environ;

namespace came::launch {
namespace {

std::vector<char*> CStrings(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

// Runs in the child between fork and exec: only async-signal-safe calls from here on.
[[noreturn]] void ExecChild(const SpawnRequest& request, char* const* argv, char* const* envp,
                            pid_t parent, int error_fd) {
  setpgid(0, 0);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
  // Signal dispositions a launcher sets (SIGPIPE ignored, handlers) must not leak: handlers
  // reset on exec by themselves, ignored signals do not.
  struct sigaction default_action;
  std::memset(&default_action, 0, sizeof(default_action));
  default_action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &default_action, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  const int targets[3] = {0, 1, 2};
  const int sources[3] = {request.stdin_fd, request.stdout_fd, request.stderr_fd};
  for (int i = 0; i < 3; ++i) {
    if (sources[i] >= 0 && dup2(sources[i], targets[i]) < 0) {
      const int err = errno;
      (void)!write(error_fd, &err, sizeof(err));
      _exit(127);
    }
  }
  execve(request.path.c_str(), argv, envp);
  const int err = errno;
  (void)!write(error_fd, &err, sizeof(err));
  _exit(127);
}

}  // namespace

absl::StatusOr<pid_t> SpawnProcess(const SpawnRequest& request) {
  if (request.argv.empty()) return absl::InvalidArgumentError("empty argv");
  const std::vector<char*> argv = CStrings(request.argv);
  const std::vector<char*> envp = CStrings(request.env);
  int error_pipe[2];
  if (pipe2(error_pipe, O_CLOEXEC) != 0) {
    return ErrnoError("pipe");
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(error_pipe[0]);
    close(error_pipe[1]);
    return ErrnoError("fork", err);
  }
  if (pid == 0) {
    close(error_pipe[0]);
    ExecChild(request, argv.data(), envp.data(), parent, error_pipe[1]);
  }
  // Both sides call setpgid (Note [Children die with the launcher]); after exec the
  // parent's call fails with EACCES, which is fine: the child has done it.
  setpgid(pid, pid);
  close(error_pipe[1]);
  int child_errno = 0;
  ssize_t n;
  do {
    n = read(error_pipe[0], &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  close(error_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(child_errno))) {
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return absl::FailedPreconditionError(
        absl::StrCat("cannot execute ", request.path, ": ", std::strerror(child_errno)));
  }
  return pid;
}

absl::StatusOr<std::string> FindExecutable(absl::string_view name,
                                           absl::string_view path_variable) {
  if (name.empty()) return absl::NotFoundError("empty command name");
  if (name.find('/') != absl::string_view::npos) return std::string(name);
  for (absl::string_view dir : absl::StrSplit(path_variable, ':')) {
    const std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return absl::NotFoundError(absl::StrCat(name, ": command not found in PATH"));
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) return absl::StrCat("killed by signal ", WTERMSIG(wait_status));
  return absl::StrCat("changed state (wait status ", wait_status, ")");
}

std::vector<std::string> EnvironmentWith(
    const std::vector<std::pair<std::string, std::string>>& overrides) {
  std::vector<std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    absl::string_view kv(*entry);
    const absl::string_view name = kv.substr(0, kv.find('='));
    bool replaced = false;
    for (const auto& [key, value] : overrides) replaced = replaced || key == name;
    if (!replaced) env.emplace_back(kv);
  }
  for (const auto& [key, value] : overrides) env.push_back(absl::StrCat(key, "=", value));
  return env;
}

}  // namespace came::launch
