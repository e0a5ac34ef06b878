#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace came {
namespace {

using nlohmann::json;

struct Entry {
  std::string name;
  std::span<const float> data;
};

std::string Hex(const unsigned char* p, size_t n) {
  static const char* kDigits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s.push_back(kDigits[p[i] >> 4]);
    s.push_back(kDigits[p[i] & 15]);
  }
  return s;
}

absl::Status Os(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Writes all of `data` to fd and feeds it to the digest.
absl::Status WriteAll(int fd, const void* data, size_t n, EVP_MD_CTX* md, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  EVP_DigestUpdate(md, p, n);
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Os("cannot write", path);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

// One shard's header: tensor entries and the ranges of the pieces.
struct ShardIndex {
  std::string path;
  uint64_t data_start = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> entries;  // name -> byte range in data
  std::map<std::string, std::pair<int64_t, int64_t>> ranges;     // tensor -> [begin, end)
};

absl::StatusOr<ShardIndex> ReadIndex(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot read checkpoint shard ", path));
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  if (!f || n > (1ull << 31)) return absl::DataLossError(absl::StrCat(path, ": bad header length"));
  std::string header(n, '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  if (!f) return absl::DataLossError(absl::StrCat(path, ": truncated header"));
  json h = json::parse(header, nullptr, false);
  if (h.is_discarded() || !h.is_object())
    return absl::DataLossError(absl::StrCat(path, ": the header is not JSON"));
  ShardIndex idx;
  idx.path = path;
  idx.data_start = 8 + n;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        const std::string k = m.key();
        if (k.size() < 6 || k.substr(k.size() - 6) != "/range" || !m.value().is_string()) continue;
        std::vector<std::string> parts = absl::StrSplit(m.value().get<std::string>(), ',');
        int64_t b = 0, e = 0;
        if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &b) || !absl::SimpleAtoi(parts[1], &e))
          return absl::DataLossError(absl::StrCat(path, ": bad range of ", k));
        idx.ranges[k.substr(0, k.size() - 6)] = {b, e};
      }
      continue;
    }
    const json& e = it.value();
    if (!e.is_object() || e.value("dtype", "") != "F32" || !e.contains("data_offsets"))
      return absl::DataLossError(absl::StrCat(path, ": bad entry ", it.key()));
    idx.entries[it.key()] = {e["data_offsets"][0].get<uint64_t>(), e["data_offsets"][1].get<uint64_t>()};
  }
  return idx;
}

