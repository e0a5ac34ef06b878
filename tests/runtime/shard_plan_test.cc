#include "runtime/shard_plan.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace came {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

TensorSpec Spec(std::string name, std::vector<int64_t> shape, DType dtype = DType::kFloat32,
                int group = 0) {
  return TensorSpec{std::move(name), std::move(shape), dtype, group};
}

int64_t RoundUpTo(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// Checks every property of Note [Chunk boundaries] against the specs the plan was made from,
// element by element (the plan must be small).
void CheckPlan(const ShardPlan& plan, const std::vector<TensorSpec>& specs, int world_size,
               int64_t alignment) {
  SCOPED_TRACE(absl::StrCat("W=", world_size, " alignment=", alignment, " tensors=", specs.size()));
  ASSERT_EQ(plan.world_size, world_size);
  ASSERT_EQ(plan.alignment, alignment);
  ASSERT_EQ(plan.dtype, specs[0].dtype);
  ASSERT_EQ(plan.tensors.size(), specs.size());
  ASSERT_EQ(plan.pieces.size(), static_cast<size_t>(world_size));

  // Layout: tensors in the order given, each aligned, gaps only where alignment needs them.
  int64_t prev_end = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const ShardPlan::Tensor& t = plan.tensors[i];
    EXPECT_EQ(t.spec.name, specs[i].name);
    EXPECT_EQ(t.spec.shape, specs[i].shape);
    EXPECT_EQ(t.spec.group, specs[i].group);
    const TensorGeometry g = TensorGeometry::FromShape(specs[i].shape);
    EXPECT_EQ(t.geom.numel, g.numel);
    EXPECT_EQ(t.geom.factored, g.factored);
    EXPECT_EQ(t.geom.batch, g.batch);
    EXPECT_EQ(t.geom.n, g.n);
    EXPECT_EQ(t.geom.m, g.m);
    EXPECT_EQ(t.offset % alignment, 0) << specs[i].name;
    EXPECT_EQ(t.offset, RoundUpTo(prev_end, alignment)) << specs[i].name;
    EXPECT_EQ(t.end(), t.offset + g.numel);
    prev_end = t.end();
  }
  EXPECT_EQ(plan.used_size, prev_end);

  // Balance: W equal chunks, the smallest aligned size that holds the used elements.
  EXPECT_EQ(plan.chunk_size % alignment, 0);
  EXPECT_GE(plan.chunk_size, alignment);
  EXPECT_EQ(plan.padded_size, plan.chunk_size * world_size);
  EXPECT_GE(plan.padded_size, plan.used_size);
  EXPECT_LT((plan.chunk_size - alignment) * world_size, plan.used_size);

  // Pieces: inside their chunk, in flat order, covering each element once.
  std::vector<int> owner(plan.padded_size, -1);
  std::vector<int> first(specs.size(), world_size), last(specs.size(), -1);
  for (int k = 0; k < world_size; ++k) {
    int64_t prev_flat_end = k * plan.chunk_size;
    for (const ShardPiece& p : plan.pieces[k]) {
      SCOPED_TRACE(absl::StrCat("rank ", k, " tensor ", p.tensor));
      ASSERT_GE(p.tensor, 0);
      ASSERT_LT(p.tensor, static_cast<int>(specs.size()));
      const ShardPlan::Tensor& t = plan.tensors[p.tensor];
      ASSERT_GE(p.begin, 0);
      ASSERT_LT(p.begin, p.end);
      ASSERT_LE(p.end, t.geom.numel);
      ASSERT_GE(p.chunk_offset, 0);
      ASSERT_LE(p.chunk_offset + (p.end - p.begin), plan.chunk_size);
      const int64_t flat = t.offset + p.begin;
      ASSERT_EQ(flat, k * plan.chunk_size + p.chunk_offset);
      ASSERT_GE(flat, prev_flat_end) << "pieces out of order or overlapping";
      prev_flat_end = flat + (p.end - p.begin);
      for (int64_t e = flat; e < prev_flat_end; ++e) {
        ASSERT_EQ(owner[e], -1) << "element " << e << " owned twice";
        owner[e] = k;
      }
      first[p.tensor] = std::min(first[p.tensor], k);
      last[p.tensor] = std::max(last[p.tensor], k);
    }
  }
  std::vector<bool> in_tensor(plan.padded_size, false);
  for (const ShardPlan::Tensor& t : plan.tensors) {
    for (int64_t e = t.offset; e < t.end(); ++e) in_tensor[e] = true;
  }
  for (int64_t e = 0; e < plan.padded_size; ++e) {
    ASSERT_EQ(owner[e] != -1, in_tensor[e]) << "flat element " << e;
    if (in_tensor[e]) {
      ASSERT_EQ(owner[e], e / plan.chunk_size) << "flat element " << e;
    }
  }

  // Owners and split tensors.
  std::vector<int> split;
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(plan.tensors[i].first_rank, first[i]) << specs[i].name;
    EXPECT_EQ(plan.tensors[i].last_rank, last[i]) << specs[i].name;
    if (first[i] != last[i]) split.push_back(static_cast<int>(i));
  }
  EXPECT_EQ(plan.split_tensors, split);
  EXPECT_LE(static_cast<int>(split.size()), world_size - 1);
  // Each boundary splits at most one tensor.
  for (int k = 1; k < world_size; ++k) {
    int crossing = 0;
    for (int i : split) {
      crossing += plan.tensors[i].first_rank < k && plan.tensors[i].last_rank >= k;
    }
    EXPECT_LE(crossing, 1) << "boundary " << k;
  }
}

