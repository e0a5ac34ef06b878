// How the CUDA kernels walk a CudaCame's slices: the chunk table (one thread block per chunk,
// one launch per phase for all slices), the workspace of per-chunk partial sums and the
// fixed-order reductions that complete them. Plain C++ with CAME_HD functions, compiled both by
// nvcc (the kernels) and by the host compiler (BuildLayout and the CPU unit test of every index
// computation, tests/kernels/cuda_layout_test.cc).
//
// Note [CUDA chunks]
// A factored slice (a range [begin, end) of a tensor viewed as batch x [n, m]) is cut into
// tiles of at most kTileRows rows of one matrix of the batch by kTileCols columns; the bands of
// rows start at multiples of kTileRows inside each matrix and the column tiles at multiples of
// kTileCols, whatever the slice's range, so a tile is the intersection of a fixed rectangle with
// [begin, end) and only tiles that intersect it exist. The block of a tile writes
//   - a row partial for every row of its band (zero where the row has no element of the slice
//     in the tile) at RowPartIndex(slice, column tile, row), and
//   - a column partial for every column of its tile (zero likewise) at
//     ColPartIndex(slice, band, column).
// A row's complete sum adds the partials of the column tiles that hold its elements, a
// column's adds those of the bands that hold its elements, always in increasing order; both
// ranges are contiguous and every tile in them exists (ReduceRowStat, ReduceColStat), so no
// partial is read that was not written in the same launch. An unfactored slice is cut into
// chunks of kFlatChunk elements (at multiples of kFlatChunk of the tensor). Every chunk also
// writes one total (sum of g^2, of u^2), added per slice in chunk order. No float atomics
// anywhere: two runs give the same bits.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/came_math.h"
#include "kernels/cuda/device_types.h"

namespace came {
struct TensorSlice;
}

namespace came::cuda {

inline constexpr int kBlockThreads = 256;
inline constexpr int kWarps = kBlockThreads / 32;
inline constexpr int64_t kTileRows = 128;
inline constexpr int64_t kTileCols = 256;  // 32 lanes x 8 columns each
inline constexpr int64_t kFlatChunk = 65536;

// What the kernels know of one slice; fixed for the life of a CudaCame.
struct SliceInfo {
  int64_t numel = 0;          // of the whole tensor
  int64_t begin = 0, end = 0;  // the slice's elements (flat, row-major)
  int64_t batch = 1, n = 1, m = 1;
  int64_t stats_offset = 0;   // into sums and factors: rows() row entries, then cols()
  int64_t row_part_offset = 0;  // into the row partials: col_tiles() * rows() entries
  int64_t col_part_offset = 0;  // into the column partials: batch * bands() * m entries
  int64_t first_chunk = 0, num_chunks = 0;
  int32_t factored = 0;
  int32_t group = 0;
  int32_t grad_dtype = 0;  // DType

