#include "runtime/checkpoint_shard.h"

#include <unistd.h>

#include <algorithm>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace came {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 256ull << 20;
constexpr int64_t kMaxElements = int64_t{1} << 44;
constexpr size_t kMaxDims = 8;

bool IsKind(const std::string& kind, bool* per_piece) {
  for (const char* k : kPieceKinds)
    if (kind == k) return *per_piece = true;
  for (const char* k : kStatKinds)
    if (kind == k) return !(*per_piece = false);
  return false;
}

// Stats sizes of a factored tensor: rows (batch * n) and columns (batch * m).
std::pair<int64_t, int64_t> StatSizes(const std::vector<int64_t>& shape) {
  int64_t batch = 1;
  for (size_t i = 0; i + 2 < shape.size(); ++i) batch *= shape[i];
  return {batch * shape[shape.size() - 2], batch * shape.back()};
}

class HeaderParser {
 public:
  HeaderParser(const ReadableFile& f) : f_(f) {}

  absl::Status Bad(const std::string& what) const {
    return absl::DataLossError(absl::StrCat(f_.path, ": ", what, " (a damaged checkpoint shard?)"));
  }

  absl::StatusOr<ShardHeader> Parse() {
    uint64_t n = 0;
    if (f_.size < 8) return Bad("shorter than its 8-byte header length");
    if (absl::Status s = ReadAt(f_, 0, &n, 8); !s.ok()) return s;
    if (n > f_.size - 8 || n > kMaxHeaderBytes)
      return Bad(absl::StrCat("header length ", n, " exceeds the file (", f_.size, " bytes)"));
    std::string text(n, '\0');
    if (absl::Status s = ReadAt(f_, 8, text.data(), n); !s.ok()) return s;
    const json h = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (h.is_discarded() || !h.is_object()) return Bad("the header is not a JSON object");
    ShardHeader out;
    out.data_start = 8 + n;
    auto meta = h.find("__metadata__");
    if (meta == h.end() || !meta->is_object()) return Bad("the header has no __metadata__ object");
    if (absl::Status s = ParseMetadata(*meta, out); !s.ok()) return s;
    for (auto it = h.begin(); it != h.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      if (absl::Status s = ParseEntry(it.key(), it.value(), out); !s.ok()) return s;
    }
    if (absl::Status s = CheckLayout(out); !s.ok()) return s;
    return out;
  }

 private:
  absl::StatusOr<int64_t> Decimal(const std::map<std::string, std::string>& m, const std::string& key,
                                  int64_t lo, int64_t hi) const {
    auto it = m.find(key);
    int64_t v = 0;
    if (it == m.end()) return Bad(absl::StrCat("metadata '", key, "' is missing"));
    if (!absl::SimpleAtoi(it->second, &v) || v < lo || v > hi)
      return Bad(absl::StrCat("metadata '", key, "' must be an integer in [", lo, ", ", hi, "]"));
    return v;
  }