ShardPlan MakeChecked(const std::vector<TensorSpec>& specs, int world_size, int64_t alignment) {
  absl::StatusOr<ShardPlan> plan = ShardPlan::Make(specs, world_size, alignment);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return ShardPlan{};
  CheckPlan(*plan, specs, world_size, alignment);
  return *std::move(plan);
}

void ExpectPiece(const ShardPiece& p, int tensor, int64_t begin, int64_t end,
                 int64_t chunk_offset) {
  EXPECT_EQ(p.tensor, tensor);
  EXPECT_EQ(p.begin, begin);
  EXPECT_EQ(p.end, end);
  EXPECT_EQ(p.chunk_offset, chunk_offset);
}

TEST(ShardPlanTest, OneRankOwnsEverything) {
  const std::vector<TensorSpec> specs = {Spec("w", {3, 5}), Spec("b", {5})};
  ShardPlan plan = MakeChecked(specs, 1, 1);
  EXPECT_EQ(plan.chunk_size, 20);
  EXPECT_EQ(plan.padded_size, 20);
  ASSERT_EQ(plan.pieces[0].size(), 2u);
  ExpectPiece(plan.pieces[0][0], 0, 0, 15, 0);
  ExpectPiece(plan.pieces[0][1], 1, 0, 5, 15);
  EXPECT_TRUE(plan.split_tensors.empty());
}

TEST(ShardPlanTest, SplitsMidRow) {
  // 24 elements over 3 ranks: the boundaries at 8 and 16 fall inside rows of length 6.
  const std::vector<TensorSpec> specs = {Spec("w", {4, 6})};
  ShardPlan plan = MakeChecked(specs, 3, 1);
  EXPECT_EQ(plan.chunk_size, 8);
  ASSERT_EQ(plan.pieces[0].size(), 1u);
  ASSERT_EQ(plan.pieces[1].size(), 1u);
  ASSERT_EQ(plan.pieces[2].size(), 1u);
  ExpectPiece(plan.pieces[0][0], 0, 0, 8, 0);
  ExpectPiece(plan.pieces[1][0], 0, 8, 16, 0);
  ExpectPiece(plan.pieces[2][0], 0, 16, 24, 0);
  EXPECT_NE(plan.pieces[1][0].begin % plan.tensors[0].geom.m, 0);
  EXPECT_EQ(plan.tensors[0].first_rank, 0);
  EXPECT_EQ(plan.tensors[0].last_rank, 2);
  EXPECT_EQ(plan.split_tensors, std::vector<int>{0});
}

