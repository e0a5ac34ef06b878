#include "tools/ckpt/full_state.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/checkpoint_io.h"
#include "runtime/shard_plan.h"

namespace came::ckpt {
namespace {

using nlohmann::json;

std::vector<std::string> KindsOf(const FullTensor& t) {
  std::vector<std::string> kinds = {"master", "exp_avg"};
  if (t.factored()) {
    for (const char* k : kStatKinds) kinds.push_back(k);
  } else {
    kinds.push_back("exp_avg_sq");
  }
  return kinds;
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool PerElement(const std::string& kind) { return kind == "master" || kind == "exp_avg" || kind == "exp_avg_sq"; }

// The export name of a kind (Note [Export names]).
std::string ExportName(const std::string& tensor, const std::string& kind) {
  return kind == "master" ? tensor : tensor + "." + kind;
}

}  // namespace

std::vector<int64_t> StatShape(const std::vector<int64_t>& shape, const std::string& kind) {
  std::vector<int64_t> out(shape.begin(), shape.end() - 2);
  out.push_back(kind.ends_with("_row") ? shape[shape.size() - 2] : shape.back());
  return out;
}

absl::StatusOr<FullState> ReadFullState(const CheckpointManifest& manifest) {
  if (absl::Status s = VerifyShards(manifest); !s.ok()) return s;
  std::vector<OpenedShard> shards;
  for (size_t i = 0; i < manifest.shard_paths.size(); ++i) {
    auto s = OpenShard(manifest.shard_paths[i], manifest.shard_bytes[i]);
    if (!s.ok()) return s.status();
    shards.push_back(*std::move(s));
  }
  if (absl::Status s = CheckCoverage(shards); !s.ok()) return s;
  std::map<int, FullTensor> by_index;
  for (const OpenedShard& sh : shards) {
    for (const auto& [name, piece] : sh.header.tensors) {
      auto [it, fresh] = by_index.try_emplace(piece.index);
      FullTensor& t = it->second;
      if (fresh) {
        t.name = name;
        t.shape = piece.shape;
        for (const std::string& k : KindsOf(t))
          t.values[k].assign(PerElement(k) ? piece.numel : Numel(StatShape(t.shape, k)), 0.0f);
      } else if (t.name != name || t.shape != piece.shape) {
        return absl::DataLossError(absl::StrCat(sh.file.path, ": tensor index ", piece.index, " is '", name,
                                                "', another shard's is '", t.name, "'"));
      }
      for (const std::string& k : KindsOf(t)) {
        std::vector<float>& dst = t.values[k];
        const bool per_element = PerElement(k);
        if (!per_element && !fresh) continue;  // whole statistics: from the first shard
        const int64_t count = per_element ? piece.end - piece.begin : static_cast<int64_t>(dst.size());
        float* out = dst.data() + (per_element ? piece.begin : 0);
        if (absl::Status s = ReadShardFloats(sh, name + "/" + k, 0, count, out); !s.ok()) return s;
      }
    }
  }
  FullState state;
  state.step = manifest.step;
  state.alignment = manifest.plan_alignment;
  int expected = 0;
  for (auto& [index, t] : by_index) {
    if (index != expected++)
      return absl::DataLossError(absl::StrCat(manifest.path, ": no shard holds the tensor of index ", expected - 1));
    state.tensors.push_back(std::move(t));
  }
  return state;
}

absl::StatusOr<std::string> WriteCheckpoint(const FullState& state, int world_size,
                                            const std::string& dir) {
  std::vector<TensorSpec> specs;
  for (const FullTensor& t : state.tensors) specs.push_back({t.name, t.shape, DType::kFloat32, 0});
  auto plan = ShardPlan::Make(specs, world_size, state.alignment);
  if (!plan.ok()) return plan.status();
  if (absl::Status s = CreatePrivateDirectories(dir); !s.ok()) return s;
  json shards = json::array();
  for (int r = 0; r < world_size; ++r) {
    std::vector<ShardPieceData> pieces;
    for (const ShardPiece& p : plan->pieces[r]) {
      const FullTensor& t = state.tensors[p.tensor];
      ShardPieceData d;
      d.tensor = ShardTensor{t.name, p.tensor, t.shape, Numel(t.shape), p.begin, p.end};
      for (const auto& [kind, values] : t.values) {
        std::span<const float> all(values);
        d.entries[kind] = PerElement(kind) ? all.subspan(p.begin, p.end - p.begin) : all;
      }
      pieces.push_back(std::move(d));
    }
    const std::string file = absl::StrCat("rank-", r, ".safetensors");
    auto written = WriteShardFile((std::filesystem::path(dir) / file).string(), state.step, world_size,
                                  state.alignment, pieces);
    if (!written.ok()) return written.status();
    shards.push_back({{"rank", r}, {"file", file}, {"bytes", written->bytes}, {"sha256", written->sha256}});
  }
  json m = {{"format", "came-checkpoint-manifest"}, {"format_version", 1},
            {"job_id", "came-ckpt"},               {"step", state.step},
            {"world_size", world_size},            {"plan_alignment", state.alignment},
            {"shards", shards}};
  const std::string path = (std::filesystem::path(dir) / "manifest.json").string();
  const std::string text = m.dump(2) + "\n";
  std::string tmp;
  auto fd = CreateTemporaryFile(path, &tmp);
  if (!fd.ok()) return fd.status();
  if (absl::Status s = WriteAll(fd->get(), text.data(), text.size(), tmp); !s.ok()) return s;
  if (absl::Status s = CommitTemporaryFile(*std::move(fd), tmp, path); !s.ok()) return s;
  return path;
}

absl::Status WriteExport(const FullState& state, const std::string& path) {
  json header = json::object();
  std::vector<std::span<const float>> data;
  uint64_t offset = 0;
  for (const FullTensor& t : state.tensors) {
    for (const std::string& kind : KindsOf(t)) {
      const std::vector<float>& v = t.values.at(kind);
      const std::vector<int64_t> shape = PerElement(kind) ? t.shape : StatShape(t.shape, kind);
      header[ExportName(t.name, kind)] = {{"dtype", "F32"}, {"shape", shape},
                                          {"data_offsets", {offset, offset + 4 * v.size()}}};
      offset += 4 * v.size();
      data.push_back(v);
    }
  }
  header["__metadata__"] = {{"format", "came-export"}, {"step", std::to_string(state.step)}};
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  const uint64_t n = text.size();
  std::string tmp;
  auto fd = CreateTemporaryFile(path, &tmp);
  if (!fd.ok()) return fd.status();
  absl::Status s = WriteAll(fd->get(), &n, 8, tmp);
  if (s.ok()) s = WriteAll(fd->get(), text.data(), text.size(), tmp);
  for (std::span<const float> d : data)
    if (s.ok()) s = WriteAll(fd->get(), d.data(), d.size_bytes(), tmp);
  if (!s.ok()) return s;
  return CommitTemporaryFile(*std::move(fd), tmp, path);
}

absl::StatusOr<FullState> ReadExport(const std::string& path, int64_t alignment) {
  auto f = OpenRegularFile(path);
  if (!f.ok()) return f.status();
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(path, ": ", what));
  };
  uint64_t n = 0;
  if (f->size < 8) return bad("shorter than its header length");
  if (absl::Status s = ReadAt(*f, 0, &n, 8); !s.ok()) return s;
  if (n > f->size - 8 || n > (256u << 20)) return bad("the header length exceeds the file");
  std::string text(n, '\0');
  if (absl::Status s = ReadAt(*f, 8, text.data(), n); !s.ok()) return s;
  const json h = json::parse(text, nullptr, false);
  if (h.is_discarded() || !h.is_object()) return bad("the header is not a JSON object");
  FullState state;
  state.alignment = alignment;
  const json meta = h.value("__metadata__", json::object());
  if (!meta.is_object() || !meta.value("step", json()).is_string())
    return bad("__metadata__ has no \"step\" (was it written by came-ckpt export or came-ckpt-from-torch?)");
  if (!absl::SimpleAtoi(meta["step"].get<std::string>(), &state.step) || state.step < 0)
    return bad("__metadata__ \"step\" is not a non-negative integer");
  // A parameter is a name without a '.<kind>' suffix of a known kind; the order of the file's
  // data is the order of the parameters (as came-ckpt-from-torch writes them).
  struct Entry {
    std::string name;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;
  };
  std::map<std::string, Entry> entries;
  const uint64_t room = f->size - 8 - n;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const json& e = it.value();
    if (!e.is_object() || e.value("dtype", json()) != "F32" || !e.value("shape", json()).is_array() ||
        !e.value("data_offsets", json()).is_array() || e["data_offsets"].size() != 2 ||
        !e["data_offsets"][0].is_number_unsigned() || !e["data_offsets"][1].is_number_unsigned())
      return bad(absl::StrCat("entry '", it.key(), "' is not F32 with shape and data_offsets"));
    Entry x{it.key(), {}, e["data_offsets"][0].get<uint64_t>(), e["data_offsets"][1].get<uint64_t>()};
    int64_t numel = 1;
    for (const json& d : e["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40)) return bad(absl::StrCat("entry '", x.name, "' has a bad shape"));
      x.shape.push_back(d.get<int64_t>());
      if (__builtin_mul_overflow(numel, x.shape.back(), &numel)) return bad("a shape overflows");
    }
    if (x.begin > x.end || x.end > room || x.end - x.begin != 4 * static_cast<uint64_t>(numel))
      return bad(absl::StrCat("entry '", x.name, "': data_offsets do not fit its shape or the file"));
    entries[x.name] = std::move(x);
  }
  std::vector<const Entry*> params;
  for (const auto& [name, e] : entries) {
    bool is_state = false;
    for (const char* k : {"exp_avg", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row",
                          "exp_avg_res_col"})
      is_state = is_state || name.ends_with(std::string(".") + k);
    if (!is_state) params.push_back(&e);
  }
  std::sort(params.begin(), params.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (const Entry* p : params) {
    FullTensor t;
    t.name = p->name;
    t.shape = p->shape;
    for (const std::string& kind : KindsOf(t)) {
      auto it = entries.find(ExportName(t.name, kind));
      if (it == entries.end()) return bad(absl::StrCat("parameter '", t.name, "' has no ", ExportName(t.name, kind)));
      const std::vector<int64_t> want = PerElement(kind) ? t.shape : StatShape(t.shape, kind);
      if (Numel(it->second.shape) != Numel(want))
        return bad(absl::StrCat(it->first, " has ", Numel(it->second.shape), " values; expected ", Numel(want)));
      std::vector<float>& v = t.values[kind];
      v.resize(Numel(want));
      if (absl::Status s = ReadAt(*f, 8 + n + it->second.begin, v.data(), 4 * v.size()); !s.ok()) return s;
    }
    state.tensors.push_back(std::move(t));
  }
  if (state.tensors.empty()) return bad("no parameters");
  return state;
}

}  // namespace came::ckpt
