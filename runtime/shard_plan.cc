#include "runtime/shard_plan.h"

#include <algorithm>
#include <limits>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace came {
namespace {

// Returns "tensor 3 'layer.w'" for error messages.
std::string Describe(const std::vector<TensorSpec>& tensors, size_t i) {
  return absl::StrCat("tensor ", i, " '", tensors[i].name, "'");
}

// Returns `x` rounded up to a multiple of `a` (a >= 1, x >= 0), or false on overflow.
bool RoundUp(int64_t x, int64_t a, int64_t* out) {
  const int64_t r = x % a;
  if (r == 0) {
    *out = x;
    return true;
  }
  return !__builtin_add_overflow(x, a - r, out);
}

// Checks one tensor against the plan's rules (the first tensor's dtype is the plan's) and
// returns its element count.
absl::StatusOr<int64_t> CheckTensor(const std::vector<TensorSpec>& tensors, size_t i) {
  const TensorSpec& t = tensors[i];
  if (t.name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(tensors, i), " has an empty name"));
  }
  if (t.group < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(tensors, i), " has a negative group ", t.group));
  }
  if (t.dtype != tensors[0].dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(tensors, i), " has dtype ", std::string(DTypeName(t.dtype)),
                     " but the plan's dtype (", Describe(tensors, 0), ") is ",
                     std::string(DTypeName(tensors[0].dtype))));
  }
  int64_t numel = 1;
  for (int64_t d : t.shape) {
    if (d <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(Describe(tensors, i), " has shape ",
                                                     ShapeString(t.shape), " with a dim <= 0"));
    }
    if (__builtin_mul_overflow(numel, d, &numel)) {
      return absl::InvalidArgumentError(absl::StrCat(Describe(tensors, i), " of shape ",
                                                     ShapeString(t.shape),
                                                     " has more elements than int64 holds"));
    }
  }
  return numel;
}

}  // namespace

absl::StatusOr<ShardPlan> ShardPlan::Make(std::vector<TensorSpec> tensors, int world_size,
                                          int64_t alignment) {
  if (tensors.empty()) return absl::InvalidArgumentError("shard plan: no tensors");
  if (tensors.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard plan: ", tensors.size(), " tensors do not fit an int index"));
  }
  if (world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard plan: world_size must be >= 1, got ", world_size));
  }
  if (alignment < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard plan: alignment must be >= 1, got ", alignment));
  }

  ShardPlan plan;
  plan.world_size = world_size;
  plan.alignment = alignment;
  plan.dtype = tensors[0].dtype;
  plan.tensors.reserve(tensors.size());

  // Lay the tensors out (Note [Chunk boundaries]).
  std::map<std::string, size_t> index_of_name;
  int64_t end = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    absl::StatusOr<int64_t> numel = CheckTensor(tensors, i);
    if (!numel.ok()) return numel.status();
    auto [it, inserted] = index_of_name.emplace(tensors[i].name, i);
    if (!inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat(Describe(tensors, i), ": duplicate name (also tensor ", it->second, ")"));
    }
    int64_t offset = 0;
    if (!RoundUp(end, alignment, &offset) || __builtin_add_overflow(offset, *numel, &end)) {
      return absl::InvalidArgumentError(absl::StrCat(
          Describe(tensors, i), ": the flat buffer's size overflows int64 at this tensor"));
    }
    Tensor& t = plan.tensors.emplace_back();
    t.spec = std::move(tensors[i]);
    t.geom = TensorGeometry::FromShape(t.spec.shape);
    t.offset = offset;
  }
  plan.used_size = end;

  // used_size >= 1 (every tensor has an element), so chunk_size >= alignment >= 1.
  const int64_t per_rank = end / world_size + (end % world_size != 0 ? 1 : 0);
  if (!RoundUp(per_rank, alignment, &plan.chunk_size) ||
      __builtin_mul_overflow(plan.chunk_size, int64_t{world_size}, &plan.padded_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard plan: the padded buffer (", world_size, " chunks of at least ",
                     per_rank, " elements, alignment ", alignment, ") overflows int64"));
  }

  // Split every tensor at the chunk boundaries; tensors are visited in flat order, so each
  // rank's pieces come out in flat order too.
  const int64_t chunk = plan.chunk_size;
  plan.pieces.assign(world_size, {});
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    Tensor& t = plan.tensors[i];
    const int64_t t_end = t.end();
    t.first_rank = static_cast<int>(t.offset / chunk);
    t.last_rank = static_cast<int>((t_end - 1) / chunk);
    for (int k = t.first_rank; k <= t.last_rank; ++k) {
      const int64_t chunk_begin = k * chunk;
      const int64_t lo = std::max(t.offset, chunk_begin);
      const int64_t hi = std::min(t_end, chunk_begin + chunk);
      plan.pieces[k].push_back(
          ShardPiece{static_cast<int>(i), lo - t.offset, hi - t.offset, lo - chunk_begin});
    }
    if (t.split()) plan.split_tensors.push_back(static_cast<int>(i));
  }
  return plan;
}

}  // namespace came
