#include "runtime/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/cuda/device_scope.h"
#include "runtime/comm/status_macros.h"

// Note [NCCL deadlines]
// NCCL collectives block the GPU, not the host, and a missing peer makes them spin forever.
// So the communicator is created non-blocking (config.blocking = 0) and every wait is a
// poll with a deadline:
//  - init: ncclCommInitRankConfig returns at once; ncclCommGetAsyncError is polled until it
//    leaves ncclInProgress;
//  - each collective is enqueued on the communicator's own stream (a non-blocking enqueue
//    may itself report ncclInProgress, polled the same way), then cudaStreamQuery and
//    ncclCommGetAsyncError are polled until the stream is idle;
//  - on the deadline, on an asynchronous NCCL error, or when Abort was requested, the
//    polling thread calls ncclCommAbort (which kills the kernels) and the call returns
//    DeadlineExceeded / Internal / Aborted; every later call returns Aborted.
// Abort from another thread only raises abort_requested_ while a collective is in flight,
// so that ncclCommAbort never races with the poller's use of the communicator.
// Polling sleeps 20 us between checks: cheap next to the collectives this runtime issues.

namespace came::comm {
namespace {

constexpr absl::Duration kPollInterval = absl::Microseconds(20);

absl::Status CudaError(cudaError_t err, std::string_view what) {
  return absl::InternalError(
      absl::StrCat(std::string(what), ": ", cudaGetErrorName(err), " ", cudaGetErrorString(err)));
}

absl::Status NcclError(ncclResult_t res, ncclComm_t comm, std::string_view what) {
  const char* last = comm != nullptr ? ncclGetLastError(comm) : nullptr;
  return absl::InternalError(absl::StrCat(std::string(what), ": ", ncclGetErrorString(res),
                                          last != nullptr && *last ? ": " : "",
                                          last != nullptr ? last : ""));
}

ncclDataType_t NcclType(ElemType type) {
  switch (type) {
    case ElemType::kFloat32: return ncclFloat32;
    case ElemType::kFloat64: return ncclFloat64;
    case ElemType::kFloat16: return ncclFloat16;
    case ElemType::kBFloat16: return ncclBfloat16;
    case ElemType::kInt32: return ncclInt32;
    case ElemType::kInt64: return ncclInt64;
    case ElemType::kUInt8: return ncclUint8;
  }
  return ncclFloat32;
}

absl::StatusOr<ncclRedOp_t> NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kAvg: return ncclAvg;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown reduce op ", static_cast<int>(op)));
}

absl::Status CheckArgs(const void* a, const void* b, size_t count, ElemType type) {
  if (ElemSize(type) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown element type ", static_cast<int>(type)));
  }
  if (count > 0 && (a == nullptr || b == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("null buffer with count ", count));
  }
  return absl::OkStatus();
}

using DeviceGuard = ::came::cuda::DeviceScope;

// Polls the communicator's asynchronous state until it leaves ncclInProgress.
absl::Status PollComm(ncclComm_t comm, absl::Time deadline, std::string_view what) {
  while (true) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t res = ncclCommGetAsyncError(comm, &state);
    if (res != ncclSuccess) return NcclError(res, comm, what);
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclError(state, comm, what);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(std::string(what), " timed out"));
    }
    absl::SleepFor(kPollInterval);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Create(Store& store, int rank,
                                                                       int size, int device,
                                                                       absl::Duration timeout) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("bad rank ", rank, " of size ", size));
  }
  if (timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("timeout must be > 0");
  const absl::Time deadline = absl::Now() + timeout;
  int devices = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&devices);
  if (count_err != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no CUDA device: ", count_err != cudaSuccess ? cudaGetErrorString(count_err) : "0"));
  }
  if (device < 0 || device >= devices) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " not in [0, ", devices, ")"));
  }
  if (cudaError_t err = cudaSetDevice(device); err != cudaSuccess) {
    return CudaError(err, "cudaSetDevice");
  }

  ncclUniqueId id;
  if (rank == 0) {
    if (ncclResult_t res = ncclGetUniqueId(&id); res != ncclSuccess) {
      return NcclError(res, nullptr, "ncclGetUniqueId");
    }
    CAME_COMM_RETURN_IF_ERROR(
        store.Set(kUniqueIdKey, std::string_view(reinterpret_cast<const char*>(&id), sizeof id)));
  } else {
    absl::StatusOr<std::string> bytes = store.Get(kUniqueIdKey, deadline - absl::Now());
    if (!bytes.ok()) return bytes.status();
    if (bytes->size() != sizeof id) {
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL unique id has ", bytes->size(), " bytes, want ", sizeof id));
    }
    std::memcpy(&id, bytes->data(), sizeof id);
  }

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const ncclResult_t init = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  if (init != ncclSuccess && init != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);
    return NcclError(init, nullptr, "ncclCommInitRankConfig");
  }
  if (absl::Status ready = PollComm(comm, deadline, "NCCL communicator init"); !ready.ok()) {
    ncclCommAbort(comm);
    return absl::Status(ready.code(),
                        absl::StrCat("rank ", rank, " of ", size, ": ", ready.message()));
  }

  cudaStream_t stream = nullptr;
  if (cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      err != cudaSuccess) {
    ncclCommAbort(comm);
    return CudaError(err, "cudaStreamCreate");
  }
  void* barrier_buf = nullptr;
  if (cudaError_t err = cudaMalloc(&barrier_buf, sizeof(int32_t)); err != cudaSuccess) {
    cudaStreamDestroy(stream);
    ncclCommAbort(comm);
    return CudaError(err, "cudaMalloc");
  }
  cudaMemset(barrier_buf, 0, sizeof(int32_t));
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(rank, size, device, comm, stream, barrier_buf));
}

