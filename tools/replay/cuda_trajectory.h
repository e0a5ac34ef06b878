// Runs a golden case through the CUDA kernels (CudaCame) on device 0, like RunCpu does through
// the CPU kernels. Builds without CUDA get a stand-in that reports why it cannot run.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "tools/replay/case_io.h"
#include "tools/replay/trajectory.h"

namespace came {

// Returns "" when the CUDA kernels can run here, else a one-line reason ("no CUDA device is
// present", or that this build has no CUDA kernels).
std::string CudaUnavailableReason();

// Runs the case through CudaCame::Step with gradients given to the kernels in `grad_dtype`
// (rounded from the case's values). With `graph`, every step after the first is replayed from
// one CUDA graph captured at step 2 (the gradient buffer is rewritten in place), so the
// trajectory must equal the eager one bit for bit. Unavailable when CudaUnavailableReason()
// is not empty; Internal for a CUDA error.
absl::StatusOr<Trajectory> RunCuda(const GoldenCase& c, DType grad_dtype = DType::kFloat32,
                                   bool graph = false);

}  // namespace came