  absl::Status ParseMetadata(const json& meta, ShardHeader& out) const {
    std::map<std::string, std::string> m;
    for (auto it = meta.begin(); it != meta.end(); ++it) {
      if (!it.value().is_string()) return Bad(absl::StrCat("metadata '", it.key(), "' is not a string"));
      m[it.key()] = it.value().get<std::string>();
    }
    if (m["format"] != "came-shard") return Bad("metadata 'format' is not \"came-shard\"");
    auto step = Decimal(m, "step", 0, int64_t{1} << 62);
    auto world = Decimal(m, "world_size", 1, 65536);
    auto align = Decimal(m, "alignment", 1, int64_t{1} << 30);
    for (const auto* s : {&step, &world, &align})
      if (!s->ok()) return s->status();
    out.step = *step;
    out.world_size = static_cast<int>(*world);
    out.alignment = *align;
    std::set<int64_t> indices;
    for (const auto& [key, value] : m) {
      if (!key.ends_with("/range")) continue;
      const std::string name = key.substr(0, key.size() - 6);
      ShardTensor t;
      t.name = name;
      auto index = Decimal(m, name + "/index", 0, 1 << 30);
      auto numel = Decimal(m, name + "/numel", 1, kMaxElements);
      if (!index.ok()) return index.status();
      if (!numel.ok()) return numel.status();
      t.index = static_cast<int>(*index);
      t.numel = *numel;
      if (!indices.insert(t.index).second)
        return Bad(absl::StrCat("two tensors have index ", t.index));
      auto shape_it = m.find(name + "/shape");
      if (shape_it == m.end()) return Bad(absl::StrCat("metadata '", name, "/shape' is missing"));
      int64_t prod = 1;
      if (!shape_it->second.empty()) {
        for (absl::string_view d : absl::StrSplit(shape_it->second, ',')) {
          int64_t v = 0;
          if (!absl::SimpleAtoi(d, &v) || v < 1 || t.shape.size() == kMaxDims ||
              __builtin_mul_overflow(prod, v, &prod))
            return Bad(absl::StrCat("metadata '", name, "/shape' is not a list of positive dims"));
          t.shape.push_back(v);
        }
      }
      if (prod != t.numel)
        return Bad(absl::StrCat("tensor '", name, "': shape [", shape_it->second,
                                "] does not have numel ", t.numel, " elements"));
      std::vector<absl::string_view> parts = absl::StrSplit(value, ',');
      if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &t.begin) ||
          !absl::SimpleAtoi(parts[1], &t.end) || t.begin < 0 || t.begin >= t.end || t.end > t.numel)
        return Bad(absl::StrCat("the range of '", name, "' (\"", value.substr(0, 40),
                                "\") is not begin,end within [0, ", t.numel, "]"));
      out.tensors[name] = std::move(t);
    }
    return absl::OkStatus();
  }

  absl::Status ParseEntry(const std::string& key, const json& e, ShardHeader& out) const {
    const size_t slash = key.rfind('/');
    bool per_piece = false;
    if (slash == std::string::npos || !IsKind(key.substr(slash + 1), &per_piece))
      return Bad(absl::StrCat("unknown entry '", key.substr(0, 80), "'"));
    auto t = out.tensors.find(key.substr(0, slash));
    if (t == out.tensors.end())
      return Bad(absl::StrCat("entry '", key.substr(0, 80), "' belongs to no tensor with a range"));
    if (!e.is_object() || e.value("dtype", json()) != "F32")
      return Bad(absl::StrCat("entry '", key, "' is not an object of dtype F32"));
    const json shape = e.value("shape", json()), off = e.value("data_offsets", json());
    if (!shape.is_array() || shape.size() != 1 || !shape[0].is_number_unsigned() ||
        !off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      return Bad(absl::StrCat("entry '", key, "' needs shape [n] and data_offsets [begin, end]"));
    const uint64_t count = shape[0].get<uint64_t>(), a = off[0].get<uint64_t>(),
                   b = off[1].get<uint64_t>();
    const uint64_t room = f_.size - out.data_start;
    if (a > b || b > room || count > (room / 4) || b - a != count * 4)
      return Bad(absl::StrCat("entry '", key, "': data_offsets [", a, ", ", b, "] and shape [",
                              count, "] do not fit the ", room, " data bytes"));
    const ShardTensor& tensor = t->second;
    int64_t want = tensor.end - tensor.begin;
    if (!per_piece) {
      if (!tensor.factored())
        return Bad(absl::StrCat("entry '", key, "': a tensor of 0 or 1 dims has no factored statistics"));
      auto [rows, cols] = StatSizes(tensor.shape);
      want = key.ends_with("_row") ? rows : cols;
    } else if (key.ends_with("/exp_avg_sq") && tensor.factored()) {
      return Bad(absl::StrCat("entry '", key, "': a factored tensor has no exp_avg_sq"));
    }
    if (static_cast<int64_t>(count) != want)
      return Bad(absl::StrCat("entry '", key, "' holds ", count, " values; expected ", want));
    out.entries[key] = {a, b};
    return absl::OkStatus();
  }

  // Every tensor has all its entries; no two entries share a byte.
  absl::Status CheckLayout(const ShardHeader& h) const {
    for (const auto& [name, t] : h.tensors) {
      std::vector<std::string> kinds = {"master", "exp_avg"};
      if (t.factored()) {
        for (const char* k : kStatKinds) kinds.push_back(k);
      } else {
        kinds.push_back("exp_avg_sq");
      }
      for (const std::string& k : kinds)
        if (!h.entries.contains(name + "/" + k))
          return Bad(absl::StrCat("tensor '", name, "' has no entry ", k));
    }
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const auto& [key, span] : h.entries) spans.push_back(span);
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i)
      if (spans[i].first < spans[i - 1].second) return Bad("two entries overlap in the data");
    return absl::OkStatus();
  }

  const ReadableFile& f_;
};

}  // namespace

