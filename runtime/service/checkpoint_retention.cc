#include "runtime/service/checkpoint_retention.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>

#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "runtime/service/checkpoint_files.h"

namespace came::service {
namespace {

namespace fs = std::filesystem;

// The step folders under dir: step -> whether its manifest exists.
std::map<int64_t, bool> StepFolders(const std::string& dir) {
  std::map<int64_t, bool> folders;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    absl::string_view digits = name;
    int64_t step = 0;
    if (!absl::ConsumePrefix(&digits, "step-") || !absl::SimpleAtoi(digits, &step) ||
        name != CheckpointId(step) || !it->is_directory(ec)) {
      continue;
    }
    folders[step] = fs::is_regular_file(it->path() / kManifestFileName, ec);
  }
  return folders;
}

absl::Status SyncFolder(const fs::path& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("open ", dir.string(), ": ", std::strerror(errno)));
  const int rc = fsync(fd);
  const int saved = errno;
  close(fd);
  if (rc != 0) return absl::InternalError(absl::StrCat("fsync ", dir.string(), ": ", std::strerror(saved)));
  return absl::OkStatus();
}

// Unpublishes the checkpoint (its manifest goes first, durably), then removes the folder.
absl::Status RemoveCheckpoint(const fs::path& folder, bool committed) {
  std::error_code ec;
  if (committed) {
    const fs::path manifest = folder / kManifestFileName;
    fs::rename(manifest, folder / "manifest.json.deleted", ec);
    if (ec) return absl::InternalError(absl::StrCat("rename ", manifest.string(), ": ", ec.message()));
    if (absl::Status s = SyncFolder(folder); !s.ok()) return s;
  }
  fs::remove_all(folder, ec);
  if (ec) return absl::InternalError(absl::StrCat("remove ", folder.string(), ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

std::vector<int64_t> CommittedCheckpointSteps(const std::string& checkpoint_dir) {
  std::vector<int64_t> steps;
  for (const auto& [step, committed] : StepFolders(checkpoint_dir)) {
    if (committed) steps.push_back(step);
  }
  return steps;
}

absl::Status PruneCheckpoints(const std::string& checkpoint_dir, int keep) {
  if (keep < 1) return absl::InvalidArgumentError("keep must be >= 1");
  const std::map<int64_t, bool> folders = StepFolders(checkpoint_dir);
  std::vector<int64_t> committed;
  for (const auto& [step, is_committed] : folders) {
    if (is_committed) committed.push_back(step);
  }
  if (committed.empty()) return absl::OkStatus();
  const int64_t latest = committed.back();
  const int64_t oldest_kept =
      committed[committed.size() > static_cast<size_t>(keep) ? committed.size() - keep : 0];
  absl::Status first;
  for (const auto& [step, is_committed] : folders) {
    const bool drop = is_committed ? step < oldest_kept : step < latest;
    if (!drop) continue;
    absl::Status s = RemoveCheckpoint(fs::path(checkpoint_dir) / CheckpointId(step), is_committed);
    if (first.ok()) first = s;
  }
  return first;
}

}  // namespace came::service
