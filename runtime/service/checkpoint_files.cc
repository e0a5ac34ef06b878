#include "runtime/service/checkpoint_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "runtime/service/checkpoint_retention.h"

namespace came::service {
namespace {

absl::Status ErrnoError(std::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(std::string(what), " ", path, ": ", std::strerror(errno)));
}

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status FsyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open folder", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync folder", dir);
  return absl::OkStatus();
}

}  // namespace

std::string CheckpointId(int64_t step) { return absl::StrFormat("step-%012d", step); }

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter++);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("cannot create", tmp);
  absl::Status status = WriteAll(fd, contents, tmp);
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError("cannot fsync", tmp);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError("cannot close", tmp);
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = ErrnoError("cannot rename to", path);
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  return FsyncDirectory(dir.empty() ? "." : dir);
}

absl::Status CreateDirectories(const std::string& path) {
  std::filesystem::path p;
  for (const auto& part : std::filesystem::path(path)) {
    p /= part;
    if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoError("cannot create", p.string());
  }
  if (!std::filesystem::is_directory(path))
    return absl::InternalError(absl::StrCat("cannot create ", path, ": not a folder"));
  return absl::OkStatus();
}

namespace {

class RealStorage : public CheckpointStorage {
 public:
  absl::Status CreateDirectories(const std::string& path) override {
    return service::CreateDirectories(path);
  }
  absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) override {
    return service::WriteFileAtomically(path, contents);
  }
  absl::Status Prune(const std::string& checkpoint_dir, int keep) override {
    return PruneCheckpoints(checkpoint_dir, keep);
  }
};

}  // namespace

CheckpointStorage* RealCheckpointStorage() {
  static RealStorage* storage = new RealStorage;
  return storage;
}

std::optional<CheckpointInfo> FindLatestCheckpoint(const std::string& checkpoint_dir) {
  std::optional<CheckpointInfo> latest;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(checkpoint_dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    absl::string_view digits = name;
    int64_t step = 0;
    if (!absl::ConsumePrefix(&digits, "step-") || !absl::SimpleAtoi(digits, &step) ||
        name != CheckpointId(step)) {
      continue;
    }
    const std::filesystem::path manifest = it->path() / kManifestFileName;
    if (!std::filesystem::is_regular_file(manifest, ec)) continue;
    if (!latest || step > latest->step) {
      latest = CheckpointInfo{name, step, it->path().string(), manifest.string()};
    }
  }
  return latest;
}

}  // namespace came::service
