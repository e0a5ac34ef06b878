// The CPU loops built for the generic instruction set (flags in kernels/CMakeLists.txt).
#include <array>

#define CAME_LOOPS_NS generic
#define CAME_LOOPS_ISA "generic"
#include "kernels/cpu_loops.inc"

namespace came::cpu {

const CpuLoops& GenericLoops() {
  static const CpuLoops loops = generic::MakeLoops();
  return loops;
}

}  // namespace came::cpu
