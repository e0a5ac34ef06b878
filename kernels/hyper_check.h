// The one check of CAME's hyperparameters, shared by every entry point: the engine
// (ShardedCame), came-rankd's Attach and Step, the coordinator, and the C ABI behind
// came.CAME. Depends on the standard library only.
#pragma once

#include <string>

#include "kernels/came_math.h"

namespace came {

// Returns "" when a group's hyperparameters are usable, else what is wrong ("eps must be
// > 0, got eps1=0"): every value finite, lr >= 0, eps1 > 0 and eps2 > 0 (eps = 0 makes the
// factored statistics of an all-zero row 0 and its update NaN), clip_threshold > 0, each
// beta in [0, 1), weight_decay >= 0.
std::string HyperError(const CameHyper& h);

}  // namespace came
