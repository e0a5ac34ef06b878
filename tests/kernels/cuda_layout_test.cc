// The CUDA kernels' chunk table and reductions (kernels/cuda/layout.h), checked on the CPU:
// every element of a slice is in exactly one chunk, the partials the kernels write are the
// only ones the reductions read (poisoned workspace), and the completed row and column sums
// equal direct sums, for random slices that start and end mid-row, batches, one row, one
// column and widths around the tile width. Runs without a GPU.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_came.h"
#include "kernels/cuda/layout.h"
#include "kernels/geometry.h"

namespace came::cuda {
namespace {

TensorSlice MakeSlice(std::vector<int64_t> shape, int64_t begin, int64_t end, int group = 0) {
  TensorSlice s;
  s.geom = TensorGeometry::FromShape(shape);
  s.begin = begin;
  s.end = end;
  s.group = group;
  return s;
}

// The value of element e in the test data: small integers, so every sum is exact.
double Value(int64_t e) { return static_cast<double>((e * 7919) % 13) - 6.0; }

// Writes the partials a phase kernel's block writes for chunk `c` (Note [CUDA chunks]): row
// partials for every row of the band, column partials for every column of the tile.
void EmulateTile(const SliceInfo& s, const Chunk& c, std::vector<double>& row_part,
                 std::vector<double>& col_part) {
  const int64_t c1 = std::min(c.c0 + kTileCols, s.m);
  std::vector<double> cols(c1 - c.c0, 0.0);
  for (int64_t r = c.r0; r < c.r1; ++r) {
    int64_t lo, hi;
    RowColumns(s, r, c.c0, c1, &lo, &hi);
    double racc = 0.0;
    for (int64_t j = lo; j < hi; ++j) {
      racc += Value(r * s.m + j);
      cols[j - c.c0] += Value(r * s.m + j);
    }
    row_part.at(RowPartIndex(s, c.c0 / kTileCols, r)) = racc;
  }
  for (int64_t j = c.c0; j < c1; ++j) col_part.at(ColPartIndex(s, BandOf(s, c.r0), j)) = cols[j - c.c0];
}

void CheckSlices(const std::vector<TensorSlice>& slices) {
  const Layout l = BuildLayout(slices);
  ASSERT_EQ(l.slices.size(), slices.size());
  const double kPoison = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> row_part(l.row_part_size, kPoison), col_part(l.col_part_size, kPoison);
  int64_t stats = 0, row_size = 0, col_size = 0, blocks = 0;
  for (size_t i = 0; i < slices.size(); ++i) {
    const SliceInfo& s = l.slices[i];
    const TensorSlice& t = slices[i];
    EXPECT_EQ(s.stats_offset, stats);
    stats += t.geom.stats_size();
    if (s.factored) {
      row_size += s.col_tiles() * s.rows();
      col_size += s.batch * s.bands() * s.m;
      blocks += s.batch;
    }
    // Every element of [begin, end) lies in exactly one chunk of this slice.
    std::vector<int> cover(t.geom.numel, 0);
    for (int64_t k = s.first_chunk; k < s.first_chunk + s.num_chunks; ++k) {
      const Chunk& c = l.chunks[k];
      ASSERT_EQ(c.slice, static_cast<int64_t>(i));
      if (s.factored) {
        ASSERT_EQ(c.r0 / s.n, (c.r1 - 1) / s.n) << "a tile crosses a matrix of the batch";
        ASSERT_EQ((c.r0 % s.n) % kTileRows, 0);
        ASSERT_LE(c.r1 - c.r0, kTileRows);
        ASSERT_EQ(c.c0 % kTileCols, 0);
        EXPECT_TRUE(TileIntersects(s, c.r0, c.r1, c.c0, std::min(c.c0 + kTileCols, s.m)));
        for (int64_t r = c.r0; r < c.r1; ++r)
          for (int64_t j = c.c0; j < std::min(c.c0 + kTileCols, s.m); ++j) {
            const int64_t e = r * s.m + j;
            if (e >= s.begin && e < s.end) ++cover[e];
          }
        EmulateTile(s, c, row_part, col_part);
      } else {
        ASSERT_LE(c.r1 - c.r0, kFlatChunk);
        for (int64_t e = c.r0; e < c.r1; ++e) ++cover[e];
      }
    }
    for (int64_t e = 0; e < t.geom.numel; ++e)
      ASSERT_EQ(cover[e], e >= s.begin && e < s.end ? 1 : 0) << "slice " << i << " element " << e;
  }
  EXPECT_EQ(l.stats_size, stats);
  EXPECT_EQ(l.row_part_size, row_size);
  EXPECT_EQ(l.col_part_size, col_size);
  EXPECT_EQ(static_cast<int64_t>(l.stat_blocks.size()), blocks);

  // The reductions read only written partials and give the direct sums.
  for (int64_t idx = 0; idx < l.stats_size; ++idx) {
    const int64_t si = FindStatSlice(l.slices.data(), static_cast<int64_t>(l.slices.size()), idx);
    ASSERT_GE(si, 0);
    const SliceInfo& s = l.slices[si];
    ASSERT_TRUE(s.factored);
    ASSERT_GE(idx, s.stats_offset);
    ASSERT_LT(idx, s.stats_offset + s.rows() + s.cols());
    const int64_t local = idx - s.stats_offset;
    double want = 0.0, got;
    if (local < s.rows()) {
      for (int64_t j = 0; j < s.m; ++j) {
        const int64_t e = local * s.m + j;
        if (e >= s.begin && e < s.end) want += Value(e);
      }
      got = ReduceRowStat(s, local, row_part.data());
    } else {
      const int64_t col = local - s.rows(), b = col / s.m, j = col % s.m;
      for (int64_t i = b * s.n; i < (b + 1) * s.n; ++i) {
        const int64_t e = i * s.m + j;
        if (e >= s.begin && e < s.end) want += Value(e);
      }
      got = ReduceColStat(s, col, col_part.data());
    }
    ASSERT_EQ(got, want) << "slice " << si << " stat " << local;
  }
}

TEST(CudaLayoutTest, WholeTensorsOfAwkwardShapes) {
  std::vector<TensorSlice> slices;
  const std::vector<std::vector<int64_t>> shapes = {
      {1}, {7}, {1, 1}, {1, 9}, {9, 1}, {4, 6}, {3, 513}, {130, 5}, {257, 1025}, {2, 3, 5},
      {3, 129, 7}, {2, 2, 3, 4}, {kFlatChunk * 2 + 3}};
  for (const auto& shape : shapes) {
    const TensorGeometry g = TensorGeometry::FromShape(shape);
    slices.push_back(MakeSlice(shape, 0, g.numel));
  }
  CheckSlices(slices);
}

TEST(CudaLayoutTest, RandomRangesStartAndEndMidRow) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    std::vector<TensorSlice> slices;
    const int count = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < count; ++k) {
      std::vector<int64_t> shape;
      const int ndim = static_cast<int>(rng() % 4) + 1;
      for (int d = 0; d < ndim; ++d) {
        const int64_t choices[] = {1, 2, 3, 5, 127, 128, 129, 511, 512, 513, 700};
        shape.push_back(choices[rng() % (d + 2 >= ndim ? 11 : 4)]);
      }
      const TensorGeometry g = TensorGeometry::FromShape(shape);
      if (g.numel > 400000) shape = {3, 129, 7};
      const int64_t numel = TensorGeometry::FromShape(shape).numel;
      int64_t a = static_cast<int64_t>(rng() % (numel + 1));
      int64_t b = static_cast<int64_t>(rng() % (numel + 1));
      if (a > b) std::swap(a, b);
      slices.push_back(MakeSlice(shape, a, b, static_cast<int>(rng() % 3)));
    }
    CheckSlices(slices);
    if (HasFatalFailure()) return;
  }
}

