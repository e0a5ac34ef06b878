// GPT-2's parameter tensors in the order of its state_dict (Hugging Face layout: Conv1D
// weights are [in, out]; the tied lm_head is not repeated). GPT-2 small is
// Gpt2Shapes(50257, 1024, 768, 12): 148 tensors, 124,439,808 parameters. Shared by the
// benchmarks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace came::bench {

struct ModelTensor {
  std::string name;
  std::vector<int64_t> shape;
};

inline std::vector<ModelTensor> Gpt2Shapes(int64_t vocab, int64_t context, int64_t d, int blocks) {
  std::vector<ModelTensor> t;
  t.push_back({"wte.weight", {vocab, d}});
  t.push_back({"wpe.weight", {context, d}});
  for (int b = 0; b < blocks; ++b) {
    const std::string h = "h." + std::to_string(b) + ".";
    t.push_back({h + "ln_1.weight", {d}});
    t.push_back({h + "ln_1.bias", {d}});
    t.push_back({h + "attn.c_attn.weight", {d, 3 * d}});
    t.push_back({h + "attn.c_attn.bias", {3 * d}});
    t.push_back({h + "attn.c_proj.weight", {d, d}});
    t.push_back({h + "attn.c_proj.bias", {d}});
    t.push_back({h + "ln_2.weight", {d}});
    t.push_back({h + "ln_2.bias", {d}});
    t.push_back({h + "mlp.c_fc.weight", {d, 4 * d}});
    t.push_back({h + "mlp.c_fc.bias", {4 * d}});
    t.push_back({h + "mlp.c_proj.weight", {4 * d, d}});
    t.push_back({h + "mlp.c_proj.bias", {d}});
  }
  t.push_back({"ln_f.weight", {d}});
  t.push_back({"ln_f.bias", {d}});
  return t;
}

}  // namespace came::bench