absl::StatusOr<OpenedShard> OpenShard(const std::string& path, int64_t expected_bytes) {
  absl::StatusOr<ReadableFile> f = OpenRegularFile(path);
  if (!f.ok()) return f.status();
  if (expected_bytes >= 0 && f->size != static_cast<uint64_t>(expected_bytes))
    return absl::DataLossError(
        absl::StrCat(path, " has ", f->size, " bytes; the manifest says ", expected_bytes));
  absl::StatusOr<ShardHeader> h = HeaderParser(*f).Parse();
  if (!h.ok()) return h.status();
  return OpenedShard{*std::move(f), *std::move(h)};
}

absl::Status ReadShardFloats(const OpenedShard& shard, const std::string& entry, int64_t first,
                             int64_t count, float* out) {
  auto it = shard.header.entries.find(entry);
  if (it == shard.header.entries.end())
    return absl::DataLossError(absl::StrCat(shard.file.path, ": no entry ", entry));
  const uint64_t len = (it->second.second - it->second.first) / 4;
  if (first < 0 || count < 0 || static_cast<uint64_t>(first) + static_cast<uint64_t>(count) > len)
    return absl::DataLossError(absl::StrCat(shard.file.path, ": entry ", entry, " is too short"));
  return ReadAt(shard.file, shard.header.data_start + it->second.first + 4 * static_cast<uint64_t>(first),
                out, 4 * static_cast<uint64_t>(count));
}

absl::StatusOr<ShardFile> WriteShardFile(const std::string& path, int64_t step, int world_size,
                                         int64_t alignment,
                                         const std::vector<ShardPieceData>& pieces) {
  json meta = json::object();
  meta["format"] = "came-shard";
  meta["step"] = std::to_string(step);
  meta["world_size"] = std::to_string(world_size);
  meta["alignment"] = std::to_string(alignment);
  json header = json::object();
  std::vector<std::span<const float>> data;
  uint64_t offset = 0;
  for (const ShardPieceData& p : pieces) {
    const ShardTensor& t = p.tensor;
    meta[t.name + "/range"] = absl::StrCat(t.begin, ",", t.end);
    meta[t.name + "/numel"] = std::to_string(t.numel);
    meta[t.name + "/shape"] = absl::StrJoin(t.shape, ",");
    meta[t.name + "/index"] = std::to_string(t.index);
    for (const auto& [kind, values] : p.entries) {
      const uint64_t bytes = values.size() * sizeof(float);
      header[t.name + "/" + kind] = {{"dtype", "F32"},
                                     {"shape", {values.size()}},
                                     {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
      data.push_back(values);
    }
  }
  header["__metadata__"] = meta;
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // align the data
  const uint64_t n = text.size();

  std::string tmp;
  absl::StatusOr<Fd> fd = CreateTemporaryFile(path, &tmp);
  if (!fd.ok()) return fd.status();
  EVP_MD_CTX* md = NewSha256();
  auto put = [&](const void* p, size_t len) {
    EVP_DigestUpdate(md, p, len);
    return WriteAll(fd->get(), p, len, tmp);
  };
  absl::Status s = put(&n, 8);
  if (s.ok()) s = put(text.data(), text.size());
  for (std::span<const float> d : data)
    if (s.ok()) s = put(d.data(), d.size_bytes());
  const std::string sha = FinishSha256Hex(md);
  if (s.ok()) {
    s = CommitTemporaryFile(*std::move(fd), tmp, path);
  } else {
    ::unlink(tmp.c_str());
  }
  if (!s.ok()) return s;
  return ShardFile{path, static_cast<int64_t>(8 + n + offset), sha};
}

}  // namespace came