NcclCommunicator::NcclCommunicator(int rank, int size, int device, ncclComm* comm,
                                   CUstream_st* stream, void* barrier_buf)
    : rank_(rank),
      size_(size),
      device_(device),
      stream_(stream),
      barrier_buf_(barrier_buf),
      comm_(comm) {}

NcclCommunicator::~NcclCommunicator() {
  DeviceGuard guard(device_);
  {
    absl::MutexLock lock(&mu_);
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  cudaStreamDestroy(stream_);
  cudaFree(barrier_buf_);
}

void NcclCommunicator::AbortLocked(const absl::Status& cause) {
  if (broken_.ok()) broken_ = cause;
  if (comm_ != nullptr) ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclCommunicator::Abort() {
  absl::MutexLock lock(&mu_);
  if (in_flight_) {
    abort_requested_.store(true);
    return;
  }
  DeviceGuard guard(device_);
  AbortLocked(absl::AbortedError("Abort() was called"));
}

CommStats NcclCommunicator::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

template <typename Enqueue>
absl::Status NcclCommunicator::Run(CollectiveKind kind, absl::Duration timeout, int64_t bytes_sent,
                                   Enqueue&& enqueue) {
  const std::string name(CollectiveName(kind));
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": timeout must be positive"));
  }
  ncclComm_t comm = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) {
      return absl::AbortedError(absl::StrCat("communicator unusable: ", broken_.ToString()));
    }
    in_flight_ = true;
    comm = comm_;
  }
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  absl::Status status;
  DeviceGuard guard(device_);
  if (guard.error() != cudaSuccess) {
    status = CudaError(guard.error(), "cudaSetDevice");
  } else {
    const ncclResult_t res = enqueue(comm);
    if (res != ncclSuccess && res != ncclInProgress) {
      status = NcclError(res, comm, name);
    } else {
      status = PollComm(comm, deadline, name);
    }
    // Poll the stream until the collective finished (Note [NCCL deadlines]).
    while (status.ok()) {
      const cudaError_t query = cudaStreamQuery(stream_);
      if (query == cudaSuccess) break;
      if (query != cudaErrorNotReady) {
        status = CudaError(query, name);
        break;
      }
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        status = NcclError(async, comm, name);
      } else if (abort_requested_.load()) {
        status = absl::AbortedError(absl::StrCat(name, ": Abort() was called"));
      } else if (absl::Now() >= deadline) {
        status = absl::DeadlineExceededError(absl::StrCat(name, " on rank ", rank_, " of ", size_,
                                                          " timed out after ",
                                                          absl::FormatDuration(timeout)));
      } else {
        absl::SleepFor(kPollInterval);
      }
    }
  }
  absl::MutexLock lock(&mu_);
  in_flight_ = false;
  if (status.ok() && abort_requested_.load()) {
    status = absl::AbortedError(absl::StrCat(name, ": Abort() was called"));
  }
  if (!status.ok()) AbortLocked(status);
  CollectiveCounters& counters = stats_.by_kind[static_cast<size_t>(kind)];
  ++counters.calls;
  if (status.ok()) counters.bytes_sent += bytes_sent;
  counters.seconds += absl::ToDoubleSeconds(absl::Now() - start);
  return status;
}

