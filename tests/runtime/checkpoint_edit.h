// Test helpers that write a checkpoint of a LocalCluster (shards plus a manifest as the
// coordinator writes it) and damage it on purpose: edit the manifest's JSON or a shard's
// header JSON, and refresh the manifest's sizes and digests so that an edited shard reaches
// the header parser instead of failing its SHA-256.
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_io.h"
#include "runtime/local_cluster.h"

namespace came::testing {

inline std::string Slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void Spit(const std::filesystem::path& p, const std::string& data) {
  std::filesystem::remove(p);
  std::ofstream(p, std::ios::binary) << data;
}

// Writes every rank's shard and a manifest into dir; returns the manifest's path.
inline std::string SaveCheckpointOf(LocalCluster& c, const std::filesystem::path& dir, int64_t step) {
  nlohmann::json shards = nlohmann::json::array();
  for (int r = 0; r < c.world_size(); ++r) {
    const std::string file = "rank-" + std::to_string(r) + ".safetensors";
    auto f = WriteShard(c.engine(r), step, (dir / file).string());
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) return "";
    shards.push_back({{"rank", r}, {"file", file}, {"bytes", f->bytes}, {"sha256", f->sha256}});
  }
  nlohmann::json m = {{"format", "came-checkpoint-manifest"}, {"format_version", 1},
                      {"job_id", "test"},  {"step", step},
                      {"world_size", c.world_size()}, {"plan_alignment", c.plan().alignment},
                      {"shards", shards}};
  const std::filesystem::path path = dir / "manifest.json";
  Spit(path, m.dump(2));
  return path.string();
}

inline void EditManifest(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(Slurp(path));
  edit(j);
  Spit(path, j.dump(2));
}

// Returns a shard's header JSON and its data bytes.
inline std::pair<nlohmann::json, std::string> SplitShard(const std::string& bytes) {
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return {nlohmann::json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}

inline std::string JoinShard(const std::string& header_text, const std::string& data) {
  const uint64_t n = header_text.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header_text + data;
}

// Rewrites the sizes and SHA-256 of every shard in the manifest from the files as they are.
inline void RefreshManifest(const std::string& manifest_path) {
  const std::filesystem::path dir = std::filesystem::path(manifest_path).parent_path();
  EditManifest(manifest_path, [&](nlohmann::json& j) {
    for (auto& s : j["shards"]) {
      const std::string data = Slurp(dir / s["file"].get<std::string>());
      s["bytes"] = data.size();
      s["sha256"] = Sha256Hex(data);
    }
  });
}

inline void EditShardHeader(const std::string& shard_path,
                            const std::function<void(nlohmann::json&)>& edit) {
  auto [header, data] = SplitShard(Slurp(shard_path));
  edit(header);
  Spit(shard_path, JoinShard(header.dump(), data));
}

}  // namespace came::testing
