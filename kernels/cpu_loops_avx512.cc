// The CPU loops built for the avx512 instruction set (flags in kernels/CMakeLists.txt).
#include <array>

#define CAME_LOOPS_NS avx512
#define CAME_LOOPS_ISA "avx512"
#include "kernels/cpu_loops.inc"

namespace came::cpu {

const CpuLoops& Avx512Loops() {
  static const CpuLoops loops = avx512::MakeLoops();
  return loops;
}

}  // namespace came::cpu
