// The stand-in for builds without CUDA (CAME_WITH_CUDA OFF).
#include "tools/replay/cuda_trajectory.h"

namespace came {

std::string CudaUnavailableReason() {
  return "this build has no CUDA kernels (nvcc was not found when it was configured)";
}

absl::StatusOr<Trajectory> RunCuda(const GoldenCase&, DType, bool) {
  return absl::UnavailableError(CudaUnavailableReason());
}

}  // namespace came