TEST(ShardPlanTest, TensorSpansFourChunks) {
  // Layout: a [0, 2), b [2, 42), c [42, 45); chunk 12: b crosses all three boundaries.
  const std::vector<TensorSpec> specs = {Spec("a", {2}), Spec("b", {10, 4}), Spec("c", {3})};
  ShardPlan plan = MakeChecked(specs, 4, 1);
  EXPECT_EQ(plan.used_size, 45);
  EXPECT_EQ(plan.chunk_size, 12);
  EXPECT_EQ(plan.padded_size, 48);
  EXPECT_EQ(plan.tensors[1].first_rank, 0);
  EXPECT_EQ(plan.tensors[1].last_rank, 3);
  EXPECT_EQ(plan.split_tensors, std::vector<int>{1});
  ASSERT_EQ(plan.pieces[0].size(), 2u);
  ExpectPiece(plan.pieces[0][0], 0, 0, 2, 0);
  ExpectPiece(plan.pieces[0][1], 1, 0, 10, 2);
  ASSERT_EQ(plan.pieces[1].size(), 1u);
  ExpectPiece(plan.pieces[1][0], 1, 10, 22, 0);
  ASSERT_EQ(plan.pieces[2].size(), 1u);
  ExpectPiece(plan.pieces[2][0], 1, 22, 34, 0);
  ASSERT_EQ(plan.pieces[3].size(), 2u);
  ExpectPiece(plan.pieces[3][0], 1, 34, 40, 0);
  ExpectPiece(plan.pieces[3][1], 2, 0, 3, 6);
}

TEST(ShardPlanTest, TensorsSmallerThanWorldSize) {
  // 6 elements over 8 ranks: one element a rank, the last two ranks own nothing.
  const std::vector<TensorSpec> specs = {Spec("a", {2}), Spec("b", {3}), Spec("s", {})};
  ShardPlan plan = MakeChecked(specs, 8, 1);
  EXPECT_EQ(plan.chunk_size, 1);
  EXPECT_EQ(plan.tensors[2].geom.numel, 1);
  EXPECT_EQ(plan.split_tensors, (std::vector<int>{0, 1}));
  EXPECT_TRUE(plan.pieces[6].empty());
  EXPECT_TRUE(plan.pieces[7].empty());
  ExpectPiece(plan.pieces[5][0], 2, 0, 1, 0);
}

TEST(ShardPlanTest, WorldLargerThanElementCount) {
  const std::vector<TensorSpec> specs = {Spec("scale", {})};
  for (int64_t alignment : {1, 4}) {
    ShardPlan plan = MakeChecked(specs, 5, alignment);
    EXPECT_EQ(plan.chunk_size, alignment);
    EXPECT_EQ(plan.padded_size, 5 * alignment);
    ASSERT_EQ(plan.pieces[0].size(), 1u);
    for (int k = 1; k < 5; ++k) EXPECT_TRUE(plan.pieces[k].empty()) << k;
    EXPECT_TRUE(plan.split_tensors.empty());
  }
}

TEST(ShardPlanTest, AlignmentFour) {
  // Offsets 0, 4, 12; used 18; W=2 wants 9 a chunk, rounded to 12.
  const std::vector<TensorSpec> specs = {Spec("a", {3}), Spec("b", {5}), Spec("c", {2, 3})};
  ShardPlan plan = MakeChecked(specs, 2, 4);
  EXPECT_EQ(plan.tensors[0].offset, 0);
  EXPECT_EQ(plan.tensors[1].offset, 4);
  EXPECT_EQ(plan.tensors[2].offset, 12);
  EXPECT_EQ(plan.used_size, 18);
  EXPECT_EQ(plan.chunk_size, 12);
  EXPECT_EQ(plan.padded_size, 24);
  EXPECT_TRUE(plan.split_tensors.empty());
  ASSERT_EQ(plan.pieces[1].size(), 1u);
  ExpectPiece(plan.pieces[1][0], 2, 0, 6, 0);
}

