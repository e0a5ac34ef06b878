// The CPU loops built for the avx2 instruction set (flags in kernels/CMakeLists.txt).
#include <array>

#define CAME_LOOPS_NS avx2
#define CAME_LOOPS_ISA "avx2"
#include "kernels/cpu_loops.inc"

namespace came::cpu {

const CpuLoops& Avx2Loops() {
  static const CpuLoops loops = avx2::MakeLoops();
  return loops;
}

}  // namespace came::cpu
