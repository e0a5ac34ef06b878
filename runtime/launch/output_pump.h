// OutputPump: one thread that reads every child's stdout and stderr pipe with poll() and
// writes each line, prefixed ("[trainer 0] "), to the launcher's own stdout or stderr and,
// optionally, unprefixed to a log file.
//
// Lines are written whole, one write() each, so lines of different children do not mix
// within a line. A line longer than kMaxLineBytes is cut into pieces of that size. A last
// line without a newline is written (with one) when its pipe reaches end of file or when
// the pump closes.
//
// Thread-safety: Add and Close may be called from any thread. Callbacks run on the pump
// thread and must not call back into the pump.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace came::launch {

struct PumpStream {
  int fd = -1;         // the read end of a child's pipe; owned by the pump once added
  int out_fd = -1;     // where prefixed lines go (not owned)
  int log_fd = -1;     // where unprefixed lines also go, -1 for none (not owned)
  std::string prefix;  // written before each line on out_fd
  std::function<void(absl::string_view line)> on_line;  // each line, without its newline
  std::function<void()> on_close;                       // once, when the pipe is done
};

class OutputPump {
 public:
  static constexpr size_t kMaxLineBytes = 64 * 1024;

  // Starts the pump thread.
  static absl::StatusOr<std::unique_ptr<OutputPump>> Create();
  // Closes with no time left to drain (Close(absl::Now())) if Close was not called.
  ~OutputPump();

  OutputPump(const OutputPump&) = delete;
  OutputPump& operator=(const OutputPump&) = delete;

  // Starts reading `stream.fd`, which is made non-blocking.
  void Add(PumpStream stream);

  // Keeps pumping until every stream has reached end of file or `drain_deadline` passes
  // (a grandchild may hold a pipe open), then writes partial lines, closes the remaining
  // pipes and joins the thread. Later calls do nothing.
  void Close(absl::Time drain_deadline);

 private:
  struct Open;
  OutputPump(int wake_read, int wake_write);
  void Run();
  void Wake();

  const int wake_read_;
  const int wake_write_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<PumpStream> added_ ABSL_GUARDED_BY(mu_);  // not yet picked up by Run
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool joined_ = false;  // touched only by Close
};

// Writes all of `data` to `fd`, retrying on EINTR and short writes; gives up silently on
// other errors (a closed terminal must not stop the launcher).
void WriteAll(int fd, absl::string_view data);

}  // namespace came::launch
