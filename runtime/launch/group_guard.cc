#include "runtime/launch/group_guard.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>


#include "absl/status/status.h"
#include "runtime/launch/errno_error.h"

namespace came::launch {
namespace {

// Reads exactly one pid_t; false at end of file or on an error.
bool ReadPid(int fd, pid_t* pid) {
  size_t got = 0;
  char* bytes = reinterpret_cast<char*>(pid);
  while (got < sizeof(*pid)) {
    const ssize_t n = read(fd, bytes + got, sizeof(*pid) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    got += static_cast<size_t>(n);
  }
  return true;
}

// The guard's whole life. A pid of 0 disarms it.
[[noreturn]] void GuardMain(int read_fd) {
  setsid();
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) signal(sig, SIG_IGN);
  static pid_t groups[GroupGuard::kMaxGroups];
  int count = 0;
  pid_t pgid = 0;
  while (ReadPid(read_fd, &pgid)) {
    if (pgid == 0) _exit(0);
    if (count < GroupGuard::kMaxGroups) groups[count++] = pgid;
  }
  for (int i = 0; i < count; ++i) kill(-groups[i], SIGKILL);
  _exit(0);
}

}  // namespace

absl::StatusOr<std::unique_ptr<GroupGuard>> GroupGuard::Start() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return ErrnoError("pipe");
  }
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(fds[0]);
    close(fds[1]);
    return ErrnoError("fork", err);
  }
  if (pid == 0) {
    close(fds[1]);
    GuardMain(fds[0]);
  }
  close(fds[0]);
  return std::unique_ptr<GroupGuard>(new GroupGuard(pid, fds[1]));
}

GroupGuard::~GroupGuard() { Disarm(); }

void GroupGuard::Add(pid_t pgid) {
  if (write_fd_ < 0 || pgid <= 0) return;
  while (write(write_fd_, &pgid, sizeof(pgid)) < 0 && errno == EINTR) {
  }
}

void GroupGuard::Disarm() {
  if (write_fd_ < 0) return;
  const pid_t done = 0;
  while (write(write_fd_, &done, sizeof(done)) < 0 && errno == EINTR) {
  }
  close(write_fd_);
  write_fd_ = -1;
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace came::launch
