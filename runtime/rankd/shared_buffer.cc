#include "runtime/rankd/shared_buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace came::rankd {
namespace {

absl::Status OsError(const std::string& what, const std::string& name) {
  const int e = errno;
  const std::string msg = absl::StrCat(what, " ", name, ": ", std::strerror(e));
  if (e == EEXIST) return absl::AlreadyExistsError(msg);
  if (e == ENOENT) return absl::NotFoundError(msg);
  return absl::InternalError(msg);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SharedBuffer>> SharedBuffer::Create(const std::string& name,
                                                                   size_t bytes) {
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos)
    return absl::InvalidArgumentError(absl::StrCat("bad shared-memory name '", name, "'"));
  const size_t map_bytes = bytes == 0 ? 1 : bytes;
  // Refuse at once what /dev/shm cannot hold: a sparse segment larger than the tmpfs would
  // otherwise kill the trainer with SIGBUS on first touch (Docker's default is 64 MiB).
  struct statvfs fs;
  if (statvfs("/dev/shm", &fs) == 0) {
    const unsigned long long avail =
        static_cast<unsigned long long>(fs.f_bavail) * static_cast<unsigned long long>(fs.f_frsize);
    if (map_bytes > avail)
      return absl::ResourceExhaustedError(absl::StrCat(
          "shared memory ", name, " needs ", map_bytes, " bytes but /dev/shm has ", avail,
          " free (in Docker, raise --shm-size)"));
  }
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) return OsError("cannot create shared memory", name);
  // Allocate the pages now, so running out of memory is an error here and not a SIGBUS later.
  if (const int e = posix_fallocate(fd, 0, static_cast<off_t>(map_bytes)); e != 0) {
    close(fd);
    shm_unlink(name.c_str());
    if (e == ENOSPC)
      return absl::ResourceExhaustedError(absl::StrCat(
          "shared memory ", name, ": /dev/shm has no room for ", map_bytes,
          " bytes (in Docker, raise --shm-size)"));
    errno = e;
    return OsError("cannot allocate shared memory", name);
  }
  void* p = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    absl::Status s = OsError("cannot map shared memory", name);
    shm_unlink(name.c_str());
    return s;
  }
  return std::unique_ptr<SharedBuffer>(new SharedBuffer(name, p, bytes, /*owner=*/true));
}

absl::StatusOr<std::unique_ptr<SharedBuffer>> SharedBuffer::Open(const std::string& name,
                                                                 size_t bytes) {
  const int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) return OsError("cannot open shared memory", name);
  struct stat st;
  if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < bytes) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("shared memory ", name, " is smaller than ", bytes, " bytes"));
  }
  const size_t map_bytes = bytes == 0 ? 1 : bytes;
  void* p = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return OsError("cannot map shared memory", name);
  return std::unique_ptr<SharedBuffer>(new SharedBuffer(name, p, bytes, /*owner=*/false));
}

SharedBuffer::~SharedBuffer() {
  munmap(data_, size_ == 0 ? 1 : size_);
  if (owner_) shm_unlink(name_.c_str());
}

}  // namespace came::rankd
