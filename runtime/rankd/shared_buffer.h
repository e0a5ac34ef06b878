// SharedBuffer: a named POSIX shared-memory mapping, the zero-copy channel between a trainer
// and its rankd on a CPU host. rankd creates (and on destruction unlinks) the segment; the
// trainer opens it by name and maps the same pages, so neither side copies a tensor.
// Thread-safety: the object is immutable after creation; the bytes are shared memory.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace came::rankd {

class SharedBuffer {
 public:
  // Creates a new segment of `bytes` zeroed bytes named `name` ("/came-..."), its pages
  // allocated; AlreadyExists when the name is taken, ResourceExhausted when /dev/shm has no
  // room for it, Internal for other OS errors. The segment is unlinked when the returned
  // object is destroyed.
  static absl::StatusOr<std::unique_ptr<SharedBuffer>> Create(const std::string& name,
                                                              size_t bytes);
  // Maps an existing segment (a client). NotFound when there is none; InvalidArgument when
  // it is smaller than `bytes`.
  static absl::StatusOr<std::unique_ptr<SharedBuffer>> Open(const std::string& name,
                                                            size_t bytes);
  ~SharedBuffer();
  SharedBuffer(const SharedBuffer&) = delete;
  SharedBuffer& operator=(const SharedBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }

 private:
  SharedBuffer(std::string name, void* data, size_t size, bool owner)
      : name_(std::move(name)), data_(data), size_(size), owner_(owner) {}
  std::string name_;
  void* data_;
  size_t size_;
  bool owner_;
};

}  // namespace came::rankd