TEST(CudaLayoutTest, TileIntersectsMatchesBruteForce) {
  for (int64_t m : {1, 3, 7}) {
    const int64_t rows = 5;
    for (int64_t begin = 0; begin <= rows * m; ++begin)
      for (int64_t end = begin; end <= rows * m; ++end) {
        TensorSlice t = MakeSlice({rows, m}, begin, end);
        const Layout l = BuildLayout(std::vector<TensorSlice>{t});
        const SliceInfo& s = l.slices[0];
        for (int64_t r0 = 0; r0 < rows; ++r0)
          for (int64_t r1 = r0 + 1; r1 <= rows; ++r1)
            for (int64_t c0 = 0; c0 < m; ++c0)
              for (int64_t c1 = c0 + 1; c1 <= m; ++c1) {
                bool want = false;
                for (int64_t r = r0; r < r1; ++r)
                  for (int64_t j = c0; j < c1; ++j)
                    want = want || (r * m + j >= begin && r * m + j < end);
                ASSERT_EQ(TileIntersects(s, r0, r1, c0, c1), want)
                    << "m " << m << " [" << begin << ", " << end << ") rows [" << r0 << ", "
                    << r1 << ") cols [" << c0 << ", " << c1 << ")";
              }
      }
  }
}

TEST(CudaLayoutTest, GroupsAndStatBlocks) {
  const std::vector<TensorSlice> slices = {MakeSlice({4, 2, 3}, 0, 24, 2), MakeSlice({5}, 0, 5, 0),
                                           MakeSlice({3, 3}, 2, 7, 1)};
  const Layout l = BuildLayout(slices);
  EXPECT_EQ(l.num_groups, 3);
  ASSERT_EQ(l.stat_blocks.size(), 5u);  // 4 matrices of the first slice, 1 of the last
  EXPECT_EQ(l.stat_blocks[3].batch, 3);
  EXPECT_EQ(l.stat_blocks[4].slice, 2);
  EXPECT_EQ(l.slices[1].stats_offset, l.slices[2].stats_offset);  // 1-D: no statistics
  EXPECT_EQ(FindStatSlice(l.slices.data(), 3, l.slices[2].stats_offset), 2);
  EXPECT_EQ(FindStatSlice(l.slices.data(), 3, l.slices[2].stats_offset - 1), 0);
}

TEST(CudaLayoutTest, EmptySliceHasNoChunksButItsStatistics) {
  const Layout l = BuildLayout(std::vector<TensorSlice>{MakeSlice({4, 6}, 5, 5)});
  EXPECT_TRUE(l.chunks.empty());
  EXPECT_EQ(l.stats_size, 10);
  std::vector<double> none;
  EXPECT_EQ(ReduceRowStat(l.slices[0], 1, none.data()), 0.0);
  EXPECT_EQ(ReduceColStat(l.slices[0], 3, none.data()), 0.0);
}

}  // namespace
}  // namespace came::cuda
