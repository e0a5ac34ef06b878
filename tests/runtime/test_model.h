// A model-like tensor list for the engine tests, with deterministic initial values and
// per-rank gradients: 1-D, 2-D, 3-D and 4-D tensors, tiny ones, one that spans three or more
// chunks and ones split mid-row when planned with alignment 1 over up to 5 ranks.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kernels/came_math.h"
#include "runtime/shard_plan.h"

namespace came::testing {

inline std::vector<TensorSpec> TestModel(DType dtype = DType::kFloat32) {
  return {
      {"embed", {150, 16}, dtype, 0},  {"embed_bias", {16}, dtype, 1},
      {"conv", {3, 5, 7}, dtype, 0},  {"tiny", {1}, dtype, 1},
      {"one_by_one", {1, 1}, dtype, 0}, {"wide", {5, 123}, dtype, 0},
      {"ln", {13}, dtype, 1},         {"block", {2, 3, 4, 5}, dtype, 0},
      {"column", {9, 1}, dtype, 0},
  };
}

// Two groups as torch users set them: decay on matrices, none on biases and norms.
inline std::vector<CameHyper> TestGroups() {
  CameHyper matrices;
  matrices.lr = 0.01;
  matrices.weight_decay = 0.01;
  CameHyper vectors;
  vectors.lr = 0.02;
  vectors.clip_threshold = 0.5;
  return {matrices, vectors};
}

// Returns a deterministic value in [-1, 1) from the inputs (splitmix64).
inline double Noise(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  uint64_t x = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^
               (c + 0x94D049BB133111EBull) * 0x2545F4914F6CDD1Dull ^ d;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<double>(x >> 11) / static_cast<double>(1ull << 52) - 1.0;
}

inline std::vector<std::vector<double>> InitialParams(const std::vector<TensorSpec>& specs) {
  std::vector<std::vector<double>> out;
  for (size_t t = 0; t < specs.size(); ++t) {
    int64_t n = 1;
    for (int64_t d : specs[t].shape) n *= d;
    std::vector<double> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = Noise(7, t, i, 0);
    out.push_back(std::move(v));
  }
  return out;
}

// Rank `rank`'s gradient of tensor t at `step` (1-based): a shared signal plus per-rank noise,
// with a per-tensor scale so the tensors differ in magnitude.
inline double Grad(int rank, int step, int t, int64_t i) {
  const double scale = std::pow(10.0, (t % 4) - 2);
  return scale * (Noise(step, t, i, 1) + 0.7 * Noise(step, t, i, 100 + rank));
}

// The mean over `world` ranks of Grad, in double.
inline double MeanGrad(int world, int step, int t, int64_t i) {
  double s = 0.0;
  for (int r = 0; r < world; ++r) s += Grad(r, step, t, i);
  return s / world;
}

}  // namespace came::testing
