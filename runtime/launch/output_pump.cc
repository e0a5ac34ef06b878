#include "runtime/launch/output_pump.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/launch/errno_error.h"

namespace came::launch {

struct OutputPump::Open {
  PumpStream stream;
  std::string partial;  // bytes after the last newline

  void Emit(absl::string_view line) {
    WriteAll(stream.out_fd, absl::StrCat(stream.prefix, line, "\n"));
    if (stream.log_fd >= 0) WriteAll(stream.log_fd, absl::StrCat(line, "\n"));
    if (stream.on_line) stream.on_line(line);
  }

  // Emits the complete lines in `partial`, cutting lines longer than kMaxLineBytes.
  void EmitLines() {
    size_t start = 0;
    for (;;) {
      const size_t newline = partial.find('\n', start);
      const size_t end = newline == std::string::npos ? partial.size() : newline;
      if (end - start > kMaxLineBytes ||
          (newline == std::string::npos && end - start == kMaxLineBytes)) {
        Emit(absl::string_view(partial).substr(start, kMaxLineBytes));
        start += kMaxLineBytes;
        continue;
      }
      if (newline == std::string::npos) break;
      Emit(absl::string_view(partial).substr(start, newline - start));
      start = newline + 1;
    }
    partial.erase(0, start);
  }

  void Finish() {
    if (!partial.empty()) Emit(partial);
    partial.clear();
    close(stream.fd);
    if (stream.on_close) stream.on_close();
  }
};

void WriteAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{fd, POLLOUT, 0};
        poll(&p, 1, 100);
        continue;
      }
      return;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

absl::StatusOr<std::unique_ptr<OutputPump>> OutputPump::Create() {
  int wake[2];
  if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    return ErrnoError("pipe");
  }
  std::unique_ptr<OutputPump> pump(new OutputPump(wake[0], wake[1]));
  pump->thread_ = std::thread([p = pump.get()] { p->Run(); });
  return pump;
}

OutputPump::OutputPump(int wake_read, int wake_write)
    : wake_read_(wake_read), wake_write_(wake_write) {}

OutputPump::~OutputPump() {
  Close(absl::Now());
  close(wake_read_);
  close(wake_write_);
}

void OutputPump::Wake() {
  const char byte = 0;
  (void)!write(wake_write_, &byte, 1);
}

void OutputPump::Add(PumpStream stream) {
  fcntl(stream.fd, F_SETFL, fcntl(stream.fd, F_GETFL) | O_NONBLOCK);
  {
    absl::MutexLock lock(&mu_);
    added_.push_back(std::move(stream));
  }
  Wake();
}

void OutputPump::Close(absl::Time drain_deadline) {
  if (joined_) return;
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
    drain_deadline_ = drain_deadline;
  }
  Wake();
  thread_.join();
  joined_ = true;
}

void OutputPump::Run() {
  std::vector<Open> open;
  std::vector<pollfd> fds;
  char buffer[64 * 1024];
  for (;;) {
    bool closing;
    absl::Time deadline;
    {
      absl::MutexLock lock(&mu_);
      for (PumpStream& s : added_) open.push_back(Open{std::move(s), {}});
      added_.clear();
      closing = closing_;
      deadline = drain_deadline_;
    }
    if (closing && (open.empty() || absl::Now() >= deadline)) break;
    fds.assign(1, pollfd{wake_read_, POLLIN, 0});
    for (const Open& o : open) fds.push_back(pollfd{o.stream.fd, POLLIN, 0});
    int timeout_ms = -1;
    if (closing) {
      timeout_ms = static_cast<int>(
          std::clamp<int64_t>(absl::ToInt64Milliseconds(deadline - absl::Now()) + 1, 0, 1000));
    }
    if (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) break;
    if (fds[0].revents != 0) {
      while (read(wake_read_, buffer, sizeof(buffer)) > 0) {
      }
    }
    // Walk backwards so that erasing a finished stream keeps the indices of the rest.
    for (size_t i = open.size(); i-- > 0;) {
      if (fds[i + 1].revents == 0) continue;
      const ssize_t n = read(open[i].stream.fd, buffer, sizeof(buffer));
      if (n > 0) {
        open[i].partial.append(buffer, static_cast<size_t>(n));
        open[i].EmitLines();
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        open[i].Finish();
        open.erase(open.begin() + static_cast<ptrdiff_t>(i));
      }
    }
  }
  for (Open& o : open) o.Finish();
}

}  // namespace came::launch
