// CUDA device discovery that works on machines without a GPU.
#pragma once

namespace came::cuda {

// Returns the number of usable CUDA devices; 0 when there is no driver or no device.
int DeviceCount();

}  // namespace came::cuda
