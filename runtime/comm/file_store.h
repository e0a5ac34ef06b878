// FileStore: a Store in a directory shared by the processes of one host (Note [FileStore]).
// Thread-safe and process-safe. The directory is not removed on destruction: whoever made it
// (the launcher, a test) cleans it up.
//
// Note [FileStore]
// Each key is one file named "k.<escaped key>". Set writes a unique temporary file and
// rename(2)s it over the key's file, so a reader sees the old value or the new one, never a
// torn one. Add holds flock(2) on "<dir>/.lock" around its read-modify-write, which makes it
// atomic across processes and across threads (each Add opens its own file description). Get
// polls for the key's file with a short, growing sleep (1 ms up to 20 ms) until its deadline.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "runtime/comm/store.h"

namespace came::comm {

class FileStore final : public Store {
 public:
  // Opens (creating it and its parents if missing) the directory `dir`. InvalidArgument for
  // an empty path; FailedPrecondition when it cannot be created or written.
  static absl::StatusOr<std::unique_ptr<FileStore>> Create(std::string_view dir);

  absl::Status Set(std::string_view key, std::string_view value) override;
  absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) override;
  absl::StatusOr<int64_t> Add(std::string_view key, int64_t delta) override;

  const std::string& dir() const { return dir_; }

 private:
  explicit FileStore(std::string dir) : dir_(std::move(dir)) {}

  // Returns the path of key's file, or InvalidArgument when the key is too long for a name.
  absl::StatusOr<std::string> PathOf(std::string_view key) const;
  // Writes value to a temporary file and renames it to path.
  absl::Status WriteAtomically(const std::string& path, std::string_view value) const;

  const std::string dir_;
};

}  // namespace came::comm
