// File access for checkpoints (Note [Checkpoint file safety]): what a reader opens is a
// regular file (no symlink, FIFO or device) read no further than a cap; what a writer
// creates is new (O_EXCL, O_NOFOLLOW), private (0600, folders 0700), fsynced, renamed into
// place, and the folder fsynced after the rename.
//
// Note [Checkpoint file safety]
// A checkpoint folder may be shared storage that other users or a damaged disk can change.
// So a reader trusts nothing it reads: a path comes only from a plain file name in the
// manifest (no '/', no "..") joined to the manifest's folder; a shard is opened with
// O_NOFOLLOW | O_NONBLOCK (a FIFO would otherwise block the open) and must be a regular file
// whose size is the manifest's; every length and offset in a header is checked before use.
// Every problem is DataLoss naming the file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <openssl/evp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace came {

// An open file descriptor, closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return fd_; }
  // Gives up ownership and returns the descriptor.
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// A checkpoint file opened for reading.
struct ReadableFile {
  Fd fd;
  std::string path;
  uint64_t size = 0;
};

// Opens path for reading: NotFound when it does not exist; DataLoss naming it when it is a
// symlink or not a regular file.
absl::StatusOr<ReadableFile> OpenRegularFile(const std::string& path);

// Reads exactly n bytes at offset; DataLoss naming the file when it ends first.
absl::Status ReadAt(const ReadableFile& f, uint64_t offset, void* out, uint64_t n);

// Returns the whole file when it is at most max_bytes long (DataLoss otherwise).
absl::StatusOr<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes);

// Returns the SHA-256 (lowercase hex) of data.
std::string Sha256Hex(std::string_view data);
// An incremental SHA-256: NewSha256, EVP_DigestUpdate, then FinishSha256Hex (which frees it).
EVP_MD_CTX* NewSha256();
std::string FinishSha256Hex(EVP_MD_CTX* md);

// Checks that name is a plain file name: not empty, at most 255 bytes, no '/' or NUL, not
// "." or "..".
bool IsPlainFileName(std::string_view name);

// Creates folder path (and missing parents) with mode 0700; an existing folder is kept as
// it is. InternalError naming it on failure.
absl::Status CreatePrivateDirectories(const std::string& path);

// Fsyncs a folder (after a rename in it).
absl::Status FsyncDirectory(const std::string& dir);

// Creates a new file next to `path` for writing (O_EXCL | O_NOFOLLOW, mode 0600) under a
// name no other writer uses; returns its descriptor and sets *tmp_path.
absl::StatusOr<Fd> CreateTemporaryFile(const std::string& path, std::string* tmp_path);

// Fsyncs and closes fd, renames tmp_path to path and fsyncs the folder; on failure removes
// tmp_path.
absl::Status CommitTemporaryFile(Fd fd, const std::string& tmp_path, const std::string& path);

// Writes all of data to fd (EINTR and short writes are retried).
absl::Status WriteAll(int fd, const void* data, size_t n, const std::string& path);

}  // namespace came
