#include "kernels/cuda/layout.h"

#include <algorithm>

#include "kernels/cpu_came.h"
#include "kernels/dtype.h"

namespace came::cuda {
namespace {

// Returns whether tensor element 0 of a buffer whose element `begin` is at `p` is 16-byte
// aligned (a null buffer is).
bool Aligned(const void* p, int64_t begin, size_t elem_size) {
  if (p == nullptr) return true;
  const uintptr_t base =
      reinterpret_cast<uintptr_t>(p) - static_cast<uintptr_t>(begin) * elem_size;
  return base % 16 == 0;
}

}  // namespace


Layout BuildLayout(std::span<const TensorSlice> slices) {
  Layout l;
  for (const TensorSlice& t : slices) {
    SliceInfo s;
    s.numel = t.geom.numel;
    s.begin = t.begin;
    s.end = t.end;
    s.factored = t.geom.factored ? 1 : 0;
    s.batch = t.geom.batch;
    s.n = t.geom.n;
    s.m = t.geom.m;
    s.group = t.group;
    s.grad_dtype = static_cast<int32_t>(t.grad_dtype);
    s.stats_offset = l.stats_size;
    l.stats_size += s.rows() + s.cols();
    l.num_groups = std::max(l.num_groups, t.group + 1);
    s.first_chunk = static_cast<int64_t>(l.chunks.size());
    const int64_t slice = static_cast<int64_t>(l.slices.size());
    if (s.factored) {
      s.row_part_offset = l.row_part_size;
      l.row_part_size += s.col_tiles() * s.rows();
      s.col_part_offset = l.col_part_size;
      l.col_part_size += s.batch * s.bands() * s.m;
      for (int64_t b = 0; b < s.batch; ++b) l.stat_blocks.push_back({slice, b});
      if (s.begin < s.end) {
        // Bands from the one holding the slice's first row to the one holding its last.
        const int64_t first_band = BandOf(s, s.begin / s.m);
        const int64_t last_band = BandOf(s, (s.end - 1) / s.m);
        for (int64_t band = first_band; band <= last_band; ++band) {
          const int64_t b = band / s.bands(), k = band % s.bands();
          const int64_t r0 = b * s.n + k * kTileRows;
          const int64_t r1 = b * s.n + std::min(s.n, (k + 1) * kTileRows);
          for (int64_t t = 0; t < s.col_tiles(); ++t) {
            const int64_t c0 = t * kTileCols, c1 = std::min(s.m, c0 + kTileCols);
            if (TileIntersects(s, r0, r1, c0, c1)) l.chunks.push_back({slice, r0, r1, c0});
          }
        }
      }
    } else if (s.begin < s.end) {
      for (int64_t k = s.begin / kFlatChunk; k <= (s.end - 1) / kFlatChunk; ++k)
        l.chunks.push_back({slice, std::max(s.begin, k * kFlatChunk),
                            std::min(s.end, (k + 1) * kFlatChunk), 0});
    }
    s.num_chunks = static_cast<int64_t>(l.chunks.size()) - s.first_chunk;
    l.slices.push_back(s);
  }
  return l;
}

SlicePointers PointersOf(const TensorSlice& s) {
  SlicePointers p;
  p.grad = s.grad;
  p.master = s.master;
  p.param = s.param;
  p.param_dtype = s.param == nullptr ? kNoParamCopy : static_cast<int32_t>(s.param_dtype);
  p.exp_avg = s.exp_avg;
  p.exp_avg_sq = s.exp_avg_sq;
  p.exp_avg_sq_row = s.exp_avg_sq_row;
  p.exp_avg_sq_col = s.exp_avg_sq_col;
  p.exp_avg_res_row = s.exp_avg_res_row;
  p.exp_avg_res_col = s.exp_avg_res_col;
  const size_t gsize = DTypeSize(s.grad_dtype);
  const int v = VectorWidth(static_cast<int>(gsize));
  bool ok = Aligned(s.grad, s.begin, gsize) && Aligned(s.master, s.begin, 4) &&
            Aligned(s.exp_avg, s.begin, 4) && Aligned(s.exp_avg_sq, s.begin, 4) &&
            Aligned(s.param, s.begin, DTypeSize(s.param_dtype));
  if (s.geom.factored && s.geom.m % v != 0) ok = false;
  p.vec = ok ? 1 : 0;
  return p;
}

}  // namespace came::cuda
