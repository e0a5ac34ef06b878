// The shard plan: how the flat parameter and gradient buffers are laid out and split into W
// equal contiguous chunks, one per rank (Note [Chunk boundaries] in docs/design.md and below).
//
// Note [Chunk boundaries]
// Tensors are laid out in the order given, each starting at a multiple of `alignment`
// elements (padding between tensors only where alignment needs it). The padded length is
// rounded up to W * chunk_size, where chunk_size is a multiple of `alignment`; rank k owns
// elements [k * chunk_size, (k + 1) * chunk_size). A tensor lies wholly in one chunk or
// crosses one or more boundaries; a tensor that crosses is "split" and its row/column
// statistics and update RMS are completed by summing the partial sums of its sharers. Each
// boundary splits at most one tensor, so at most W - 1 tensors are split. A rank may own no
// element at all (W larger than the element count). The plan is a pure function of its
// inputs: every rank computes the same plan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "kernels/geometry.h"

namespace came {

// One parameter tensor as the trainer registers it.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;  // every dim > 0; empty for a scalar
  DType dtype = DType::kFloat32;
  int group = 0;  // parameter group index (hyperparameters)
};

// The part of one tensor that one rank owns.
struct ShardPiece {
  int tensor = 0;            // index into ShardPlan::tensors
  int64_t begin = 0;         // first owned element of the tensor (flat, row-major)
  int64_t end = 0;           // one past the last owned element
  int64_t chunk_offset = 0;  // where element `begin` sits inside the rank's chunk
};

struct ShardPlan {
  struct Tensor {
    TensorSpec spec;
    TensorGeometry geom;
    int64_t offset = 0;   // first element in the flat buffer
    int first_rank = 0;   // ranks that own a piece of it: [first_rank, last_rank]
    int last_rank = 0;
    bool split() const { return first_rank != last_rank; }
    int64_t end() const { return offset + geom.numel; }  // one past its last flat element
  };

  int world_size = 1;
  int64_t alignment = 1;
  DType dtype = DType::kFloat32;  // the dtype of the flat buffers (every tensor's)
  int64_t chunk_size = 0;         // elements per rank
  int64_t padded_size = 0;        // world_size * chunk_size
  int64_t used_size = 0;          // end of the last tensor in the flat buffer
  std::vector<Tensor> tensors;
  // pieces[rank] for every rank in [0, world_size), in flat-buffer order; empty for a rank
  // whose chunk holds only padding.
  std::vector<std::vector<ShardPiece>> pieces;
  std::vector<int> split_tensors;  // indices of split tensors, ascending

  // Returns the plan, or InvalidArgument for: no tensors, world_size < 1, alignment < 1,
  // a dim <= 0, an element count that overflows int64, tensors of different dtypes, empty
  // or duplicate names, a negative group, a padded size that overflows int64. The message
  // names the offending tensor ("tensor 2 'w'").
  static absl::StatusOr<ShardPlan> Make(std::vector<TensorSpec> tensors, int world_size,
                                        int64_t alignment);
};

}  // namespace came
