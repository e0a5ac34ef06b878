// Runs a golden case through the sharded engine: W ranks as threads (LocalCluster), every
// rank given the case's gradient, the tensor planned with alignment 1 so that chunk
// boundaries fall mid-row.
#pragma once

#include "absl/status/statusor.h"
#include "tools/replay/case_io.h"
#include "tools/replay/trajectory.h"

namespace came {

absl::StatusOr<Trajectory> RunSharded(const GoldenCase& c, int world_size, int threads_per_rank);

}  // namespace came
