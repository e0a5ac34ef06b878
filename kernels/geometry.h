// How CAME views a parameter tensor: a tensor of 2 or more dims is a batch of [n, m]
// matrices (leading dims are batch dims) whose second moment and residual are factored into
// row and column statistics; a tensor of 0 or 1 dims is not factored.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace came {

struct TensorGeometry {
  int64_t numel = 0;
  bool factored = false;
  int64_t batch = 1;  // product of the dims before the last two (factored only)
  int64_t n = 1;      // second-to-last dim: the length of a column
  int64_t m = 1;      // last dim: the length of a row

  // Returns the geometry of a tensor of this shape. Dims must be positive.
  static TensorGeometry FromShape(std::span<const int64_t> shape);

  // Row statistics (exp_avg_sq_row, exp_avg_res_row): one per row, shape [batch..., n].
  int64_t rows() const { return factored ? batch * n : 0; }
  // Column statistics (exp_avg_sq_col, exp_avg_res_col): shape [batch..., m].
  int64_t cols() const { return factored ? batch * m : 0; }
  // Entries of factored statistics this tensor keeps per kind (rows + columns).
  int64_t stats_size() const { return rows() + cols(); }
};

// Returns "[4, 6]" for {4, 6}.
std::string ShapeString(std::span<const int64_t> shape);

}  // namespace came