  CAME_HD int64_t rows() const { return factored ? batch * n : 0; }
  CAME_HD int64_t cols() const { return factored ? batch * m : 0; }
  // Column tiles per row and bands of rows per matrix.
  CAME_HD int64_t col_tiles() const { return (m + kTileCols - 1) / kTileCols; }
  CAME_HD int64_t bands() const { return (n + kTileRows - 1) / kTileRows; }
};

// One thread block's work. Factored: rows [r0, r1) of one matrix (a whole band), columns
// [c0, min(c0 + kTileCols, m)). Unfactored: elements [r0, r1) of the tensor (c0 unused).
struct Chunk {
  int64_t slice = 0;
  int64_t r0 = 0, r1 = 0;
  int64_t c0 = 0;
};

// One block of the statistics update: one matrix of a factored slice.
struct StatBlock {
  int64_t slice = 0;
  int64_t batch = 0;
};

struct Layout {
  std::vector<SliceInfo> slices;
  std::vector<Chunk> chunks;
  std::vector<StatBlock> stat_blocks;
  int64_t stats_size = 0;     // as CpuCame::stats_size(): rows then columns of every slice
  int64_t row_part_size = 0;
  int64_t col_part_size = 0;
  int num_groups = 1;         // 1 + the largest group index
};

// Returns the chunk table, statistic offsets and workspace sizes for these slices (valid as
// CpuCame requires: begin <= end <= numel). Pointers are not looked at.
Layout BuildLayout(std::span<const TensorSlice> slices);

// Returns the device pointer table entry of a slice's buffers, with the 16-byte flag set when
// every buffer of the slice is 16-byte aligned at tensor element 0 and (factored) its rows
// hold a whole number of vectors.
SlicePointers PointersOf(const TensorSlice& s);

// Where the kernels' tables and workspace are (device memory; host memory under emulation).
struct PhaseBuffers {
  const Layout* layout = nullptr;  // host copy: sizes and counts
  const SliceInfo* slices = nullptr;
  const Chunk* chunks = nullptr;
  const StatBlock* stat_blocks = nullptr;
  const SlicePointers* ptrs = nullptr;
  DeviceGroup* groups = nullptr;
  DeviceStep* step = nullptr;
  float* factor = nullptr;
  double* row_part = nullptr;
  double* col_part = nullptr;
  double* chunk_sum = nullptr;
  double* slice_sum = nullptr;
};

CAME_HD int64_t MinI(int64_t a, int64_t b) { return a < b ? a : b; }
CAME_HD int64_t MaxI(int64_t a, int64_t b) { return a > b ? a : b; }

// Sets [*lo, *hi) to the columns of `row` inside [c0, c1) whose elements belong to the slice
// (empty when *lo >= *hi).
CAME_HD void RowColumns(const SliceInfo& s, int64_t row, int64_t c0, int64_t c1, int64_t* lo,
                        int64_t* hi) {
  const int64_t base = row * s.m;
  *lo = MaxI(c0, s.begin - base);
  *hi = MinI(c1, s.end - base);
}

// Returns the band (over the whole batch) that holds `row`.
CAME_HD int64_t BandOf(const SliceInfo& s, int64_t row) {
  return (row / s.n) * s.bands() + (row % s.n) / kTileRows;
}

CAME_HD int64_t RowPartIndex(const SliceInfo& s, int64_t col_tile, int64_t row) {
  return s.row_part_offset + col_tile * s.rows() + row;
}

CAME_HD int64_t ColPartIndex(const SliceInfo& s, int64_t band, int64_t col) {
  return s.col_part_offset + band * s.m + col;
}

// Returns whether rows [r0, r1) x columns [c0, c1) hold an element of the slice.
CAME_HD bool TileIntersects(const SliceInfo& s, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  if (s.begin >= s.end) return false;
  const int64_t first = MaxI(r0, s.begin / s.m);
  const int64_t last = MinI(r1 - 1, (s.end - 1) / s.m);
  if (first > last) return false;
  if (last - first >= 2) return true;  // the rows in between are whole
  int64_t lo, hi;
  RowColumns(s, first, c0, c1, &lo, &hi);
  if (lo < hi) return true;
  RowColumns(s, last, c0, c1, &lo, &hi);
  return lo < hi;
}

// Returns the complete sum of row `row` (0 <= row < rows()) from the row partials.
CAME_HD double ReduceRowStat(const SliceInfo& s, int64_t row, const double* row_part) {
  int64_t lo, hi;
  RowColumns(s, row, 0, s.m, &lo, &hi);
  double sum = 0.0;
  if (lo >= hi) return sum;
  for (int64_t t = lo / kTileCols; t <= (hi - 1) / kTileCols; ++t)
    sum += row_part[RowPartIndex(s, t, row)];
  return sum;
}

// Returns the complete sum of column entry `col` (0 <= col < cols(): matrix col / m, column
// col % m) from the column partials.
CAME_HD double ReduceColStat(const SliceInfo& s, int64_t col, const double* col_part) {
  const int64_t b = col / s.m, j = col % s.m;
  // Rows i of matrix b whose element i * m + j lies in [begin, end).
  const int64_t from = s.begin <= j ? 0 : (s.begin - j + s.m - 1) / s.m;
  const int64_t first = MaxI(b * s.n, from);
  if (s.end - 1 < j) return 0.0;
  const int64_t last = MinI((b + 1) * s.n - 1, (s.end - 1 - j) / s.m);
  double sum = 0.0;
  if (first > last) return sum;
  for (int64_t band = BandOf(s, first); band <= BandOf(s, last); ++band)
    sum += col_part[ColPartIndex(s, band, j)];
  return sum;
}

// Returns the index of the slice whose statistics hold entry `index` (< the stats size):
// the last slice with stats_offset <= index (slices without statistics share their
// successor's offset, so the last one is the one that has entries).
CAME_HD int64_t FindStatSlice(const SliceInfo* slices, int64_t num_slices, int64_t index) {
  int64_t lo = 0, hi = num_slices;  // first slice with stats_offset > index is in [lo, hi]
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (slices[mid].stats_offset <= index)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo - 1;
}

// Returns how many elements one 16-byte load of gradients of this element size holds.
CAME_HD int VectorWidth(int grad_elem_size) { return 16 / grad_elem_size; }

}  // namespace came::cuda
