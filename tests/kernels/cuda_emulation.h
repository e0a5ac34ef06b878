// A host emulation of the CUDA features kernels/cuda/phase_kernels.cuh uses, so that the
// kernels themselves (their index arithmetic, masks, vector and scalar paths, warp and block
// reductions) run on a machine without a GPU: every thread of a block is an OS thread,
// __syncthreads is a barrier of the block, a warp shuffle goes through a per-warp buffer
// between two barriers of the warp, and __shared__ variables are function statics (one
// block runs at a time). Slow, and only for small tests. Include it before phase_kernels.cuh
// and never in a file nvcc compiles.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emulation.h is for the host compiler"
#endif

#include <math.h>

#include <algorithm>
#include <array>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace came::cuda::emulation {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

struct Block {
  explicit Block(unsigned threads)
      : sync(static_cast<std::ptrdiff_t>(threads)), lanes((threads + 31) / 32) {
    for (unsigned w = 0; w < lanes.size(); ++w) {
      const unsigned n = std::min(32u, threads - 32 * w);
      warp_sync.push_back(std::make_unique<std::barrier<>>(static_cast<std::ptrdiff_t>(n)));
    }
  }
  std::barrier<> sync;
  std::vector<std::unique_ptr<std::barrier<>>> warp_sync;
  std::vector<std::array<double, 32>> lanes;
};

inline thread_local Dim3 thread_idx, block_idx, block_dim;
inline thread_local Block* current = nullptr;

// Runs kernel() for `grid` blocks of `threads` threads, one block after the other.
inline void Launch(unsigned grid, unsigned threads, const std::function<void()>& kernel) {
  Block block(threads);
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      thread_idx.x = t;
      block_dim.x = threads;
      current = &block;
      for (unsigned b = 0; b < grid; ++b) {
        block_idx.x = b;
        kernel();
        block.sync.arrive_and_wait();  // the next block starts when this one is done
      }
    });
  for (std::thread& t : pool) t.join();
}

inline void SyncThreads() { current->sync.arrive_and_wait(); }

inline double ShflXor(unsigned /*mask*/, double v, int offset) {
  const unsigned lane = thread_idx.x % 32, warp = thread_idx.x / 32;
  current->lanes[warp][lane] = v;
  current->warp_sync[warp]->arrive_and_wait();
  const double other = current->lanes[warp][lane ^ static_cast<unsigned>(offset)];
  current->warp_sync[warp]->arrive_and_wait();
  return other;
}

}  // namespace came::cuda::emulation

#define threadIdx (::came::cuda::emulation::thread_idx)
#define blockIdx (::came::cuda::emulation::block_idx)
#define blockDim (::came::cuda::emulation::block_dim)
#define __syncthreads() ::came::cuda::emulation::SyncThreads()
#define __shfl_xor_sync(mask, v, o) ::came::cuda::emulation::ShflXor(mask, v, o)