TEST(ShardPlanTest, AlignmentSixtyFour) {
  const std::vector<TensorSpec> specs = {Spec("emb", {100, 30}), Spec("ln", {30}),
                                         Spec("w", {7, 3, 5})};
  ShardPlan plan = MakeChecked(specs, 3, 64);
  EXPECT_EQ(plan.tensors[1].offset, 3008);
  EXPECT_EQ(plan.tensors[2].offset, 3072);
  EXPECT_EQ(plan.used_size, 3177);
  EXPECT_EQ(plan.chunk_size, 1088);
}

TEST(ShardPlanTest, AlignmentOneHasNoGaps) {
  const std::vector<TensorSpec> specs = {Spec("a", {3}), Spec("b", {5}), Spec("c", {2, 3})};
  ShardPlan plan = MakeChecked(specs, 3, 1);
  EXPECT_EQ(plan.tensors[1].offset, 3);
  EXPECT_EQ(plan.tensors[2].offset, 8);
  EXPECT_EQ(plan.used_size, 14);
  EXPECT_EQ(plan.chunk_size, 5);
}

void ExpectSamePlan(const ShardPlan& a, const ShardPlan& b) {
  EXPECT_EQ(a.world_size, b.world_size);
  EXPECT_EQ(a.alignment, b.alignment);
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.chunk_size, b.chunk_size);
  EXPECT_EQ(a.padded_size, b.padded_size);
  EXPECT_EQ(a.used_size, b.used_size);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].spec.name, b.tensors[i].spec.name);
    EXPECT_EQ(a.tensors[i].offset, b.tensors[i].offset);
    EXPECT_EQ(a.tensors[i].first_rank, b.tensors[i].first_rank);
    EXPECT_EQ(a.tensors[i].last_rank, b.tensors[i].last_rank);
  }
  ASSERT_EQ(a.pieces.size(), b.pieces.size());
  for (size_t k = 0; k < a.pieces.size(); ++k) {
    ASSERT_EQ(a.pieces[k].size(), b.pieces[k].size());
    for (size_t j = 0; j < a.pieces[k].size(); ++j) {
      const ShardPiece& p = b.pieces[k][j];
      ExpectPiece(a.pieces[k][j], p.tensor, p.begin, p.end, p.chunk_offset);
    }
  }
  EXPECT_EQ(a.split_tensors, b.split_tensors);
}

TEST(ShardPlanTest, Deterministic) {
  const std::vector<TensorSpec> specs = {Spec("a", {17, 3}), Spec("b", {}), Spec("c", {2, 9, 4}),
                                         Spec("d", {11})};
  ShardPlan first = MakeChecked(specs, 7, 4);
  ShardPlan second = MakeChecked(specs, 7, 4);
  ExpectSamePlan(first, second);
}

TEST(ShardPlanTest, KeepsDTypeAndGroups) {
  const std::vector<TensorSpec> specs = {Spec("a", {4, 4}, DType::kBFloat16, 0),
                                         Spec("b", {4}, DType::kBFloat16, 3)};
  ShardPlan plan = MakeChecked(specs, 2, 8);
  EXPECT_EQ(plan.dtype, DType::kBFloat16);
  EXPECT_EQ(plan.tensors[1].spec.group, 3);
}

// Expects InvalidArgument with a message that contains every one of `parts`.
void ExpectInvalid(const std::vector<TensorSpec>& specs, int world_size, int64_t alignment,
                   std::vector<std::string> parts) {
  absl::StatusOr<ShardPlan> plan = ShardPlan::Make(specs, world_size, alignment);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << plan.status();
  for (const std::string& part : parts) {
    EXPECT_THAT(plan.status().message(), HasSubstr(part));
  }
}

TEST(ShardPlanErrorTest, NoTensors) { ExpectInvalid({}, 2, 1, {"no tensors"}); }

TEST(ShardPlanErrorTest, WorldSize) {
  ExpectInvalid({Spec("a", {4})}, 0, 1, {"world_size", "0"});
  ExpectInvalid({Spec("a", {4})}, -3, 1, {"world_size", "-3"});
}

