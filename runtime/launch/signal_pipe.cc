#include "runtime/launch/signal_pipe.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "absl/status/status.h"
#include "runtime/launch/errno_error.h"

namespace came::launch {
namespace {

std::atomic<int> g_write_fd{-1};

void OnSignal(int sig) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  (void)!write(g_write_fd.load(), &byte, 1);
  errno = saved_errno;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SignalPipe>> SignalPipe::Install() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    return ErrnoError("pipe");
  }
  int expected = -1;
  if (!g_write_fd.compare_exchange_strong(expected, fds[1])) {
    close(fds[0]);
    close(fds[1]);
    return absl::FailedPreconditionError("a SignalPipe is already installed");
  }
  std::unique_ptr<SignalPipe> pipe(new SignalPipe(fds[0], fds[1]));
  for (size_t i = 0; i < std::size(kSignals); ++i) {
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_handler = kSignals[i] == SIGPIPE ? SIG_IGN : OnSignal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(kSignals[i], &action, &pipe->previous_[i]);
  }
  return pipe;
}

SignalPipe::~SignalPipe() {
  for (size_t i = 0; i < std::size(kSignals); ++i) {
    sigaction(kSignals[i], &previous_[i], nullptr);
  }
  g_write_fd.store(-1);
  close(read_fd_);
  close(write_fd_);
}

}  // namespace came::launch
