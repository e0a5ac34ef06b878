// CudaMover: the MemoryMover (memory_mover.h) for device buffers of one CUDA device: copies
// are cudaMemcpyAsync on the caller's stream, staging memory is page-locked
// (cudaMallocHost), and Wait polls the stream with cudaStreamQuery until its deadline (never
// a blocking cudaStreamSynchronize). Only built when CAME_WITH_CUDA is ON.
//
// Thread-safety: one thread at a time.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "runtime/comm/memory_mover.h"

struct CUstream_st;  // cudaStream_t

namespace came::comm {

// Returns a mover on `device` that queues its copies on `stream` (not owned; null: the
// legacy default stream). InvalidArgument when the device does not exist.
absl::StatusOr<std::unique_ptr<MemoryMover>> MakeCudaMover(int device, CUstream_st* stream);

}  // namespace came::comm
