// control_bench: the per-step control overhead of the service: a trainer's Step round trip
// through gRPC to a rank daemon, minus the time the engine spent inside the step (what
// rankd reports as the step's total). The daemon runs in this process (RankCore +
// RankService on 127.0.0.1, W = 1, callback API), the trainer talks to it through
// RankClient over a real TCP channel and shared-memory buffers, exactly as came-rankd does.
//
//   control_bench --benchmark_counters_tabular=true
//
// Counters (per step): round_trip_ms, engine_ms (inside rankd), overhead_ms (the difference:
// serialisation, the network stack, the hand-off to the engine thread and back) and
// overhead_fraction (of the round trip).
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "bench/gpt2_model.h"
#include "grpcpp/server_builder.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/rankd/rank_client.h"
#include "runtime/rankd/rank_core.h"
#include "runtime/rankd/rank_service.h"
#include "runtime/service/limits.h"

namespace came {
namespace {

constexpr char kToken[] = "control-bench-token";

struct Daemon {
  std::unique_ptr<comm::Store> store;
  std::unique_ptr<rankd::RankCore> core;
  std::unique_ptr<rankd::RankService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

std::unique_ptr<Daemon> StartDaemon(int threads) {
  auto d = std::make_unique<Daemon>();
  d->store = comm::InMemoryStore::Create();
  auto comm = comm::GlooCommunicator::Create(*d->store, 0, 1);
  if (!comm.ok()) return nullptr;
  rankd::RankCoreOptions o;
  o.num_threads = threads;
  o.shm_prefix = "/came-control-bench-" + std::to_string(getpid());
  auto core = rankd::RankCore::Create(o, *std::move(comm), nullptr);
  if (!core.ok()) return nullptr;
  d->core = *std::move(core);
  d->service = std::make_unique<rankd::RankService>(d->core.get(), kToken);
  grpc::ServerBuilder b;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &d->port);
  b.SetMaxReceiveMessageSize(static_cast<int>(service::kMaxMessageBytes));
  b.RegisterService(d->service.get());
  d->server = b.BuildAndStart();
  return d->server ? std::move(d) : nullptr;
}

void RunControl(benchmark::State& state, const std::vector<bench::ModelTensor>& model,
                int threads) {
  auto daemon = StartDaemon(threads);
  if (!daemon) return state.SkipWithError("cannot start the in-process rank daemon");
  rankd::RankClientOptions co;
  co.address = "127.0.0.1:" + std::to_string(daemon->port);
  co.token = kToken;
  auto client = rankd::RankClient::Connect(co);
  if (!client.ok()) return state.SkipWithError("cannot connect");
  rankd::Manifest m;
  int64_t params = 0;
  for (const auto& t : model) {
    m.tensors.push_back({t.name, t.shape, DType::kFloat32, 0});
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    params += n;
  }
  CameHyper h;
  h.lr = 1e-4;
  m.groups = {h};
  if (!(*client)->Attach(m).ok()) return state.SkipWithError("Attach failed");
  for (const auto& t : model) {
    auto p = (*client)->param(t.name);
    auto g = (*client)->grad(t.name);
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] = 0.02f * static_cast<float>((i * 2654435761u) % 1000) / 1000.0f;
      g[i] = 1e-3f * (static_cast<float>((i * 40503u) % 2000) / 1000.0f - 1.0f);
    }
  }
  if (!(*client)->SyncParameters().ok()) return state.SkipWithError("SyncParameters failed");
  int64_t step = 0;
  double round_trip = 0, engine = 0;
  // One untimed step: first-touch of the optimizer state.
  if (!(*client)->Step(++step, {h.lr}).ok()) return state.SkipWithError("Step failed");
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = (*client)->Step(++step, {h.lr});
    const double rt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!r.ok()) return state.SkipWithError("Step failed");
    state.SetIterationTime(rt);
    round_trip += rt;
    engine += r->seconds;
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["params"] = static_cast<double>(params);
  state.counters["round_trip_ms"] = 1e3 * round_trip / n;
  state.counters["engine_ms"] = 1e3 * engine / n;
  state.counters["overhead_ms"] = 1e3 * (round_trip - engine) / n;
  state.counters["overhead_fraction"] = (round_trip - engine) / round_trip;
  (void)(*client)->Detach();
}

void BM_control_gpt2_small(benchmark::State& state) {
  RunControl(state, bench::Gpt2Shapes(50257, 1024, 768, 12), static_cast<int>(state.range(0)));
}
BENCHMARK(BM_control_gpt2_small)->Arg(2)->Iterations(5)->UseManualTime()->Unit(benchmark::kMillisecond);

// A tiny model: the step is nearly all control overhead.
void BM_control_tiny(benchmark::State& state) {
  RunControl(state, {{"w", {16, 16}}, {"b", {16}}}, 1);
}
BENCHMARK(BM_control_tiny)->Iterations(200)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace came

BENCHMARK_MAIN();
