// Element-wise reductions on host buffers for the CPU communicators (Note [Host
// reductions]). Pure functions; thread-safe.
//
// Note [Host reductions]
// Sum and max work on every ElemType. float16 and bfloat16 are widened to float for each
// pairwise step and rounded back (round to nearest even), as NCCL does: a ring of W ranks
// rounds W-1 times. Integer sums wrap (two's complement) instead of overflowing. kAvg is a
// sum followed by DivideInPlace on the owner's block; integer averages truncate toward zero.
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "runtime/comm/communicator.h"

namespace came::comm {

// Returns InvalidArgument unless op (kSum, kMax or kAvg) is defined on type.
absl::Status CheckReduceOp(ElemType type, ReduceOp op);

// Computes out[i] = op(a[i], b[i]) for i < count; kAvg reduces as kSum. out may alias a or b.
// With divisor > 1 each sum is divided by it in the same pass (the last step of an average;
// 16-bit sums are divided in float before they are rounded).
void ReduceElements(void* out, const void* a, const void* b, size_t count, ElemType type,
                    ReduceOp op, int divisor = 1);

// Divides count elements of buf by divisor, in place.
void DivideInPlace(void* buf, size_t count, ElemType type, int divisor);

}  // namespace came::comm
