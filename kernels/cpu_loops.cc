#include "kernels/cpu_loops.h"

namespace came::cpu {

const CpuLoops& GetCpuLoops() {
  static const CpuLoops& best = [] () -> const CpuLoops& {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return Avx512Loops();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Avx2Loops();
    return GenericLoops();
  }();
  return best;
}

}  // namespace came::cpu
