// TrainerBuffer: a flat parameter or gradient buffer that rankd allocates and its trainer
// maps without copying (Note [Trainer buffers]). RankCore owns one per buffer of an
// attachment and frees it on Detach.
//
// Note [Trainer buffers]
// On a CPU host the buffer is POSIX shared memory (SharedBuffer): the trainer opens it by
// name. With `came-rankd --device N` it is device memory of CUDA device N (DeviceBuffer,
// built only when CAME_WITH_CUDA is ON): the trainer opens the CUDA IPC handle
// (cudaIpcOpenMemHandle) and gets a device pointer to the same memory. Either way the
// trainer's tensors become views of it; rankd reads the gradients and writes the updated
// parameters in place, and answers Step only once the device is done with both (the
// engine synchronizes its stream before it returns).
//
// Thread-safety: immutable after creation (the bytes are shared with the trainer).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace came::rankd {

class TrainerBuffer {
 public:
  virtual ~TrainerBuffer() = default;
  // The first byte: a host pointer, or a device pointer when device() >= 0.
  virtual void* data() const = 0;
  virtual size_t size() const = 0;
  // The shared-memory name ("" for device memory).
  virtual std::string name() const = 0;
  // The CUDA device ordinal, or -1 for host memory.
  virtual int device() const = 0;
  // The cudaIpcMemHandle_t bytes of device memory ("" for host memory).
  virtual std::string ipc_handle() const = 0;
};

// Returns whether this build can allocate device buffers (CAME_WITH_CUDA).
bool CudaBuilt();

// Returns OK when CUDA device `device` exists; FailedPrecondition "this build has no CUDA
// support" without CUDA, FailedPrecondition "no CUDA device is present" when the driver
// reports none (or is absent), InvalidArgument when `device` is out of range. Never crashes
// on a machine without a GPU (cudart reports the missing driver).
absl::Status CheckDevice(int device);

// Creates a zeroed buffer of `bytes`: shared memory named `name` when `device` < 0
// (SharedBuffer::Create's errors), else device memory of `device` (DeviceBuffer::Create's
// errors; FailedPrecondition in a build without CUDA).
absl::StatusOr<std::unique_ptr<TrainerBuffer>> CreateTrainerBuffer(int device,
                                                                   const std::string& name,
                                                                   size_t bytes);

}  // namespace came::rankd