// Reads floats [first, first + count) of entry `name` (which holds floats from its start).
absl::Status ReadFloats(const ShardIndex& idx, const std::string& name, int64_t first,
                        int64_t count, float* out) {
  auto it = idx.entries.find(name);
  if (it == idx.entries.end())
    return absl::DataLossError(absl::StrCat(idx.path, ": no entry ", name));
  const uint64_t off = it->second.first + static_cast<uint64_t>(first) * 4;
  if (off + static_cast<uint64_t>(count) * 4 > it->second.second)
    return absl::DataLossError(absl::StrCat(idx.path, ": entry ", name, " is too short"));
  std::ifstream f(idx.path, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(idx.data_start + off));
  f.read(reinterpret_cast<char*>(out), count * 4);
  if (!f) return absl::DataLossError(absl::StrCat(idx.path, ": truncated data of ", name));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ShardFile> WriteShard(const ShardedCame& engine, int64_t step,
                                     const std::string& path) {
  const ShardPlan& plan = engine.plan();
  std::vector<Entry> entries;
  json meta = json::object();
  meta["format"] = "came-shard";
  meta["step"] = std::to_string(step);
  meta["world_size"] = std::to_string(plan.world_size);
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorStateView v = engine.tensor_state(static_cast<int>(t));
    if (v.end <= v.begin) continue;
    const std::string& n = plan.tensors[t].spec.name;
    meta[n + "/range"] = absl::StrCat(v.begin, ",", v.end);
    meta[n + "/numel"] = std::to_string(plan.tensors[t].geom.numel);
    entries.push_back({n + "/master", v.master});
    entries.push_back({n + "/exp_avg", v.exp_avg});
    if (!v.exp_avg_sq.empty()) entries.push_back({n + "/exp_avg_sq", v.exp_avg_sq});
    if (!v.exp_avg_sq_row.empty()) {
      entries.push_back({n + "/exp_avg_sq_row", v.exp_avg_sq_row});
      entries.push_back({n + "/exp_avg_sq_col", v.exp_avg_sq_col});
      entries.push_back({n + "/exp_avg_res_row", v.exp_avg_res_row});
      entries.push_back({n + "/exp_avg_res_col", v.exp_avg_res_col});
    }
  }
  json header = json::object();
  uint64_t offset = 0;
  for (const Entry& e : entries) {
    const uint64_t bytes = e.data.size() * sizeof(float);
    header[e.name] = {{"dtype", "F32"}, {"shape", {e.data.size()}}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  header["__metadata__"] = meta;
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // align the data
  const uint64_t n = text.size();

  const std::string tmp = path + ".tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Os("cannot create", tmp);
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_DigestInit_ex(md, EVP_sha256(), nullptr);
  absl::Status s = WriteAll(fd, &n, 8, md, tmp);
  if (s.ok()) s = WriteAll(fd, text.data(), text.size(), md, tmp);
  for (const Entry& e : entries)
    if (s.ok()) s = WriteAll(fd, e.data.data(), e.data.size() * sizeof(float), md, tmp);
  if (s.ok() && fsync(fd) != 0) s = Os("cannot fsync", tmp);
  close(fd);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(md, digest, &len);
  EVP_MD_CTX_free(md);
  if (s.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) s = Os("cannot rename to", path);
  if (!s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  ShardFile out;
  out.path = path;
  out.bytes = static_cast<int64_t>(8 + n + offset);
  out.sha256 = Hex(digest, len);
  return out;
}

absl::StatusOr<PendingLoad> ReadShards(const ShardedCame& engine,
                                       const std::vector<std::string>& shard_paths) {
  std::vector<ShardIndex> shards;
  for (const std::string& p : shard_paths) {
    auto idx = ReadIndex(p);
    if (!idx.ok()) return idx.status();
    shards.push_back(*std::move(idx));
  }
  const ShardPlan& plan = engine.plan();
  using Loaded = PendingLoad::Tensor;
  PendingLoad out;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorStateView mine = engine.tensor_state(static_cast<int>(t));
    if (mine.end <= mine.begin) continue;
    const auto& tensor = plan.tensors[t];
    const std::string& n = tensor.spec.name;
    Loaded l;
    l.tensor = static_cast<int>(t);
    const int64_t len = mine.end - mine.begin;
    l.master.assign(len, 0.0f);
    l.exp_avg.assign(len, 0.0f);
    if (!tensor.geom.factored) l.exp_avg_sq.assign(len, 0.0f);
    int64_t covered = 0;
    bool have_stats = !tensor.geom.factored;
    for (const ShardIndex& sh : shards) {
      auto r = sh.ranges.find(n);
      if (r == sh.ranges.end()) continue;
      const int64_t lo = std::max(mine.begin, r->second.first);
      const int64_t hi = std::min(mine.end, r->second.second);
      if (lo < hi) {
        const int64_t first = lo - r->second.first, count = hi - lo, at = lo - mine.begin;
        for (auto [kind, dst] : {std::pair{"/master", &l.master}, std::pair{"/exp_avg", &l.exp_avg},
                                 std::pair{"/exp_avg_sq", &l.exp_avg_sq}}) {
          if (dst->empty()) continue;
          if (absl::Status s = ReadFloats(sh, n + kind, first, count, dst->data() + at); !s.ok())
            return s;
        }
        covered += count;
      }
      if (!have_stats) {
        l.sq_row.assign(tensor.geom.rows(), 0.0f);
        l.res_row.assign(tensor.geom.rows(), 0.0f);
        l.sq_col.assign(tensor.geom.cols(), 0.0f);
        l.res_col.assign(tensor.geom.cols(), 0.0f);
        for (auto [kind, dst] : {std::pair{"/exp_avg_sq_row", &l.sq_row}, std::pair{"/exp_avg_sq_col", &l.sq_col},
                                 std::pair{"/exp_avg_res_row", &l.res_row},
                                 std::pair{"/exp_avg_res_col", &l.res_col}}) {
          if (absl::Status s = ReadFloats(sh, n + kind, 0, static_cast<int64_t>(dst->size()), dst->data());
              !s.ok())
            return s;
        }
        have_stats = true;
      }
    }
    if (covered != len || !have_stats)
      return absl::FailedPreconditionError(absl::StrCat(
          "the checkpoint does not cover tensor '", n, "' elements [", mine.begin, ", ", mine.end,
          "): was it written for another model?"));
    out.tensors.push_back(std::move(l));
  }
  return out;
}

absl::Status ApplyShards(ShardedCame& engine, const PendingLoad& load) {
  for (const PendingLoad::Tensor& l : load.tensors) {
    TensorStateView v = engine.tensor_state(l.tensor);
    v.master = l.master;
    v.exp_avg = l.exp_avg;
    v.exp_avg_sq = l.exp_avg_sq;
    v.exp_avg_sq_row = l.sq_row;
    v.exp_avg_sq_col = l.sq_col;
    v.exp_avg_res_row = l.res_row;
    v.exp_avg_res_col = l.res_col;
    if (absl::Status s = engine.SetTensorState(l.tensor, v); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status LoadShards(ShardedCame& engine, const std::vector<std::string>& shard_paths) {
  auto load = ReadShards(engine, shard_paths);
  if (!load.ok()) return load.status();
  return ApplyShards(engine, *load);
}

absl::StatusOr<CheckpointManifest> ReadCheckpointManifest(const std::string& manifest_path) {
  std::ifstream f(manifest_path);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot read ", manifest_path));
  json j = json::parse(f, nullptr, false);
  if (j.is_discarded() || j.value("format", "") != "came-checkpoint-manifest")
    return absl::DataLossError(absl::StrCat(manifest_path, " is not a came checkpoint manifest"));
  CheckpointManifest m;
  m.step = j.value("step", int64_t{0});
  m.world_size = j.value("world_size", 0);
  const std::filesystem::path dir = std::filesystem::path(manifest_path).parent_path();
  for (const json& s : j["shards"]) {
    m.shard_paths.push_back((dir / s["file"].get<std::string>()).string());
    m.shard_bytes.push_back(s.value("bytes", int64_t{-1}));
    m.shard_sha256.push_back(s.value("sha256", std::string()));
  }
  return m;
}

absl::Status VerifyShards(const CheckpointManifest& m) {
  std::vector<char> buf(1 << 20);
  for (size_t i = 0; i < m.shard_paths.size(); ++i) {
    const std::string& path = m.shard_paths[i];
    std::ifstream f(path, std::ios::binary);
    if (!f) return absl::NotFoundError(absl::StrCat("cannot read checkpoint shard ", path));
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), nullptr);
    int64_t bytes = 0;
    while (f) {
      f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const std::streamsize got = f.gcount();
      EVP_DigestUpdate(md, buf.data(), static_cast<size_t>(got));
      bytes += got;
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(md, digest, &len);
    EVP_MD_CTX_free(md);
    if (bytes != m.shard_bytes[i])
      return absl::DataLossError(absl::StrCat(path, " has ", bytes, " bytes; the manifest says ",
                                              m.shard_bytes[i]));
    if (Hex(digest, len) != m.shard_sha256[i])
      return absl::DataLossError(absl::StrCat(path, " does not match its SHA-256 in the manifest"));
  }
  return absl::OkStatus();
}

}  // namespace came