absl::Status NcclCommunicator::AllReduce(void* buf, size_t count, ElemType type, ReduceOp op,
                                         absl::Duration timeout) {
  CAME_COMM_RETURN_IF_ERROR(CheckArgs(buf, buf, count, type));
  absl::StatusOr<ncclRedOp_t> nccl_op = NcclOp(op);
  if (!nccl_op.ok()) return nccl_op.status();
  const int64_t bytes = static_cast<int64_t>(count * ElemSize(type));
  const int64_t sent = 2 * (size_ - 1) * bytes / size_;
  return Run(CollectiveKind::kAllReduce, timeout, sent, [&](ncclComm_t comm) {
    if (count == 0) return ncclSuccess;
    return ncclAllReduce(buf, buf, count, NcclType(type), *nccl_op, comm, stream_);
  });
}

absl::Status NcclCommunicator::ReduceScatter(const void* send, void* recv, size_t recv_count,
                                             ElemType type, ReduceOp op, absl::Duration timeout) {
  CAME_COMM_RETURN_IF_ERROR(CheckArgs(send, recv, recv_count, type));
  absl::StatusOr<ncclRedOp_t> nccl_op = NcclOp(op);
  if (!nccl_op.ok()) return nccl_op.status();
  const int64_t sent = (size_ - 1) * static_cast<int64_t>(recv_count * ElemSize(type));
  return Run(CollectiveKind::kReduceScatter, timeout, sent, [&](ncclComm_t comm) {
    if (recv_count == 0) return ncclSuccess;
    return ncclReduceScatter(send, recv, recv_count, NcclType(type), *nccl_op, comm, stream_);
  });
}

absl::Status NcclCommunicator::AllGather(const void* send, void* recv, size_t send_count,
                                         ElemType type, absl::Duration timeout) {
  CAME_COMM_RETURN_IF_ERROR(CheckArgs(send, recv, send_count, type));
  const int64_t sent = (size_ - 1) * static_cast<int64_t>(send_count * ElemSize(type));
  return Run(CollectiveKind::kAllGather, timeout, sent, [&](ncclComm_t comm) {
    if (send_count == 0) return ncclSuccess;
    return ncclAllGather(send, recv, send_count, NcclType(type), comm, stream_);
  });
}

absl::Status NcclCommunicator::Broadcast(void* buf, size_t count, ElemType type, int root,
                                         absl::Duration timeout) {
  CAME_COMM_RETURN_IF_ERROR(CheckArgs(buf, buf, count, type));
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("broadcast root ", root, " not in [0, ", size_, ")"));
  }
  const int64_t sent = size_ > 1 ? static_cast<int64_t>(count * ElemSize(type)) : 0;
  return Run(CollectiveKind::kBroadcast, timeout, sent, [&](ncclComm_t comm) {
    if (count == 0) return ncclSuccess;
    return ncclBroadcast(buf, buf, count, NcclType(type), root, comm, stream_);
  });
}

absl::Status NcclCommunicator::Barrier(absl::Duration timeout) {
  const int64_t sent = 2 * (size_ - 1) * static_cast<int64_t>(sizeof(int32_t)) / size_;
  return Run(CollectiveKind::kBarrier, timeout, sent, [&](ncclComm_t comm) {
    return ncclAllReduce(barrier_buf_, barrier_buf_, 1, ncclInt32, ncclSum, comm, stream_);
  });
}

}  // namespace came::comm
