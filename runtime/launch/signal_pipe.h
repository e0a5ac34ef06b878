// SignalPipe: turns SIGINT, SIGTERM and SIGHUP into bytes on a pipe (the self-pipe trick),
// so the supervisor notices them in its ordinary wait loop. Each byte read from read_fd()
// is a signal number. SIGPIPE is ignored while it is installed (writing to a closed
// terminal must not kill the launcher); children reset it (spawn.h).
//
// One per process; Install fails with FailedPrecondition if one is already installed.
// The destructor restores the previous handlers.
#pragma once

#include <signal.h>

#include <memory>

#include "absl/status/statusor.h"

namespace came::launch {

class SignalPipe {
 public:
  static absl::StatusOr<std::unique_ptr<SignalPipe>> Install();
  ~SignalPipe();

  SignalPipe(const SignalPipe&) = delete;
  SignalPipe& operator=(const SignalPipe&) = delete;

  int read_fd() const { return read_fd_; }

 private:
  static constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
  SignalPipe(int read_fd, int write_fd) : read_fd_(read_fd), write_fd_(write_fd) {}

  const int read_fd_;
  const int write_fd_;
  struct sigaction previous_[4] = {};
};

}  // namespace came::launch
