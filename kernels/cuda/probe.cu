// Device discovery for the CUDA paths. The fused CAME kernels will live beside this file;
// they share kernels/came_math.h with the CPU loops.
#include "kernels/cuda/probe.h"

#include <cuda_runtime.h>

namespace came::cuda {

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

}  // namespace came::cuda
