// RankClient: the C++ trainer's side of came.v1.Rank. Attach registers the parameters and
// maps the two shared buffers; the trainer then reads and writes its tensors through
// param(name) / grad(name) views (no copy), calls SyncParameters once after writing its
// initial parameters, and Step after every backward. Not thread-safe: one trainer thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "came/v1/rank.grpc.pb.h"
#include "grpcpp/security/credentials.h"
#include "runtime/rankd/rank_core.h"
#include "runtime/rankd/shared_buffer.h"

namespace came::rankd {

struct RankClientOptions {
  std::string address;  // host:port of came-rankd
  std::string token;
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // null: insecure
  absl::Duration timeout = absl::Minutes(10);             // deadline of every call
};

// What one Step reported.
struct StepReply {
  bool skipped = false;
  double grad_norm = 0.0;
  double min_clip_scale = 1.0;
  double seconds = 0.0;          // inside rankd
  double kernel_seconds = 0.0;
  StateBytes state_bytes;
};

class RankClient {
 public:
  static absl::StatusOr<std::unique_ptr<RankClient>> Connect(RankClientOptions options);
  // Connects with the environment came-launch sets (CAME_RANKD_ADDRESS, CAME_TOKEN).
  static absl::StatusOr<std::unique_ptr<RankClient>> FromEnvironment();
  ~RankClient();

  // Registers the manifest and maps the buffers (FailedPrecondition when attached already).
  absl::Status Attach(const Manifest& manifest);
  // Broadcasts rank 0's parameters (call after writing the initial values).
  absl::Status SyncParameters();
  // Runs optimizer step `step` (1, 2, ...) with one lr per group.
  absl::StatusOr<StepReply> Step(int64_t step, const std::vector<double>& lr,
                                 double max_grad_norm = 0.0);
  absl::Status Detach();

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  DType dtype() const { return dtype_; }
  // Views of one tensor in the shared buffers (float32 manifests; bytes for any dtype).
  std::span<float> param(const std::string& name);
  std::span<float> grad(const std::string& name);
  std::span<uint8_t> param_bytes(const std::string& name);
  std::span<uint8_t> grad_bytes(const std::string& name);
  // Zeroes the whole gradient buffer.
  void ZeroGrad();

 private:
  explicit RankClient(RankClientOptions options);
  std::unique_ptr<grpc::ClientContext> Context() const;

  RankClientOptions options_;
  std::unique_ptr<v1::Rank::Stub> stub_;
  std::string attachment_id_;
  int rank_ = 0, world_size_ = 1;
  DType dtype_ = DType::kFloat32;
  std::unique_ptr<SharedBuffer> params_, grads_;
  std::map<std::string, std::pair<int64_t, int64_t>> where_;  // name -> (offset, numel)
};

}  // namespace came::rankd
