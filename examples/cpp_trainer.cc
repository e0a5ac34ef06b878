// A C++ trainer attached to came-rankd: linear regression y = W x + b trained with the
// sharded CAME optimizer. Run under came-launch, which sets CAME_RANKD_ADDRESS and
// CAME_TOKEN:
//
//   came-launch --nproc 2 -- build/bin/came-cpp-trainer --steps 50
//
// Each rank draws its own batches (or the same with --same-data); rank 0 prints the loss.
// --out FILE writes the final parameters (one number per line) for comparisons.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "runtime/rankd/rank_client.h"

namespace {

constexpr int kOut = 8, kIn = 16, kBatch = 32;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "came-cpp-trainer: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 50;
  bool same_data = false;
  std::string out;
  double lr = 0.01;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (a == "--lr" && i + 1 < argc) lr = std::atof(argv[++i]);
    else if (a == "--out" && i + 1 < argc) out = argv[++i];
    else if (a == "--same-data") same_data = true;
    else {
      std::fprintf(stderr, "usage: came-cpp-trainer [--steps N] [--lr LR] [--same-data] [--out FILE]\n");
      return 2;
    }
  }
  auto client = came::rankd::RankClient::FromEnvironment();
  if (!client.ok()) return Fail(client.status());
  came::rankd::RankClient& c = **client;

  came::rankd::Manifest m;
  m.tensors = {{"linear.weight", {kOut, kIn}, came::DType::kFloat32, 0},
               {"linear.bias", {kOut}, came::DType::kFloat32, 1}};
  came::CameHyper decay, no_decay;
  decay.lr = no_decay.lr = lr;
  decay.weight_decay = 0.01;
  m.groups = {decay, no_decay};
  if (absl::Status s = c.Attach(m); !s.ok()) return Fail(s);

  // Initial parameters (rank 0's win at SyncParameters) and the true model.
  std::mt19937 init_rng(1234 + c.rank());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto w = c.param("linear.weight");
  auto b = c.param("linear.bias");
  for (float& v : w) v = 0.1f * normal(init_rng);
  for (float& v : b) v = 0.0f;
  if (absl::Status s = c.SyncParameters(); !s.ok()) return Fail(s);
  std::mt19937 truth_rng(42);
  std::vector<float> w_true(kOut * kIn), b_true(kOut);
  for (float& v : w_true) v = normal(truth_rng);
  for (float& v : b_true) v = normal(truth_rng);

  std::mt19937 data_rng(same_data ? 7 : 7 + 1000 * c.rank());
  auto gw = c.grad("linear.weight");
  auto gb = c.grad("linear.bias");
  double first_loss = 0, last_loss = 0;
  for (int step = 1; step <= steps; ++step) {
    c.ZeroGrad();
    double loss = 0;
    for (int n = 0; n < kBatch; ++n) {
      float x[kIn];
      for (float& v : x) v = normal(data_rng);
      for (int o = 0; o < kOut; ++o) {
        float y = b[o], t = b_true[o];
        for (int i = 0; i < kIn; ++i) {
          y += w[o * kIn + i] * x[i];
          t += w_true[o * kIn + i] * x[i];
        }
        const float d = (y - t) / (kBatch * kOut);
        loss += 0.5 * (y - t) * (y - t) / (kBatch * kOut);
        gb[o] += d;
        for (int i = 0; i < kIn; ++i) gw[o * kIn + i] += d * x[i];
      }
    }
    auto r = c.Step(step, {lr, lr});
    if (!r.ok()) return Fail(r.status());
    if (step == 1) first_loss = loss;
    last_loss = loss;
    if (c.rank() == 0 && (step % 10 == 0 || step == 1))
      std::printf("step %4d  loss %.5f  grad_norm %.4f  rankd %.2f ms\n", step, loss, r->grad_norm,
                  1e3 * r->seconds);
  }
  if (!out.empty()) {
    std::ofstream f(out);
    for (float v : w) f << v << "\n";
    for (float v : b) f << v << "\n";
  }
  if (c.rank() == 0) std::printf("loss %.5f -> %.5f\n", first_loss, last_loss);
  (void)c.Detach();
  return last_loss < first_loss ? 0 : 3;
}
