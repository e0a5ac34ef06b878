// One rank of the multi-process engine test: joins W ranks through a FileStore, trains
// TestModel for --steps steps on its own gradients (Grad(rank, ...)) and writes its view of
// the result as JSON: the full parameters from its flat buffer and the state of its pieces.
//
//   engine_worker --rank R --world W --store DIR --steps N --out FILE [--nan-rank R --nan-step S]
//                 [--dtype float32|bfloat16|float16] [--same-grads]
// With a 16-bit dtype the parameters and gradients are in that dtype (fp32 master copy);
// --same-grads gives every rank rank 0's gradient.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/comm/file_store.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/sharded_came.h"
#include "tests/runtime/reference_model.h"
#include "tests/runtime/test_model.h"

namespace came {
namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "engine_worker: %s\n", what.c_str());
  return 1;
}

int Main(int argc, char** argv) {
  int rank = -1, world = 0, steps = 10, nan_rank = -1, nan_step = -1;
  bool same_grads = false;
  DType dtype = DType::kFloat32;
  std::string store_dir, out_path;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--same-grads") {
      same_grads = true;
      continue;
    }
    if (i + 1 >= argc) return Fail("missing value of " + k);
    const std::string v = argv[++i];
    if (k == "--rank") rank = std::atoi(v.c_str());
    else if (k == "--world") world = std::atoi(v.c_str());
    else if (k == "--steps") steps = std::atoi(v.c_str());
    else if (k == "--store") store_dir = v;
    else if (k == "--out") out_path = v;
    else if (k == "--nan-rank") nan_rank = std::atoi(v.c_str());
    else if (k == "--nan-step") nan_step = std::atoi(v.c_str());
    else if (k == "--dtype") {
      auto d = ParseDType(v);
      if (!d) return Fail("unknown dtype " + v);
      dtype = *d;
    }
    else return Fail("unknown flag " + k);
  }
  if (rank < 0 || world < 1 || store_dir.empty() || out_path.empty())
    return Fail("usage: --rank R --world W --store DIR --steps N --out FILE");

  auto store = comm::FileStore::Create(store_dir);
  if (!store.ok()) return Fail(std::string(store.status().message()));
  auto comm = comm::GlooCommunicator::Create(**store, rank, world);
  if (!comm.ok()) return Fail(std::string(comm.status().message()));
  auto plan = ShardPlan::Make(testing::TestModel(dtype), world, 1);
  if (!plan.ok()) return Fail(std::string(plan.status().message()));

  const size_t elem = DTypeSize(dtype);
  std::vector<uint8_t> params(plan->padded_size * elem, 0), grads(plan->padded_size * elem, 0);
  const auto initial = testing::InitialParams(testing::TestModel());
  for (size_t t = 0; t < plan->tensors.size(); ++t)
    for (size_t i = 0; i < initial[t].size(); ++i)
      StoreFromFloat(params.data(), dtype, plan->tensors[t].offset + i,
                     static_cast<float>(initial[t][i]));

  EngineOptions options;
  options.groups = testing::TestGroups();
  options.num_threads = 1;
  options.collective_timeout = absl::Seconds(60);
  auto engine = ShardedCame::Create(*plan, comm->get(), params.data(), grads.data(), options);
  if (!engine.ok()) return Fail(std::string(engine.status().message()));

  nlohmann::json out;
  out["skipped"] = nlohmann::json::array();
  for (int step = 1; step <= steps; ++step) {
    for (size_t t = 0; t < plan->tensors.size(); ++t)
      for (int64_t i = 0; i < plan->tensors[t].geom.numel; ++i)
        StoreFromFloat(grads.data(), dtype, plan->tensors[t].offset + i,
                       static_cast<float>(testing::Grad(same_grads ? 0 : rank, step,
                                                        static_cast<int>(t), i)));
    if (rank == nan_rank && step == nan_step)
      StoreFromFloat(grads.data(), dtype, plan->tensors.back().offset, NAN);
    auto stats = (*engine)->Step({step, testing::StepLr(step)});
    if (!stats.ok()) return Fail(std::string(stats.status().message()));
    if (stats->skipped) out["skipped"].push_back(step);
  }

  for (size_t t = 0; t < plan->tensors.size(); ++t) {
    const auto& tensor = plan->tensors[t];
    std::vector<double> p(tensor.geom.numel);
    for (int64_t i = 0; i < tensor.geom.numel; ++i)
      p[i] = LoadAsFloat(params.data(), dtype, tensor.offset + i);
    out["params"][tensor.spec.name] = p;
    const TensorStateView v = (*engine)->tensor_state(static_cast<int>(t));
    if (v.end <= v.begin) continue;
    nlohmann::json& piece = out["pieces"][tensor.spec.name];
    piece["begin"] = v.begin;
    piece["end"] = v.end;
    auto put = [&](const char* name, std::span<const float> s) {
      if (!s.empty()) piece[name] = std::vector<double>(s.begin(), s.end());
    };
    put("exp_avg", v.exp_avg);
    put("exp_avg_sq", v.exp_avg_sq);
    put("exp_avg_sq_row", v.exp_avg_sq_row);
    put("exp_avg_sq_col", v.exp_avg_sq_col);
    put("exp_avg_res_row", v.exp_avg_res_row);
    put("exp_avg_res_col", v.exp_avg_res_col);
    put("master", v.master);
  }
  out["steps_taken"] = (*engine)->steps_taken();
  std::ofstream f(out_path + ".tmp");
  f << out.dump();
  f.close();
  if (std::rename((out_path + ".tmp").c_str(), out_path.c_str()) != 0)
    return Fail("cannot write " + out_path);
  return 0;
}

}  // namespace
}  // namespace came

int main(int argc, char** argv) { return came::Main(argc, argv); }
