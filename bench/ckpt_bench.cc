// ckpt_bench: checkpoint save and load of GPT-2 small (124M parameters, fp32) at W = 2 (ranks as
// threads: LocalCluster), next to the baseline of writing and fsyncing the same bytes with
// plain write(2) in the same run (BM_RawWriteFsync): the ratio is what the checkpoint format
// (headers, SHA-256, temporary files, renames, folder fsyncs) costs over the disk itself.
//   ckpt_bench [--dir=FOLDER] [benchmark flags]     (default folder: /tmp)
// Results: docs/PERF.md.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "bench/gpt2_model.h"
#include "nlohmann/json.hpp"
#include "runtime/checkpoint.h"
#include "runtime/local_cluster.h"

namespace came {
namespace {

namespace fs = std::filesystem;
constexpr int kWorld = 2;

std::string g_dir = "/tmp";

struct Fixture {
  std::unique_ptr<LocalCluster> cluster;
  fs::path dir;
  std::string manifest;
  int64_t bytes = 0;  // of all shards
  std::vector<int64_t> shard_bytes;
};

Fixture& Get() {
  static Fixture* f = [] {
    auto* x = new Fixture;
    std::vector<TensorSpec> specs;
    std::vector<std::vector<double>> initial;
    for (const auto& t : bench::Gpt2Shapes(50257, 1024, 768, 12)) {
      specs.push_back({t.name, t.shape, DType::kFloat32, 0});
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      initial.emplace_back(n, 0.01);
    }
    EngineOptions o;
    CameHyper h;
    h.lr = 1e-3;
    o.groups = {h};
    auto c = LocalCluster::Create(specs, kWorld, 16, initial, o);
    if (!c.ok()) {
      std::fprintf(stderr, "ckpt_bench: %s\n", c.status().ToString().c_str());
      std::exit(1);
    }
    x->cluster = *std::move(c);
    x->dir = fs::path(g_dir) / absl::StrCat("came-ckpt-bench-", getpid());
    fs::create_directories(x->dir);
    return x;
  }();
  return *f;
}

// Saves every rank's shard concurrently (as the ranks do) and writes the manifest.
void Save(Fixture& f) {
  std::vector<absl::StatusOr<ShardFile>> out(kWorld, absl::UnknownError(""));
  std::vector<std::thread> th;
  for (int r = 0; r < kWorld; ++r)
    th.emplace_back([&, r] {
      out[r] = WriteShard(f.cluster->engine(r), 1, (f.dir / absl::StrCat("rank-", r, ".safetensors")).string());
    });
  for (auto& t : th) t.join();
  nlohmann::json shards = nlohmann::json::array();
  f.bytes = 0;
  f.shard_bytes.clear();
  for (int r = 0; r < kWorld; ++r) {
    if (!out[r].ok()) {
      std::fprintf(stderr, "ckpt_bench: %s\n", out[r].status().ToString().c_str());
      std::exit(1);
    }
    f.bytes += out[r]->bytes;
    f.shard_bytes.push_back(out[r]->bytes);
    shards.push_back({{"rank", r}, {"file", absl::StrCat("rank-", r, ".safetensors")},
                      {"bytes", out[r]->bytes}, {"sha256", out[r]->sha256}});
  }
  nlohmann::json m = {{"format", "came-checkpoint-manifest"}, {"format_version", 1}, {"step", 1},
                      {"world_size", kWorld}, {"plan_alignment", 16}, {"shards", shards}};
  f.manifest = (f.dir / "manifest.json").string();
  FILE* file = std::fopen(f.manifest.c_str(), "w");
  std::fputs(m.dump().c_str(), file);
  std::fclose(file);
}

void BM_SaveCheckpoint(benchmark::State& state) {
  Fixture& f = Get();
  for (auto _ : state) Save(f);
  state.counters["bytes"] = static_cast<double>(f.bytes);
  state.SetBytesProcessed(state.iterations() * f.bytes);
}

void BM_LoadCheckpoint(benchmark::State& state) {
  Fixture& f = Get();
  if (f.manifest.empty()) Save(f);
  for (auto _ : state) {
    auto m = ReadCheckpointManifest(f.manifest);
    if (!m.ok() || !VerifyShards(*m).ok()) state.SkipWithError("cannot read the checkpoint");
    std::vector<std::thread> th;
    std::vector<absl::Status> st(kWorld);
    for (int r = 0; r < kWorld; ++r)
      th.emplace_back([&, r] {
        auto load = ReadShards(f.cluster->engine(r), *m);
        st[r] = load.ok() ? ApplyShards(f.cluster->engine(r), *load) : load.status();
        if (st[r].ok()) st[r] = f.cluster->engine(r).GatherParameters();
      });
    for (auto& t : th) t.join();
    for (auto& s : st)
      if (!s.ok()) state.SkipWithError(s.ToString().c_str());
  }
  state.counters["bytes"] = static_cast<double>(f.bytes);
  state.SetBytesProcessed(state.iterations() * f.bytes);
}

// The baseline: the same bytes, one file per rank written concurrently, with write(2) from
// memory and one fsync each.
void BM_RawWriteFsync(benchmark::State& state) {
  Fixture& f = Get();
  if (f.manifest.empty()) Save(f);
  const int64_t largest = *std::max_element(f.shard_bytes.begin(), f.shard_bytes.end());
  std::vector<char> buf(static_cast<size_t>(largest), 1);
  for (auto _ : state) {
    std::vector<std::thread> th;
    for (int r = 0; r < kWorld; ++r)
      th.emplace_back([&, r] {
        const std::string path = (f.dir / absl::StrCat("raw-", r)).string();
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        for (int64_t left = f.shard_bytes[r], off = 0; left > 0 && fd >= 0;) {
          const ssize_t w = ::write(fd, buf.data() + off, static_cast<size_t>(std::min<int64_t>(left, 1 << 24)));
          if (w <= 0) break;
          left -= w;
          off += w;
        }
        if (fd >= 0) {
          ::fsync(fd);
          ::close(fd);
        }
      });
    for (auto& t : th) t.join();
  }
  state.counters["bytes"] = static_cast<double>(f.bytes);
  state.SetBytesProcessed(state.iterations() * f.bytes);
}

BENCHMARK(BM_RawWriteFsync)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_SaveCheckpoint)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_LoadCheckpoint)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

}  // namespace
}  // namespace came

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--dir=", 0) == 0) {
      came::g_dir = a.substr(6);
    } else {
      rest.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::error_code ec;
  std::filesystem::remove_all(std::filesystem::path(came::g_dir) / absl::StrCat("came-ckpt-bench-", getpid()), ec);
  return 0;
}
