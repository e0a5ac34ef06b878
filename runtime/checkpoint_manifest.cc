#include "runtime/checkpoint_manifest.h"

#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/checkpoint_io.h"

namespace came {
namespace {

using nlohmann::json;

// Returns a short rendering of a JSON value for an error message.
std::string Shown(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 40) + "..." : s;
}

class Fields {
 public:
  Fields(const std::string& path, const json& object, std::string where)
      : path_(path), object_(object), where_(std::move(where)) {}

  absl::StatusOr<const json*> Get(const char* key) const {
    auto it = object_.find(key);
    if (it == object_.end()) return Bad(key, "is missing");
    return &*it;
  }
  absl::StatusOr<int64_t> Int(const char* key, int64_t lo, int64_t hi) const {
    auto v = Get(key);
    if (!v.ok()) return v.status();
    const json& j = **v;
    const bool in_range =
        j.is_number_integer() &&
        !(j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) &&
        j.get<int64_t>() >= lo && j.get<int64_t>() <= hi;
    if (!in_range)
      return Bad(key, absl::StrCat("must be an integer in [", lo, ", ", hi, "], got ", Shown(j)));
    return j.get<int64_t>();
  }
  absl::StatusOr<std::string> String(const char* key) const {
    auto v = Get(key);
    if (!v.ok()) return v.status();
    if (!(*v)->is_string()) return Bad(key, absl::StrCat("must be a string, got ", Shown(**v)));
    return (*v)->get<std::string>();
  }
  absl::Status Bad(const char* key, const std::string& what) const {
    return absl::DataLossError(
        absl::StrCat(path_, ": field '", where_, key, "' ", what, " (a damaged checkpoint?)"));
  }

 private:
  const std::string& path_;
  const json& object_;
  std::string where_;
};

// The fields of format_version 1 that loading does not use: each must still have its type,
// and no other field may appear (a damaged or foreign manifest is refused, not half-read).
absl::Status CheckOptionalFields(const std::string& path, const json& j) {
  static const std::set<std::string> kRequired = {"format", "format_version", "step", "world_size",
                                                  "plan_alignment", "shards"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    bool ok = kRequired.contains(key);
    if (key == "job_id" || key == "checkpoint_id" || key == "backend") ok = v.is_string();
    if (key == "plan_version" || key == "committed_unix_seconds") ok = v.is_number_integer();
    if (key == "hyperparameter_defaults") {
      ok = v.is_object();
      for (auto h = v.begin(); ok && h != v.end(); ++h) ok = h.value().is_number();
    }
    if (key == "tensor_manifest")
      ok = v.is_object() && v.size() == 2 && v.value("digest", json()).is_string() &&
           v.value("tensor_count", json()).is_number_integer();
    if (!ok)
      return absl::DataLossError(absl::StrCat(path, ": field '", key.substr(0, 64),
                                              "' is unknown or of the wrong type (a damaged checkpoint?)"));
  }
  return absl::OkStatus();
}

bool IsSha256Hex(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!absl::ascii_isdigit(c) && !(c >= 'a' && c <= 'f')) return false;
  return true;
}

}  // namespace

absl::StatusOr<CheckpointManifest> ReadCheckpointManifest(const std::string& manifest_path) {
  absl::StatusOr<std::string> text = ReadWholeFile(manifest_path, kMaxManifestBytes);
  if (!text.ok()) return text.status();
  return ParseCheckpointManifest(*text, manifest_path);
}

