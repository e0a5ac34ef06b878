// join_bench: wall time for N simulated ranks (threads, each with its own channel, as
// separate processes would have) to Join a real coordinator on 127.0.0.1, publish an
// address in the store and pass a rendezvous barrier. Each iteration is a fresh job
// (coordinator core and server); channel creation and connection are inside the timing,
// server start-up is not.
//
//   build-svc/bin/join_bench --benchmark_min_time=2
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "runtime/service/coordinator.h"
#include "runtime/service/coordinator_client.h"
#include "runtime/service/coordinator_server.h"
#include "runtime/service/coordinator_store.h"

namespace came::service {
namespace {

void BM_JoinAndRendezvous(benchmark::State& state) {
  const int ranks = static_cast<int>(state.range(0));
  for (auto _ : state) {
    state.PauseTiming();
    CoordinatorOptions options;
    options.world_size = ranks;
    options.token = "bench-token";
    auto core = Coordinator::Create(options);
    auto server = CoordinatorServer::Create(core->get(), {});
    if (!core.ok() || !server.ok()) {
      state.SkipWithError("cannot start a coordinator");
      return;
    }
    const std::string address = (*server)->address();
    state.ResumeTiming();

    std::vector<std::thread> threads;
    std::vector<absl::Status> results(ranks);
    for (int i = 0; i < ranks; ++i) {
      threads.emplace_back([&, i] {
        CoordinatorClientOptions client_options;
        client_options.target = address;
        client_options.token = "bench-token";
        auto client = CoordinatorClient::Create(client_options);
        if (!client.ok()) {
          results[i] = client.status();
          return;
        }
        std::shared_ptr<CoordinatorClient> shared = std::move(*client);
        JoinRequest request;
        request.world_size = ranks;
        auto joined = shared->Join(request);
        if (!joined.ok()) {
          results[i] = joined.status();
          return;
        }
        CoordinatorStore store(shared);
        results[i] = store.Set(absl::StrCat("addr/", joined->rank), "127.0.0.1:1");
        if (results[i].ok()) {
          results[i] = shared->Barrier("rendezvous", joined->rank, absl::Seconds(30));
        }
      });
    }
    for (auto& t : threads) t.join();

    state.PauseTiming();
    for (const absl::Status& s : results) {
      if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    }
    (*server)->Shutdown(absl::ZeroDuration());
    server->reset();
    state.ResumeTiming();
  }
  state.counters["ranks"] = ranks;
}
BENCHMARK(BM_JoinAndRendezvous)->Arg(8)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace came::service

BENCHMARK_MAIN();
