// Gloo reduce-scatter versus all-reduce of the same float32 buffer, W = 2 ranks as threads
// over 127.0.0.1. Rank 0 runs on the benchmark thread, rank 1 on a helper thread that makes
// the same calls; the time is rank 0's (a collective ends only when both took part).
//
//   comm_bench --benchmark_counters_tabular=true
//
// Counters: bytes_sent_per_rank (per call, from Communicator::stats), wire_bytes_per_second
// (what one rank put on the wire) and bytes_per_second (of the input buffer).
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "benchmark/benchmark.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"

namespace came::comm {
namespace {

constexpr int kWorld = 2;
constexpr absl::Duration kTimeout = absl::Seconds(60);

enum class Op { kReduceScatter, kAllReduce };

// Builds a fresh W-rank Gloo group (each benchmark gets its own connections).
std::vector<std::unique_ptr<Communicator>> MakeGroup(benchmark::State& state) {
  std::unique_ptr<InMemoryStore> store = InMemoryStore::Create();
  std::vector<absl::StatusOr<std::unique_ptr<Communicator>>> made;
  for (int r = 0; r < kWorld; ++r) made.emplace_back(absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] { made[r] = GlooCommunicator::Create(*store, r, kWorld); });
  }
  for (std::thread& t : threads) t.join();
  std::vector<std::unique_ptr<Communicator>> group;
  for (auto& m : made) {
    if (!m.ok()) {
      state.SkipWithError(m.status().ToString().c_str());
      return {};
    }
    group.push_back(std::move(*m));
  }
  return group;
}

absl::Status RunOnce(Communicator& comm, Op op, std::vector<float>& buf, std::vector<float>& out) {
  if (op == Op::kAllReduce) {
    return comm.AllReduce(buf.data(), buf.size(), ElemType::kFloat32, ReduceOp::kSum, kTimeout);
  }
  return comm.ReduceScatter(buf.data(), out.data(), buf.size() / kWorld, ElemType::kFloat32,
                            ReduceOp::kSum, kTimeout);
}

void BM_Gloo(benchmark::State& state, Op op) {
  const size_t bytes = static_cast<size_t>(state.range(0));
  const size_t count = bytes / sizeof(float);
  std::vector<std::unique_ptr<Communicator>> group = MakeGroup(state);
  if (group.empty()) return;
  std::vector<std::vector<float>> bufs(kWorld, std::vector<float>(count, 1.0f));
  std::vector<std::vector<float>> outs(kWorld, std::vector<float>(count / kWorld));
  const int64_t iterations = static_cast<int64_t>(state.max_iterations);
  std::thread peer([&] {
    for (int64_t i = 0; i < iterations; ++i) {
      if (!RunOnce(*group[1], op, bufs[1], outs[1]).ok()) return;
    }
  });
  for (auto _ : state) {
    const absl::Status status = RunOnce(*group[0], op, bufs[0], outs[0]);
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      group[0]->Abort();
      break;
    }
  }
  peer.join();
  const CollectiveKind kind =
      op == Op::kAllReduce ? CollectiveKind::kAllReduce : CollectiveKind::kReduceScatter;
  const CollectiveCounters counters = group[0]->stats().of(kind);
  const double calls = static_cast<double>(std::max<int64_t>(counters.calls, 1));
  state.counters["bytes_sent_per_rank"] = static_cast<double>(counters.bytes_sent) / calls;
  state.counters["wire_bytes_per_second"] =
      benchmark::Counter(static_cast<double>(counters.bytes_sent), benchmark::Counter::kIsRate);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes));
}

// A fixed, small iteration count (the helper rank must know it): each benchmark stays
// around a second even at 64 MiB on a busy 2-core machine.
void Sizes(benchmark::internal::Benchmark* b) {
  for (int64_t mib : {1, 4, 16, 64}) b->Arg(mib << 20);
  b->Iterations(8)->UseRealTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_Gloo, reduce_scatter, Op::kReduceScatter)->Apply(Sizes);
BENCHMARK_CAPTURE(BM_Gloo, all_reduce, Op::kAllReduce)->Apply(Sizes);

}  // namespace
}  // namespace came::comm

BENCHMARK_MAIN();