absl::StatusOr<CheckpointManifest> ParseCheckpointManifest(const std::string& text,
                                                           const std::string& path) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || j.value("format", json()) != "came-checkpoint-manifest")
    return absl::DataLossError(absl::StrCat(path, " is not a came checkpoint manifest"));
  Fields top(path, j, "");
  CheckpointManifest m;
  m.path = path;
  m.sha256 = Sha256Hex(text);
  auto version = top.Int("format_version", 1, 1);
  if (!version.ok()) return version.status();
  auto step = top.Int("step", 0, kMaxCheckpointStep);
  if (!step.ok()) return step.status();
  auto world = top.Int("world_size", 1, kMaxCheckpointWorld);
  if (!world.ok()) return world.status();
  m.step = *step;
  m.world_size = static_cast<int>(*world);
  auto alignment = top.Int("plan_alignment", 1, int64_t{1} << 30);
  if (!alignment.ok()) return alignment.status();
  m.plan_alignment = *alignment;
  if (absl::Status s = CheckOptionalFields(path, j); !s.ok()) return s;
  auto shards = top.Get("shards");
  if (!shards.ok()) return shards.status();
  if (!(*shards)->is_array() || (*shards)->size() != static_cast<size_t>(m.world_size))
    return top.Bad("shards", absl::StrCat("must be an array of world_size (", m.world_size,
                                          ") entries, got ", Shown(**shards)));
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::map<int64_t, size_t> by_rank;
  struct Shard {
    std::string file, sha256;
    int64_t bytes;
  };
  std::vector<Shard> list;
  for (size_t i = 0; i < (*shards)->size(); ++i) {
    const json& s = (**shards)[i];
    if (!s.is_object()) return top.Bad("shards", absl::StrCat("entry ", i, " is not an object"));
    Fields f(path, s, absl::StrCat("shards[", i, "]."));
    auto rank = f.Int("rank", 0, m.world_size - 1);
    if (!rank.ok()) return rank.status();
    auto file = f.String("file");
    if (!file.ok()) return file.status();
    if (!IsPlainFileName(*file))
      return f.Bad("file", absl::StrCat("must be a plain file name in the manifest's folder (no "
                                        "'/', not '..'), got ", Shown(*file)));
    auto bytes = f.Int("bytes", 0, kMaxShardBytes);
    if (!bytes.ok()) return bytes.status();
    auto sha = f.String("sha256");
    if (!sha.ok()) return sha.status();
    if (!IsSha256Hex(*sha)) return f.Bad("sha256", "must be 64 lowercase hexadecimal digits");
    if (s.size() != 4) return top.Bad("shards", absl::StrCat("entry ", i, " has fields other than rank, file, bytes and sha256"));
    if (!by_rank.emplace(*rank, i).second)
      return f.Bad("rank", absl::StrCat("repeats rank ", *rank));
    list.push_back({*file, *sha, *bytes});
  }
  for (const auto& [rank, i] : by_rank) {
    m.shard_paths.push_back((dir / list[i].file).string());
    m.shard_bytes.push_back(list[i].bytes);
    m.shard_sha256.push_back(list[i].sha256);
  }
  for (size_t a = 0; a < m.shard_paths.size(); ++a)
    for (size_t b = a + 1; b < m.shard_paths.size(); ++b)
      if (m.shard_paths[a] == m.shard_paths[b])
        return absl::DataLossError(
            absl::StrCat(path, ": ranks ", a, " and ", b, " name the same shard file"));
  return m;
}

absl::Status VerifyShards(const CheckpointManifest& m) {
  std::vector<char> buf(1 << 20);
  for (size_t i = 0; i < m.shard_paths.size(); ++i) {
    const std::string& path = m.shard_paths[i];
    absl::StatusOr<ReadableFile> f = OpenRegularFile(path);
    if (!f.ok()) return f.status();
    if (f->size != static_cast<uint64_t>(m.shard_bytes[i]))
      return absl::DataLossError(absl::StrCat(path, " has ", f->size, " bytes; the manifest says ",
                                              m.shard_bytes[i]));
    EVP_MD_CTX* md = NewSha256();
    absl::Status s;
    for (uint64_t off = 0; off < f->size && s.ok();) {
      const uint64_t n = std::min<uint64_t>(buf.size(), f->size - off);
      s = ReadAt(*f, off, buf.data(), n);
      EVP_DigestUpdate(md, buf.data(), n);
      off += n;
    }
    const std::string hex = FinishSha256Hex(md);
    if (!s.ok()) return s;
    if (hex != m.shard_sha256[i])
      return absl::DataLossError(absl::StrCat(path, " does not match its SHA-256 in the manifest"));
  }
  return absl::OkStatus();
}

}  // namespace came
