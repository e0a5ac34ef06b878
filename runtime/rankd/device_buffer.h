// DeviceBuffer: a TrainerBuffer in the memory of one CUDA device, exported to the trainer
// through a CUDA IPC handle (Note [Trainer buffers] in trainer_buffer.h). Built only when
// CAME_WITH_CUDA is ON; plain C++ against the shared CUDA runtime (no driver library, so
// came-rankd still starts on a machine without a GPU).
//
// Ownership: the DeviceBuffer owns the allocation and frees it when destroyed; the trainer
// must have closed its IPC mapping by then (it detaches first). Thread-safety: immutable;
// Create and the destructor make the buffer's device current on the calling thread.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/rankd/trainer_buffer.h"

namespace came::rankd {

class DeviceBuffer final : public TrainerBuffer {
 public:
  // Allocates `bytes` zeroed bytes on `device` and their IPC handle. ResourceExhausted naming
  // the bytes asked for and the device's free bytes when they do not fit; CheckDevice's
  // errors for a missing device; Internal for other CUDA errors.
  static absl::StatusOr<std::unique_ptr<DeviceBuffer>> Create(int device, size_t bytes);
  ~DeviceBuffer() override;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const override { return data_; }
  size_t size() const override { return size_; }
  std::string name() const override { return ""; }
  int device() const override { return device_; }
  std::string ipc_handle() const override { return handle_; }

 private:
  DeviceBuffer(int device, void* data, size_t size, std::string handle)
      : device_(device), data_(data), size_(size), handle_(std::move(handle)) {}
  int device_;
  void* data_;
  size_t size_;
  std::string handle_;
};

// Returns the number of CUDA devices (0 when the driver is absent or reports none).
int CudaDeviceCount();

}  // namespace came::rankd
