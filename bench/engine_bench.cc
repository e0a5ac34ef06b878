// The sharded CAME engine over Gloo with one process per rank (bench/run_engine_bench.sh
// starts them): the time of one ShardedCame::Step split by phase, the bytes each collective
// kind sends per rank, and the optimizer state each rank keeps, for GPT-2 small.
//
//   engine_bench --rank=0 --world=2 --store-dir=/tmp/s --model=gpt2_small --dtype=float32
//       --threads=1 --iterations=4 --benchmark_counters_tabular=true
//
// Every rank runs the same benchmark with a fixed iteration count (plus --warmup untimed
// steps), so the ranks call Step equally often and stay in lockstep; only rank 0 reports.
// The gradient buffer is filled once with rank-dependent values: the in-place reduce-scatter
// overwrites only the rank's own chunk with the (finite) average, so later steps see the same
// amount of work and traffic.
//
// Counters, per step (time: rank 0's; a collective ends only when every rank took part):
//   step_s, rs_s, stats_s, kernels_s, ag_s   EngineStepStats::seconds
//   rs_B, stats_B, ag_B                      payload bytes rank 0 sent, per collective kind
//   zero_ideal_B = 2 (W-1)/W * P * bytes per element (ring reduce-scatter + all-gather)
//   comm_vs_ideal = (rs_B + ag_B) / zero_ideal_B
//   stats_frac = stats_B / rs_B              statistics traffic over gradient traffic
//   state_B, state_max_B                     ShardedCame::state_bytes(): rank 0, max over ranks
//   adam_zero_B = 8P/W (+ 4P/W fp32 master for 16-bit parameters): Adam under ZeRO
//   target_B = 4P/W (+ 4P/W master) + (factored row/column vectors + second moment of the
//              unfactored tensors) / W
//   state_vs_target = state_max_B / target_B; state_vs_adam = state_max_B / adam_zero_B
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "benchmark/benchmark.h"
#include "bench/gpt2_model.h"
#include "kernels/dtype.h"
#include "runtime/comm/file_store.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/shard_plan.h"
#include "runtime/sharded_came.h"

