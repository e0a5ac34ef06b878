// came-ckpt: inspect, verify, reshard, export and import came-runtime checkpoints
// (Note [Shard files] in runtime/checkpoint.h, Note [Export names] in tools/ckpt/full_state.h).
#include <map>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/checkpoint.h"
#include "tools/ckpt/full_state.h"

namespace came::ckpt {
namespace {

constexpr char kUsage[] = R"(usage:
  came-ckpt inspect MANIFEST                  step, world size, shards, tensors and bytes
  came-ckpt verify MANIFEST                   every shard's size and SHA-256, every header,
                                              every element of every tensor covered once
  came-ckpt reshard MANIFEST --world N --out DIR
                                              the same checkpoint for N ranks, in DIR
  came-ckpt export MANIFEST --out FILE.safetensors
                                              one safetensors file: <name> (the parameter,
                                              float32) and <name>.exp_avg, .exp_avg_sq (0-D
                                              and 1-D) or .exp_avg_sq_row, .exp_avg_sq_col,
                                              .exp_avg_res_row, .exp_avg_res_col (came-pytorch's
                                              state names); __metadata__ "step"
  came-ckpt import FILE.safetensors --out DIR [--world N] [--alignment A]
                                              a checkpoint (default 1 rank, alignment 16) from
                                              a file in the export layout, e.g. one written by
                                              tools/ckpt/came_ckpt_from_torch.py from a torch
                                              model state dict and a came-pytorch optimizer
                                              state dict
A checkpoint is named by its manifest.json (a folder step-<N>/ of the checkpoint directory).
)";

struct Args {
  std::string command, input, out;
  int world = 0;
  int64_t alignment = 16;
};

int Usage(const std::string& problem) {
  std::cerr << "came-ckpt: " << problem << "\n" << kUsage;
  return 2;
}

int Fail(const absl::Status& s) {
  std::cerr << "came-ckpt: " << s.message() << " [" << absl::StatusCodeToString(s.code()) << "]\n";
  return 1;
}

int Inspect(const CheckpointManifest& m) {
  std::cout << "checkpoint " << m.path << "\n  step " << m.step << ", world size " << m.world_size
            << ", plan alignment " << m.plan_alignment << "\n";
  int64_t bytes = 0, elements = 0;
  std::map<int, ShardTensor> tensors;
  for (size_t r = 0; r < m.shard_paths.size(); ++r) {
    auto s = OpenShard(m.shard_paths[r], m.shard_bytes[r]);
    if (!s.ok()) return Fail(s.status());
    std::cout << "  rank " << r << ": " << m.shard_paths[r] << ", " << m.shard_bytes[r] << " bytes, "
              << s->header.tensors.size() << " pieces\n";
    bytes += m.shard_bytes[r];
    for (const auto& [name, t] : s->header.tensors) tensors.emplace(t.index, t);
  }
  std::cout << "  " << tensors.size() << " tensors:\n";
  for (const auto& [index, t] : tensors) {
    std::cout << "    " << t.name << " [" << absl::StrJoin(t.shape, ", ") << "] "
              << (t.factored() ? "factored" : "unfactored") << "\n";
    elements += t.numel;
  }
  std::cout << "  " << elements << " parameters, " << bytes << " bytes in all\n";
  return 0;
}

int Run(const Args& a) {
  if (a.command == "import") {
    auto state = ReadExport(a.input, a.alignment);
    if (!state.ok()) return Fail(state.status());
    auto path = WriteCheckpoint(*state, a.world > 0 ? a.world : 1, a.out);
    if (!path.ok()) return Fail(path.status());
    std::cout << "wrote " << *path << " (step " << state->step << ", " << state->tensors.size()
              << " tensors)\n";
    return 0;
  }
  auto m = ReadCheckpointManifest(a.input);
  if (!m.ok()) return Fail(m.status());
  if (a.command == "inspect") return Inspect(*m);
  auto state = ReadFullState(*m);
  if (!state.ok()) return Fail(state.status());
  if (a.command == "verify") {
    std::cout << "OK " << a.input << ": " << m->world_size << " shards match their sizes and SHA-256, "
              << state->tensors.size() << " tensors, every element covered exactly once\n";
    return 0;
  }
  if (a.command == "reshard") {
    auto path = WriteCheckpoint(*state, a.world, a.out);
    if (!path.ok()) return Fail(path.status());
    std::cout << "wrote " << *path << " (" << a.world << " ranks)\n";
    return 0;
  }
  absl::Status s = WriteExport(*state, a.out);
  if (!s.ok()) return Fail(s);
  std::cout << "wrote " << a.out << " (step " << state->step << ", " << state->tensors.size()
            << " parameters)\n";
  return 0;
}

int Main(int argc, char** argv) {
  std::vector<std::string> v(argv + 1, argv + argc);
  if (v.empty() || v[0] == "--help" || v[0] == "-h") {
    std::cout << kUsage;
    return v.empty() ? 2 : 0;
  }
  Args a;
  a.command = v[0];
  for (size_t i = 1; i < v.size(); ++i) {
    const std::string& f = v[i];
    auto value = [&]() -> const std::string* { return i + 1 < v.size() ? &v[++i] : nullptr; };
    if (f == "--out") {
      const std::string* x = value();
      if (!x) return Usage("--out needs a path");
      a.out = *x;
    } else if (f == "--world" || f == "--alignment") {
      const std::string* x = value();
      int64_t n = 0;
      if (!x || !absl::SimpleAtoi(*x, &n) || n < 1 || n > 65536)
        return Usage(absl::StrCat(f, " wants an integer in [1, 65536]"));
      if (f == "--world") {
        a.world = static_cast<int>(n);
      } else {
        a.alignment = n;
      }
    } else if (f.rfind("--", 0) == 0) {
      return Usage(absl::StrCat("unknown flag ", f));
    } else if (a.input.empty()) {
      a.input = f;
    } else {
      return Usage(absl::StrCat("unexpected argument ", f));
    }
  }
  const bool known = a.command == "inspect" || a.command == "verify" || a.command == "reshard" ||
                     a.command == "export" || a.command == "import";
  if (!known) return Usage(absl::StrCat("unknown command '", a.command, "'"));
  if (a.input.empty()) return Usage(absl::StrCat(a.command, " needs a ", a.command == "import" ? "safetensors file" : "manifest.json"));
  if ((a.command == "reshard" || a.command == "export" || a.command == "import") && a.out.empty())
    return Usage(absl::StrCat(a.command, " needs --out"));
  if (a.command == "reshard" && a.world == 0) return Usage("reshard needs --world N");
  return Run(a);
}

}  // namespace
}  // namespace came::ckpt

int main(int argc, char** argv) { return came::ckpt::Main(argc, argv); }
