#include "runtime/checkpoint_io.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace came {
namespace {

absl::Status Os(const char* what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

std::string ParentOf(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

}  // namespace

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<ReadableFile> OpenRegularFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("cannot read ", path, ": no such file"));
    if (errno == ELOOP)
      return absl::DataLossError(absl::StrCat(path, " is a symbolic link; checkpoint files must be regular files"));
    return absl::DataLossError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  ReadableFile f{Fd(fd), path, 0};
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::DataLossError(absl::StrCat("cannot stat ", path));
  if (!S_ISREG(st.st_mode))
    return absl::DataLossError(absl::StrCat(path, " is not a regular file (a FIFO, device or folder)"));
  f.size = static_cast<uint64_t>(st.st_size);
  return f;
}

absl::Status ReadAt(const ReadableFile& f, uint64_t offset, void* out, uint64_t n) {
  char* p = static_cast<char*>(out);
  while (n > 0) {
    const ssize_t r = ::pread(f.fd.get(), p, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return absl::DataLossError(absl::StrCat("cannot read ", f.path, ": ", std::strerror(errno)));
    }
    if (r == 0) return absl::DataLossError(absl::StrCat(f.path, " is truncated"));
    p += r;
    offset += static_cast<uint64_t>(r);
    n -= static_cast<uint64_t>(r);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes) {
  absl::StatusOr<ReadableFile> f = OpenRegularFile(path);
  if (!f.ok()) return f.status();
  if (f->size > max_bytes)
    return absl::DataLossError(absl::StrCat(path, " is ", f->size, " bytes; the limit is ", max_bytes));
  std::string data(f->size, '\0');
  if (absl::Status s = ReadAt(*f, 0, data.data(), data.size()); !s.ok()) return s;
  return data;
}

std::string Sha256Hex(std::string_view data) {
  EVP_MD_CTX* md = NewSha256();
  EVP_DigestUpdate(md, data.data(), data.size());
  return FinishSha256Hex(md);
}

EVP_MD_CTX* NewSha256() {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_DigestInit_ex(md, EVP_sha256(), nullptr);
  return md;
}

std::string FinishSha256Hex(EVP_MD_CTX* md) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(md, digest, &len);
  EVP_MD_CTX_free(md);
  static const char* kDigits = "0123456789abcdef";
  std::string s;
  for (unsigned int i = 0; i < len; ++i) {
    s.push_back(kDigits[digest[i] >> 4]);
    s.push_back(kDigits[digest[i] & 15]);
  }
  return s;
}

bool IsPlainFileName(std::string_view name) {
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

absl::Status CreatePrivateDirectories(const std::string& path) {
  std::filesystem::path p;
  for (const auto& part : std::filesystem::path(path)) {
    p /= part;
    if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST) return Os("cannot create folder", p.string());
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return absl::InternalError(absl::StrCat(path, " is not a folder"));
  return absl::OkStatus();
}

absl::Status FsyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Os("cannot open folder", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Os("cannot fsync folder", dir);
  return absl::OkStatus();
}

absl::StatusOr<Fd> CreateTemporaryFile(const std::string& path, std::string* tmp_path) {
  static std::atomic<uint64_t> counter{0};
  *tmp_path = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter++);
  const int fd =
      ::open(tmp_path->c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return Os("cannot create", *tmp_path);
  return Fd(fd);
}

absl::Status CommitTemporaryFile(Fd fd, const std::string& tmp_path, const std::string& path) {
  absl::Status s;
  if (::fsync(fd.get()) != 0) s = Os("cannot fsync", tmp_path);
  if (::close(fd.release()) != 0 && s.ok()) s = Os("cannot close", tmp_path);
  if (s.ok() && ::rename(tmp_path.c_str(), path.c_str()) != 0) s = Os("cannot rename to", path);
  if (!s.ok()) {
    ::unlink(tmp_path.c_str());
    return s;
  }
  return FsyncDirectory(ParentOf(path));
}

absl::Status WriteAll(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Os("cannot write", path);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

}  // namespace came
