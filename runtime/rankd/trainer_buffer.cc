#include "runtime/rankd/trainer_buffer.h"

#include "absl/strings/str_cat.h"
#include "runtime/rankd/shared_buffer.h"
#if CAME_RANKD_WITH_CUDA
#include "runtime/rankd/device_buffer.h"
#endif

namespace came::rankd {
namespace {

// Shared memory (a SharedBuffer) as a TrainerBuffer.
class HostBuffer final : public TrainerBuffer {
 public:
  explicit HostBuffer(std::unique_ptr<SharedBuffer> shm) : shm_(std::move(shm)) {}
  void* data() const override { return shm_->data(); }
  size_t size() const override { return shm_->size(); }
  std::string name() const override { return shm_->name(); }
  int device() const override { return -1; }
  std::string ipc_handle() const override { return ""; }

 private:
  std::unique_ptr<SharedBuffer> shm_;
};

}  // namespace

bool CudaBuilt() { return CAME_RANKD_WITH_CUDA != 0; }

absl::Status CheckDevice(int device) {
  if (!CudaBuilt())
    return absl::FailedPreconditionError(
        "this build has no CUDA support (rebuild with CAME_WITH_CUDA=ON, or drop --device)");
  if (device < 0)
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", device, " is negative"));
#if CAME_RANKD_WITH_CUDA
  const int count = CudaDeviceCount();
  if (count == 0)
    return absl::FailedPreconditionError(
        "no CUDA device is present (no NVIDIA driver or no GPU): drop --device to keep the "
        "buffers in host shared memory");
  if (device >= count)
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", device, " does not exist (",
                                                   count, " devices: 0 to ", count - 1, ")"));
#endif
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TrainerBuffer>> CreateTrainerBuffer(int device,
                                                                   const std::string& name,
                                                                   size_t bytes) {
  if (device < 0) {
    auto shm = SharedBuffer::Create(name, bytes);
    if (!shm.ok()) return shm.status();
    return std::make_unique<HostBuffer>(*std::move(shm));
  }
#if CAME_RANKD_WITH_CUDA
  auto buffer = DeviceBuffer::Create(device, bytes);
  if (!buffer.ok()) return buffer.status();
  return std::unique_ptr<TrainerBuffer>(*std::move(buffer));
#else
  return CheckDevice(device);
#endif
}

}  // namespace came::rankd