namespace came {
namespace {

struct Flags {
  int rank = -1;
  int world = 0;
  std::string store_dir;
  std::string model = "gpt2_small";
  DType dtype = DType::kFloat32;
  int threads = 1;
  int iterations = 4;
  int warmup = 1;
  int timeout_s = 300;
};

constexpr std::string_view kUsage =
    "engine_bench --rank=R --world=W --store-dir=DIR [--model=gpt2_small|small]\n"
    "             [--dtype=float32|bfloat16] [--threads=N] [--iterations=N] [--warmup=N]\n"
    "             [--timeout_s=S] [--benchmark_* flags]\n";

// Removes this benchmark's flags from argv (the rest goes to benchmark::Initialize).
// Returns an error message, or "" when the flags are complete and valid.
std::string ParseFlags(int* argc, char** argv, Flags* f) {
  int out = 1;
  std::string error;
  for (int i = 1; i < *argc; ++i) {
    const std::string arg = argv[i];
    auto value_of = [&](const std::string& name, std::string* value) {
      const std::string prefix = "--" + name + "=";
      if (arg.compare(0, prefix.size(), prefix) != 0) return false;
      *value = arg.substr(prefix.size());
      return true;
    };
    auto int_flag = [&](const std::string& name, int* dst) {
      std::string v;
      if (!value_of(name, &v)) return false;
      if (!absl::SimpleAtoi(v, dst)) error = "--" + name + ": not an integer: " + v;
      return true;
    };
    std::string v;
    if (int_flag("rank", &f->rank) || int_flag("world", &f->world) ||
        int_flag("threads", &f->threads) || int_flag("iterations", &f->iterations) ||
        int_flag("warmup", &f->warmup) || int_flag("timeout_s", &f->timeout_s)) {
    } else if (value_of("store-dir", &v)) {
      f->store_dir = v;
    } else if (value_of("model", &v)) {
      f->model = v;
    } else if (value_of("dtype", &v)) {
      std::optional<DType> t = ParseDType(v);
      if (!t) error = "--dtype: unknown dtype " + v;
      else f->dtype = *t;
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  argv[out] = nullptr;
  if (!error.empty()) return error;
  if (f->world < 1) return "--world must be >= 1";
  if (f->rank < 0 || f->rank >= f->world) return "--rank must be in [0, world)";
  if (f->store_dir.empty()) return "--store-dir is required";
  if (f->model != "gpt2_small" && f->model != "small") return "--model: gpt2_small or small";
  if (f->threads < 1 || f->iterations < 1 || f->warmup < 0 || f->timeout_s < 1)
    return "--threads, --iterations, --timeout_s must be >= 1 and --warmup >= 0";
  return "";
}

// GPT-2's parameters (bench/gpt2_model.h) as one group of `dtype` tensors.
std::vector<TensorSpec> Gpt2Tensors(int64_t vocab, int64_t context, int64_t d, int blocks,
                                    DType dtype) {
  std::vector<TensorSpec> t;
  for (auto& m : came::bench::Gpt2Shapes(vocab, context, d, blocks))
    t.push_back(TensorSpec{std::move(m.name), std::move(m.shape), dtype, 0});
  return t;
}

// Returns a uniform value in [-1, 1) from a counter (splitmix64): cheap and deterministic.
float Uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-52 - 1.0);
}

// Fills the used part of a flat buffer; padding stays zero.
void Fill(const ShardPlan& plan, std::vector<uint8_t>& buf, uint64_t seed, float scale) {
  for (const auto& t : plan.tensors)
    for (int64_t i = 0; i < t.geom.numel; ++i)
      StoreFromFloat(buf.data(), plan.dtype, t.offset + i, scale * Uniform(seed, t.offset + i));
}

struct Setup {
  Flags flags;
  ShardPlan plan;
  int64_t params = 0;        // P: parameters of the model
  int64_t factored_vec = 0;  // sum over factored tensors of rows + cols
  int64_t unfactored = 0;    // elements of unfactored tensors
  std::unique_ptr<comm::Store> store;
  std::unique_ptr<comm::Communicator> comm;
  std::vector<uint8_t> param_buf, grad_buf;
  std::unique_ptr<ShardedCame> engine;
  std::vector<StateBytes> state_of_rank;
  EngineStepStats last;
  bool failed = false;
};

absl::Status Build(Setup& s) {
  const Flags& f = s.flags;
  std::vector<TensorSpec> tensors = f.model == "gpt2_small"
                                        ? Gpt2Tensors(50257, 1024, 768, 12, f.dtype)
                                        : Gpt2Tensors(1000, 128, 64, 2, f.dtype);
  absl::StatusOr<ShardPlan> plan = ShardPlan::Make(std::move(tensors), f.world, 64);
  if (!plan.ok()) return plan.status();
  s.plan = *std::move(plan);
  for (const auto& t : s.plan.tensors) {
    s.params += t.geom.numel;
    if (t.geom.factored) s.factored_vec += t.geom.stats_size();
    else s.unfactored += t.geom.numel;
  }

  absl::StatusOr<std::unique_ptr<comm::FileStore>> store = comm::FileStore::Create(f.store_dir);
  if (!store.ok()) return store.status();
  s.store = *std::move(store);
  comm::GlooOptions gloo;
  gloo.connect_timeout = absl::Seconds(f.timeout_s);
  absl::StatusOr<std::unique_ptr<comm::Communicator>> c =
      comm::GlooCommunicator::Create(*s.store, f.rank, f.world, gloo);
  if (!c.ok()) return c.status();
  s.comm = *std::move(c);

  const size_t bytes = s.plan.padded_size * DTypeSize(s.plan.dtype);
  s.param_buf.assign(bytes, 0);
  s.grad_buf.assign(bytes, 0);
  Fill(s.plan, s.param_buf, 1, 0.02f);  // the same parameters on every rank
  Fill(s.plan, s.grad_buf, 100 + f.rank, 1e-3f);

  EngineOptions options;
  options.groups = {CameHyper{.lr = 1e-4}};
  options.num_threads = f.threads;
  options.collective_timeout = absl::Seconds(f.timeout_s);
  absl::StatusOr<std::unique_ptr<ShardedCame>> engine = ShardedCame::Create(
      s.plan, s.comm.get(), s.param_buf.data(), s.grad_buf.data(), std::move(options));
  if (!engine.ok()) return engine.status();
  s.engine = *std::move(engine);

  // Every rank's state bytes (outside Step, so the per-step byte counts stay clean).
  const StateBytes mine = s.engine->state_bytes();
  std::vector<int64_t> send = {mine.master, mine.momentum, mine.second_moment, mine.factored};
  std::vector<int64_t> all(4 * f.world);
  if (absl::Status st = s.comm->AllGather(send.data(), all.data(), 4, comm::ElemType::kInt64,
                                          absl::Seconds(f.timeout_s));
      !st.ok())
    return st;
  for (int r = 0; r < f.world; ++r)
    s.state_of_rank.push_back(StateBytes{all[4 * r], all[4 * r + 1], all[4 * r + 2], all[4 * r + 3]});

  for (int i = 0; i < f.warmup; ++i) {
    absl::StatusOr<EngineStepStats> st = s.engine->Step(StepInputs{.step = i, .lr = {}});
    if (!st.ok()) return st.status();
  }
  return absl::OkStatus();
}

// Prints the plan (which tensors the chunk boundaries split) and every rank's state.
void PrintPlan(const Setup& s) {
  const ShardPlan& p = s.plan;
  std::printf("model %s, dtype %s, P = %lld parameters in %zu tensors, W = %d, alignment %lld\n",
              s.flags.model.c_str(), std::string(DTypeName(p.dtype)).c_str(),
              static_cast<long long>(s.params), p.tensors.size(), p.world_size,
              static_cast<long long>(p.alignment));
  std::printf("chunk_size %lld, padded_size %lld, used_size %lld\n",
              static_cast<long long>(p.chunk_size), static_cast<long long>(p.padded_size),
              static_cast<long long>(p.used_size));
  if (p.split_tensors.empty()) std::printf("split tensors: none\n");
  for (int t : p.split_tensors) {
    const auto& x = p.tensors[t];
    std::printf("split tensor: %s %s, flat [%lld, %lld), ranks %d..%d:", x.spec.name.c_str(),
                ShapeString(x.spec.shape).c_str(), static_cast<long long>(x.offset),
                static_cast<long long>(x.end()), x.first_rank, x.last_rank);
    for (int r = x.first_rank; r <= x.last_rank; ++r)
      for (const ShardPiece& piece : p.pieces[r])
        if (piece.tensor == t)
          std::printf(" rank %d elements [%lld, %lld)", r, static_cast<long long>(piece.begin),
                      static_cast<long long>(piece.end));
    std::printf("\n");
  }
  for (int r = 0; r < p.world_size; ++r) {
    const StateBytes& b = s.state_of_rank[r];
    std::printf("rank %d state bytes: master %lld, momentum %lld, second_moment %lld, "
                "factored %lld, total %lld\n",
                r, static_cast<long long>(b.master), static_cast<long long>(b.momentum),
                static_cast<long long>(b.second_moment), static_cast<long long>(b.factored),
                static_cast<long long>(b.total()));
  }
  std::fflush(stdout);
}

void BM_EngineStep(benchmark::State& state, Setup* s) {
  const int w = s->flags.world;
  const bool low = s->plan.dtype != DType::kFloat32;
  const double elem = static_cast<double>(DTypeSize(s->plan.dtype));
  const double p = static_cast<double>(s->params);
  PhaseTimes sum;
  int64_t rs = 0, st = 0, ag = 0, steps = 0, skipped = 0;
  int64_t step = s->flags.warmup;
  for (auto _ : state) {
    absl::StatusOr<EngineStepStats> r = s->engine->Step(StepInputs{.step = step++, .lr = {}});
    if (!r.ok()) {
      s->failed = true;
      s->comm->Abort();
      state.SkipWithError(r.status().ToString().c_str());
      break;
    }
    sum.reduce_scatter += r->seconds.reduce_scatter;
    sum.stats_all_reduce += r->seconds.stats_all_reduce;
    sum.kernels += r->seconds.kernels;
    sum.all_gather += r->seconds.all_gather;
    sum.total += r->seconds.total;
    rs += r->bytes_reduce_scatter;
    st += r->bytes_stats;
    ag += r->bytes_all_gather;
    skipped += r->skipped ? 1 : 0;
    ++steps;
    s->last = *r;
  }
  if (steps == 0) return;
  const double n = static_cast<double>(steps);
  auto& c = state.counters;
  c["step_s"] = sum.total / n;
  c["rs_s"] = sum.reduce_scatter / n;
  c["stats_s"] = sum.stats_all_reduce / n;
  c["kernels_s"] = sum.kernels / n;
  c["ag_s"] = sum.all_gather / n;
  c["rs_B"] = rs / n;
  c["stats_B"] = st / n;
  c["ag_B"] = ag / n;
  const double ideal = 2.0 * (w - 1) / w * p * elem;
  c["zero_ideal_B"] = ideal;
  if (w > 1) c["comm_vs_ideal"] = (rs + ag) / n / ideal;
  if (rs > 0) c["stats_frac"] = static_cast<double>(st) / static_cast<double>(rs);
  int64_t state_max = 0;
  for (const StateBytes& b : s->state_of_rank) state_max = std::max(state_max, b.total());
  const double adam = (8.0 + (low ? 4.0 : 0.0)) * p / w;
  const double target =
      (4.0 + (low ? 4.0 : 0.0)) * p / w +
      4.0 * (2.0 * static_cast<double>(s->factored_vec) + static_cast<double>(s->unfactored)) / w;
  c["state_B"] = static_cast<double>(s->state_of_rank[0].total());
  c["state_max_B"] = static_cast<double>(state_max);
  c["adam_zero_B"] = adam;
  c["target_B"] = target;
  c["state_vs_target"] = state_max / target;
  c["state_vs_adam"] = state_max / adam;
  c["skipped"] = static_cast<double>(skipped);
}

// Swallows the output of ranks other than 0: they run the same benchmarks in lockstep.
class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace
}  // namespace came

int main(int argc, char** argv) {
  came::Setup s;
  if (std::string error = came::ParseFlags(&argc, argv, &s.flags); !error.empty()) {
    std::fprintf(stderr, "engine_bench: %s\n%s", error.c_str(), came::kUsage.data());
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  if (absl::Status st = came::Build(s); !st.ok()) {
    std::fprintf(stderr, "engine_bench rank %d: %s\n", s.flags.rank, st.ToString().c_str());
    if (s.comm) s.comm->Abort();
    return 1;
  }
  if (s.flags.rank == 0) came::PrintPlan(s);

  const std::string name =
      absl::StrCat("BM_EngineStep/", s.flags.model, "/", std::string(came::DTypeName(s.plan.dtype)),
                   "/world:", s.flags.world, "/threads:", s.flags.threads);
  benchmark::RegisterBenchmark(name.c_str(), came::BM_EngineStep, &s)
      ->Iterations(s.flags.iterations)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  if (s.flags.rank == 0) {
    benchmark::RunSpecifiedBenchmarks();
    const came::EngineStepStats& l = s.last;
    std::printf("last step (rank 0): total %.4f s = reduce_scatter %.4f + stats_all_reduce %.4f"
                " + kernels %.4f + all_gather %.4f; bytes sent: reduce_scatter %lld,"
                " stats %lld, all_gather %lld\n",
                l.seconds.total, l.seconds.reduce_scatter, l.seconds.stats_all_reduce,
                l.seconds.kernels, l.seconds.all_gather,
                static_cast<long long>(l.bytes_reduce_scatter),
                static_cast<long long>(l.bytes_stats),
                static_cast<long long>(l.bytes_all_gather));
  } else {
    came::SilentReporter silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  return s.failed ? 1 : 0;
}