TEST(ShardPlanErrorTest, Alignment) {
  ExpectInvalid({Spec("a", {4})}, 2, 0, {"alignment", "0"});
  ExpectInvalid({Spec("a", {4})}, 2, -8, {"alignment", "-8"});
}

TEST(ShardPlanErrorTest, NonPositiveDim) {
  ExpectInvalid({Spec("a", {4}), Spec("bad", {3, 0})}, 2, 1, {"tensor 1 'bad'", "[3, 0]"});
  ExpectInvalid({Spec("neg", {-2})}, 2, 1, {"tensor 0 'neg'", "[-2]"});
}

TEST(ShardPlanErrorTest, ElementCountOverflows) {
  ExpectInvalid({Spec("a", {4}), Spec("huge", {int64_t{1} << 32, int64_t{1} << 32})}, 2, 1,
                {"tensor 1 'huge'", "int64"});
}

TEST(ShardPlanErrorTest, TotalSizeOverflows) {
  const int64_t big = int64_t{1} << 62;
  ExpectInvalid({Spec("a", {big}), Spec("b", {big})}, 2, 1, {"tensor 1 'b'", "overflows"});
  // The alignment gap before a tensor overflows.
  ExpectInvalid({Spec("a", {kInt64Max - 1}), Spec("b", {1})}, 1, 4, {"tensor 1 'b'", "overflows"});
}

TEST(ShardPlanErrorTest, PaddedSizeOverflows) {
  // Each chunk holds 2^62 elements; two of them are 2^63.
  ExpectInvalid({Spec("a", {kInt64Max})}, 2, 1, {"overflows"});
  ExpectInvalid({Spec("a", {kInt64Max})}, 1, 2, {"overflows"});
}

TEST(ShardPlanErrorTest, MixedDTypes) {
  ExpectInvalid({Spec("a", {4}), Spec("b", {4}, DType::kFloat16)}, 2, 1,
                {"tensor 1 'b'", "float16", "float32"});
}

TEST(ShardPlanErrorTest, EmptyName) {
  ExpectInvalid({Spec("a", {4}), Spec("", {4})}, 2, 1, {"tensor 1 ''", "empty name"});
}

TEST(ShardPlanErrorTest, DuplicateName) {
  ExpectInvalid({Spec("a", {4}), Spec("b", {2}), Spec("a", {3})}, 2, 1,
                {"tensor 2 'a'", "duplicate", "tensor 0"});
}

TEST(ShardPlanErrorTest, NegativeGroup) {
  ExpectInvalid({Spec("a", {4}), Spec("g", {4}, DType::kFloat32, -1)}, 2, 1,
                {"tensor 1 'g'", "group", "-1"});
}

TEST(ShardPlanPropertyTest, RandomTensorLists) {
  std::mt19937_64 rng(20240611);
  auto uniform = [&rng](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  const int64_t alignments[] = {1, 2, 3, 4, 8, 64};
  for (int iter = 0; iter < 600; ++iter) {
    std::vector<TensorSpec> specs;
    const int count = static_cast<int>(uniform(1, 10));
    for (int i = 0; i < count; ++i) {
      std::vector<int64_t> shape(uniform(0, 4));
      // Mostly small dims, now and then a long one so a tensor spans many chunks.
      for (int64_t& d : shape) d = uniform(0, 9) == 0 ? uniform(10, 60) : uniform(1, 6);
      specs.push_back(
          Spec(absl::StrCat("t", i), shape, DType::kFloat32, static_cast<int>(uniform(0, 2))));
    }
    const int world_size = static_cast<int>(uniform(1, 9));
    const int64_t alignment = alignments[uniform(0, 5)];
    SCOPED_TRACE(absl::StrCat("iteration ", iter));
    ShardPlan plan = MakeChecked(specs, world_size, alignment);
    if (::testing::Test::HasFailure()) return;
    ExpectSamePlan(plan, MakeChecked(specs, world_size, alignment));
  }
}

}  // namespace
}  // namespace came
