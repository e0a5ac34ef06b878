#include "runtime/comm/file_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace came::comm {
namespace {

constexpr size_t kMaxFileName = 255;

absl::Status ErrnoStatus(std::string_view what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(std::string(what), " ", path, ": ", std::strerror(errno)));
}

// Escapes a key into a file name: [A-Za-z0-9._-] stay, every other byte becomes %XX.
std::string EscapeKey(std::string_view key) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out = "k.";
  for (unsigned char c : key) {
    if (std::isalnum(c) || c == '.' || c == '_' || c == '-') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// Reads a whole file. Returns nullopt when it does not exist.
absl::StatusOr<std::optional<std::string>> ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::optional<std::string>();
    return ErrnoStatus("cannot open", path);
  }
  std::string data;
  char buf[4096];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status status = ErrnoStatus("cannot read", path);
      ::close(fd);
      return status;
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return std::optional<std::string>(std::move(data));
}

// Holds an exclusive flock on a file for its lifetime.
class FileLock {
 public:
  static absl::StatusOr<FileLock> Acquire(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("cannot open lock file", path);
    while (::flock(fd, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      absl::Status status = ErrnoStatus("cannot lock", path);
      ::close(fd);
      return status;
    }
    return FileLock(fd);
  }
  FileLock(FileLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  FileLock& operator=(FileLock&&) = delete;
  ~FileLock() {
    if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
  }

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FileStore>> FileStore::Create(std::string_view dir) {
  if (dir.empty()) return absl::InvalidArgumentError("FileStore needs a directory");
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(dir), ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create FileStore directory ", std::string(dir), ": ", ec.message()));
  }
  const std::string path(dir);
  if (::access(path.c_str(), W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("FileStore directory ", std::string(dir),
                                                      " is not writable: ", std::strerror(errno)));
  }
  return std::unique_ptr<FileStore>(new FileStore(path));
}

absl::StatusOr<std::string> FileStore::PathOf(std::string_view key) const {
  std::string name = EscapeKey(key);
  if (name.size() > kMaxFileName) {
    return absl::InvalidArgumentError(absl::StrCat("FileStore key too long (", key.size(),
                                                   " bytes): ", std::string(key.substr(0, 64))));
  }
  return absl::StrCat(dir_, "/", name);
}

absl::Status FileStore::WriteAtomically(const std::string& path, std::string_view value) const {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = absl::StrCat(dir_, "/.tmp.", ::getpid(), ".",
                                       counter.fetch_add(1, std::memory_order_relaxed));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot create", tmp);
  size_t done = 0;
  while (done < value.size()) {
    const ssize_t n = ::write(fd, value.data() + done, value.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status status = ErrnoStatus("cannot write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return status;
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    absl::Status status = ErrnoStatus("cannot close", tmp);
    ::unlink(tmp.c_str());
    return status;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status status = ErrnoStatus("cannot rename to", path);
    ::unlink(tmp.c_str());
    return status;
  }
  return absl::OkStatus();
}

absl::Status FileStore::Set(std::string_view key, std::string_view value) {
  absl::StatusOr<std::string> path = PathOf(key);
  if (!path.ok()) return path.status();
  return WriteAtomically(*path, value);
}

absl::StatusOr<std::string> FileStore::Get(std::string_view key, absl::Duration timeout) {
  absl::StatusOr<std::string> path = PathOf(key);
  if (!path.ok()) return path.status();
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration sleep = absl::Milliseconds(1);
  while (true) {
    absl::StatusOr<std::optional<std::string>> data = ReadFile(*path);
    if (!data.ok()) return data.status();
    if (data->has_value()) return std::move(**data);
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "store key '", std::string(key), "' not set within ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(std::min(sleep, left));
    sleep = std::min(sleep * 2, absl::Milliseconds(20));
  }
}

absl::StatusOr<int64_t> FileStore::Add(std::string_view key, int64_t delta) {
  absl::StatusOr<std::string> path = PathOf(key);
  if (!path.ok()) return path.status();
  absl::StatusOr<FileLock> lock = FileLock::Acquire(absl::StrCat(dir_, "/.lock"));
  if (!lock.ok()) return lock.status();
  absl::StatusOr<std::optional<std::string>> data = ReadFile(*path);
  if (!data.ok()) return data.status();
  int64_t value = 0;
  if (data->has_value() && !(*data)->empty() && !absl::SimpleAtoi(**data, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("store key '", std::string(key), "' holds a non-integer value"));
  }
  value += delta;
  absl::Status written = WriteAtomically(*path, absl::StrCat(value));
  if (!written.ok()) return written;
  return value;
}

}  // namespace came::comm
