#include "runtime/service/coordinator.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/hyper_check.h"
#include "nlohmann/json.hpp"
#include "runtime/service/checkpoint_files.h"
#include "runtime/service/checkpoint_retention.h"
#include "runtime/service/limits.h"
#include "runtime/service/validation.h"

namespace came::service {
namespace {

constexpr size_t kMaxRanksInMessage = 16;

// Returns "1, 3, 5" (the first kMaxRanksInMessage, then "and N more").
std::string FormatRanks(const std::vector<int>& ranks) {
  if (ranks.size() <= kMaxRanksInMessage) return absl::StrJoin(ranks, ", ");
  std::vector<int> head(ranks.begin(), ranks.begin() + kMaxRanksInMessage);
  return absl::StrCat(absl::StrJoin(head, ", "), " and ", ranks.size() - head.size(), " more");
}

std::string Describe(const ManifestDigest& m) {
  return absl::StrFormat("digest %s, %d tensors", m.digest, m.tensor_count);
}

std::string RandomJobId() {
  absl::BitGen gen;
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen));
}

absl::Status CheckHyper(const CameHyper& h) {
  const std::string error = HyperError(h);
  if (error.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError("the job's default hyperparameters: " + error);
}

std::vector<int> MissingRanks(const std::vector<int>& present, int world_size) {
  std::vector<int> missing;
  size_t j = 0;
  for (int r = 0; r < world_size; ++r) {
    if (j < present.size() && present[j] == r) {
      ++j;
    } else {
      missing.push_back(r);
    }
  }
  return missing;
}

template <typename Map>
std::vector<int> Keys(const Map& m) {
  std::vector<int> keys;
  keys.reserve(m.size());
  for (const auto& [k, v] : m) keys.push_back(k);
  return keys;
}

}  // namespace

std::vector<int> Coordinator::ExpireWaiters(std::map<int, Waiter>& waiters, absl::Time now,
                                            const absl::Status& expired,
                                            DeferredCalls& deferred) {
  std::vector<int> ranks;
  for (auto it = waiters.begin(); it != waiters.end();) {
    if (it->second.deadline > now) {
      ++it;
      continue;
    }
    deferred.Add([done = std::move(it->second.done), expired]() mutable { done(expired); });
    ranks.push_back(it->first);
    it = waiters.erase(it);
  }
  return ranks;
}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(CoordinatorOptions options,
                                                                 const Clock* clock) {
  if (options.world_size < 1 || options.world_size > kMaxWorldSize) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "world size %d is outside [1, %d]", options.world_size, kMaxWorldSize));
  }
  if (absl::Status s = CheckName("token", options.token, kMaxNameLength); !s.ok()) return s;
  if (options.config.lease <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the lease must be positive");
  }
  if (options.config.plan_alignment < 1) {
    return absl::InvalidArgumentError("the plan alignment must be >= 1");
  }
  if (absl::Status s = CheckHyper(options.config.defaults); !s.ok()) return s;
  if (options.generation < 0 || options.config.checkpoint_every < 0 ||
      options.keep_checkpoints < 0) {
    return absl::InvalidArgumentError(
        "generation, checkpoint_every and keep_checkpoints must be >= 0");
  }
  if (options.job_id.empty()) options.job_id = RandomJobId();
  std::optional<CheckpointInfo> latest;
  if (!options.config.checkpoint_dir.empty()) {
    CheckpointStorage* storage = options.storage ? options.storage : RealCheckpointStorage();
    if (absl::Status s = storage->CreateDirectories(options.config.checkpoint_dir); !s.ok()) return s;
    latest = FindLatestCheckpoint(options.config.checkpoint_dir);
  }
  auto coordinator = std::unique_ptr<Coordinator>(new Coordinator(std::move(options), clock));
  absl::MutexLock lock(&coordinator->mu_);
  coordinator->latest_checkpoint_ = std::move(latest);
  return coordinator;
}

Coordinator::Coordinator(CoordinatorOptions options, const Clock* clock)
    : options_(std::move(options)),
      clock_(clock),
      store_(clock),
      storage_(options_.storage != nullptr ? options_.storage : RealCheckpointStorage()) {}

Coordinator::~Coordinator() { Shutdown(); }

absl::Status Coordinator::Authenticate(std::string_view token) const {
  if (token.empty()) return absl::UnauthenticatedError("no token: send the job's token");
  if (!ConstantTimeEquals(token, options_.token)) {
    return absl::UnauthenticatedError("wrong token");
  }
  return absl::OkStatus();
}

absl::Status Coordinator::WaitBlockerLocked() const {
  if (shut_down_) return absl::UnavailableError("the coordinator is shutting down");
  if (state_ == JobState::kFailed) {
    return absl::AbortedError(absl::StrCat("the job failed: ", abort_reason_));
  }
  if (state_ == JobState::kFinished) return absl::FailedPreconditionError("the job finished");
  return absl::OkStatus();
}

absl::Status Coordinator::CheckMemberLocked(int rank) const {
  if (!members_.contains(rank)) {
    return absl::FailedPreconditionError(absl::StrFormat("rank %d has not joined", rank));
  }
  return absl::OkStatus();
}

void Coordinator::AbortWaitsLocked(const absl::Status& status, DeferredCalls& deferred) {
  for (auto& [name, waiters] : barriers_) {
    for (auto& [rank, w] : waiters) {
      deferred.Add([done = std::move(w.done), status]() mutable { done(status); });
    }
  }
  barriers_.clear();
  for (auto& [rank, w] : manifest_waiters_) {
    deferred.Add([done = std::move(w.done), status]() mutable { done(status); });
  }
  manifest_waiters_.clear();
  manifests_.clear();
  deferred.Add([this, status] { store_.Abort(status); });
}

void Coordinator::FailLocked(std::string reason, DeferredCalls& deferred) {
  if (state_ == JobState::kFailed || state_ == JobState::kFinished) return;
  state_ = JobState::kFailed;
  abort_reason_ = std::move(reason);
  AbortWaitsLocked(WaitBlockerLocked(), deferred);
}

void Coordinator::ExpireLeasesLocked(absl::Time now, DeferredCalls& deferred) {
  if (state_ != JobState::kForming && state_ != JobState::kRunning) return;
  for (const auto& [rank, m] : members_) {
    const absl::Duration age = now - m.last_heartbeat;
    if (m.finished || age <= options_.config.lease) continue;
    FailLocked(absl::StrFormat("rank %d (host %s) lost its lease: no heartbeat for %s "
                               "(lease %s)",
                               rank, m.host.empty() ? "?" : m.host, absl::FormatDuration(age),
                               absl::FormatDuration(options_.config.lease)),
               deferred);
    return;
  }
}

absl::StatusOr<JoinResult> Coordinator::Join(const JoinRequest& request) {
  const int w = options_.world_size;
  if (request.generation > options_.generation) {
    return absl::UnavailableError(absl::StrFormat(
        "this coordinator runs generation %d of the job and the rank generation %d: retry "
        "until the restarted coordinator answers",
        options_.generation, request.generation));
  }
  if (request.generation < options_.generation) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the rank belongs to generation %d of the job, which has restarted as generation %d",
        request.generation, options_.generation));
  }
  if (request.world_size != 0 && request.world_size != w) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "world size mismatch: the rank expects %d, the job has %d", request.world_size, w));
  }
  if (request.requested_rank < -1 || request.requested_rank >= w) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "requested rank %d is outside [0, %d) (-1 asks for any free rank)",
        request.requested_rank, w));
  }
  if (static_cast<int64_t>(request.endpoints.size()) > kMaxEndpoints) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d endpoints; the limit is %d", request.endpoints.size(), kMaxEndpoints));
  }
  for (const std::string& e : request.endpoints) {
    if (absl::Status s = CheckLength("endpoint", e, kMaxNameLength); !s.ok()) return s;
  }
  if (absl::Status s = CheckLength("host", request.host, kMaxNameLength); !s.ok()) return s;

  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  ExpireLeasesLocked(now, deferred);
  if (state_ == JobState::kFailed || state_ == JobState::kFinished) return WaitBlockerLocked();
  int rank = request.requested_rank;
  if (rank >= 0) {
    if (auto it = members_.find(rank); it != members_.end()) {
      return absl::AlreadyExistsError(
          absl::StrFormat("rank %d has already joined (host %s)", rank, it->second.host));
    }
  } else {
    if (static_cast<int>(members_.size()) == w) {
      return absl::FailedPreconditionError(
          absl::StrFormat("all %d ranks have joined: no rank is free", w));
    }
    rank = 0;
    while (members_.contains(rank)) ++rank;
  }
  members_[rank] = Member{request.host, request.endpoints, now, -1, false};
  if (static_cast<int>(members_.size()) == w) state_ = JobState::kRunning;
  return JoinResult{rank, w, options_.config, options_.job_id};
}

absl::StatusOr<HeartbeatResult> Coordinator::Heartbeat(int rank, int64_t step) {
  if (absl::Status s = CheckRank(rank, options_.world_size); !s.ok()) return s;
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  ExpireLeasesLocked(now, deferred);
  if (absl::Status s = CheckMemberLocked(rank); !s.ok()) return s;
  Member& m = members_[rank];
  if (state_ == JobState::kForming || state_ == JobState::kRunning) {
    m.last_heartbeat = now;
    m.step = std::max(m.step, step);
  }
  return HeartbeatResult{state_, abort_reason_, options_.config.lease, stop_requested_};
}

absl::Status Coordinator::StoreSet(std::string_view key, std::string_view value) {
  return store_.Set(key, value);
}

void Coordinator::StoreGet(std::string_view key, absl::Time deadline, ValueCallback done) {
  store_.Get(key, std::min(deadline, clock_->Now() + absl::Seconds(kMaxWaitSeconds)),
             std::move(done));
}

absl::StatusOr<int64_t> Coordinator::StoreAdd(std::string_view key, int64_t delta) {
  return store_.Add(key, delta);
}

void Coordinator::Barrier(std::string_view name, int rank, absl::Time deadline,
                          StatusCallback done) {
  DeferredCalls deferred;
  absl::Status status = CheckName("barrier name", name, kMaxKeyBytes);
  if (status.ok()) status = CheckRank(rank, options_.world_size);
  if (!status.ok()) return done(status);
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  ExpireLeasesLocked(now, deferred);
  status = WaitBlockerLocked();
  if (status.ok()) status = CheckMemberLocked(rank);
  auto& waiters = barriers_[std::string(name)];
  if (status.ok() && waiters.contains(rank)) {
    status = absl::AlreadyExistsError(
        absl::StrFormat("rank %d is already waiting in barrier '%s'", rank, name));
  }
  if (!status.ok()) {
    if (waiters.empty()) barriers_.erase(barriers_.find(name));
    deferred.Add([done = std::move(done), status]() mutable { done(status); });
    return;
  }
  deadline = std::min(deadline, now + absl::Seconds(kMaxWaitSeconds));
  waiters[rank] = Waiter{deadline, std::move(done)};
  if (static_cast<int>(waiters.size()) < options_.world_size) return;
  for (auto& [r, w] : waiters) {
    deferred.Add([done = std::move(w.done)]() mutable { done(absl::OkStatus()); });
  }
  barriers_.erase(barriers_.find(name));
}

void Coordinator::SubmitManifest(int rank, ManifestDigest manifest, absl::Time deadline,
                                 StatusCallback done) {
  DeferredCalls deferred;
  absl::Status status = CheckRank(rank, options_.world_size);
  if (status.ok()) status = CheckName("manifest digest", manifest.digest, kMaxNameLength);
  if (status.ok() && (manifest.tensor_count < 0 || manifest.tensor_count > kMaxTensors)) {
    status = absl::InvalidArgumentError(absl::StrFormat(
        "tensor count %d is outside [0, %d]", manifest.tensor_count, kMaxTensors));
  }
  if (!status.ok()) return done(status);
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  ExpireLeasesLocked(now, deferred);
  status = WaitBlockerLocked();
  if (status.ok()) status = CheckMemberLocked(rank);
  if (status.ok() && agreed_manifest_.has_value() && manifest != *agreed_manifest_) {
    status = absl::FailedPreconditionError(absl::StrFormat(
        "the tensor manifest of rank %d (%s) differs from the one the job agreed on (%s)", rank,
        Describe(manifest), Describe(*agreed_manifest_)));
  }
  if (status.ok() && manifest_waiters_.contains(rank)) {
    status = absl::AlreadyExistsError(
        absl::StrFormat("rank %d has already submitted its manifest and is waiting", rank));
  }
  if (!status.ok() || agreed_manifest_.has_value()) {
    deferred.Add([done = std::move(done), status]() mutable { done(status); });
    return;
  }
  manifests_[rank] = std::move(manifest);
  manifest_waiters_[rank] =
      Waiter{std::min(deadline, now + absl::Seconds(kMaxWaitSeconds)), std::move(done)};
  if (static_cast<int>(manifests_.size()) == options_.world_size) {
    CompleteManifestRoundLocked(deferred);
  }
}

void Coordinator::CompleteManifestRoundLocked(DeferredCalls& deferred) {
  const ManifestDigest& reference = manifests_.at(0);
  absl::Status status;
  for (const auto& [rank, m] : manifests_) {
    if (m == reference) continue;
    status = absl::FailedPreconditionError(
        absl::StrFormat("the tensor manifest of rank %d (%s) differs from rank 0's (%s)", rank,
                        Describe(m), Describe(reference)));
    break;
  }
  if (status.ok()) agreed_manifest_ = reference;
  for (auto& [rank, w] : manifest_waiters_) {
    deferred.Add([done = std::move(w.done), status]() mutable { done(status); });
  }
  manifest_waiters_.clear();
  manifests_.clear();
}

absl::StatusOr<CheckpointInfo> Coordinator::BeginCheckpoint(int rank, int64_t step) {
  if (absl::Status s = CheckRank(rank, options_.world_size); !s.ok()) return s;
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("step ", step, " is negative"));
  absl::MutexLock io(&checkpoint_io_mu_);  // Note [Checkpoint I/O outside the lock]
  DeferredCalls deferred;
  CheckpointInfo info;
  {
    absl::MutexLock lock(&mu_);
    ExpireLeasesLocked(clock_->Now(), deferred);
    if (options_.config.checkpoint_dir.empty()) {
      return absl::FailedPreconditionError(
          "checkpoints are off: the coordinator has no checkpoint folder");
    }
    if (state_ != JobState::kRunning) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot checkpoint: the job is ", std::string(JobStateName(state_))));
    }
    if (absl::Status s = CheckMemberLocked(rank); !s.ok()) return s;
    if (latest_checkpoint_.has_value() && step <= latest_checkpoint_->step) {
      return absl::AlreadyExistsError(absl::StrFormat(
          "a checkpoint of step %d is committed; step %d is not newer", latest_checkpoint_->step,
          step));
    }
    const std::string id = CheckpointId(step);
    if (auto it = pending_checkpoints_.find(id); it != pending_checkpoints_.end()) {
      return it->second.info;
    }
    // Ranks save together, one step at a time: a checkpoint of an older step that is still
    // pending was abandoned (a rank failed to write it) and must not count against the limit.
    std::erase_if(pending_checkpoints_, [step](const auto& p) { return p.second.info.step < step; });
    if (static_cast<int64_t>(pending_checkpoints_.size()) >= kMaxPendingCheckpoints) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%d checkpoints are in progress, the limit", kMaxPendingCheckpoints));
    }
    info = CheckpointInfo{id, step,
                          (std::filesystem::path(options_.config.checkpoint_dir) / id).string(), ""};
  }
  if (absl::Status s = storage_->CreateDirectories(info.directory); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  pending_checkpoints_[info.id] = PendingCheckpoint{info, {}};
  return info;
}

absl::Status Coordinator::ReportShard(const ShardReport& report) {
  if (absl::Status s = CheckRank(report.rank, options_.world_size); !s.ok()) return s;
  if (absl::Status s = CheckName("checkpoint id", report.checkpoint_id, kMaxNameLength);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckFileName("shard file", report.file); !s.ok()) return s;
  if (absl::Status s = CheckSha256Hex("sha256", report.sha256); !s.ok()) return s;
  if (report.bytes < 0) return absl::InvalidArgumentError("shard bytes is negative");
  absl::MutexLock lock(&mu_);
  auto it = pending_checkpoints_.find(report.checkpoint_id);
  if (it == pending_checkpoints_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no checkpoint '", report.checkpoint_id, "' is in progress"));
  }
  it->second.shards[report.rank] = report;
  return absl::OkStatus();
}

absl::StatusOr<CheckpointInfo> Coordinator::CommitCheckpoint(std::string_view checkpoint_id,
                                                             int rank) {
  if (absl::Status s = CheckRank(rank, options_.world_size); !s.ok()) return s;
  absl::MutexLock io(&checkpoint_io_mu_);  // Note [Checkpoint I/O outside the lock]
  CheckpointInfo info;
  std::string text;
  {
    absl::MutexLock lock(&mu_);
    if (latest_checkpoint_.has_value() && latest_checkpoint_->id == checkpoint_id) {
      return *latest_checkpoint_;
    }
    auto it = pending_checkpoints_.find(checkpoint_id);
    if (it == pending_checkpoints_.end()) {
      return absl::NotFoundError(
          absl::StrCat("no checkpoint '", std::string(checkpoint_id), "' is in progress"));
    }
    const PendingCheckpoint& pending = it->second;
    if (static_cast<int>(pending.shards.size()) < options_.world_size) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "checkpoint %s: shards missing from ranks %s", checkpoint_id,
          FormatRanks(MissingRanks(Keys(pending.shards), options_.world_size))));
    }
    info = pending.info;
    text = ManifestTextLocked(pending);
  }
  info.manifest_path = (std::filesystem::path(info.directory) / kManifestFileName).string();
  if (absl::Status s = storage_->WriteFileAtomically(info.manifest_path, text); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    latest_checkpoint_ = info;
    ++checkpoint_commits_;
    std::erase_if(pending_checkpoints_,
                  [&](const auto& p) { return p.second.info.step <= info.step; });
  }
  if (options_.keep_checkpoints > 0) {
    // The commit stands even if pruning fails; the next commit tries again.
    (void)storage_->Prune(options_.config.checkpoint_dir, options_.keep_checkpoints);
  }
  return info;
}

std::string Coordinator::ManifestTextLocked(const PendingCheckpoint& pending) const {
  const JobConfig& c = options_.config;
  const CameHyper& h = c.defaults;
  nlohmann::json j;
  j["format"] = "came-checkpoint-manifest";
  j["format_version"] = 1;
  j["job_id"] = options_.job_id;
  j["checkpoint_id"] = pending.info.id;
  j["step"] = pending.info.step;
  j["world_size"] = options_.world_size;
  j["plan_version"] = c.plan_version;
  j["plan_alignment"] = c.plan_alignment;
  j["backend"] = std::string(BackendName(c.backend));
  j["hyperparameter_defaults"] = {{"lr", h.lr},       {"eps1", h.eps1},
                                  {"eps2", h.eps2},   {"clip_threshold", h.clip_threshold},
                                  {"beta1", h.beta1}, {"beta2", h.beta2},
                                  {"beta3", h.beta3}, {"weight_decay", h.weight_decay}};
  if (agreed_manifest_.has_value()) {
    j["tensor_manifest"] = {{"digest", agreed_manifest_->digest},
                            {"tensor_count", agreed_manifest_->tensor_count}};
  }
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& [rank, s] : pending.shards) {
    shards.push_back({{"rank", rank}, {"file", s.file}, {"bytes", s.bytes}, {"sha256", s.sha256}});
  }
  j["shards"] = std::move(shards);
  j["committed_unix_seconds"] = absl::ToUnixSeconds(clock_->Now());
  return j.dump(2) + "\n";
}

std::optional<CheckpointInfo> Coordinator::LatestCheckpoint() const {
  absl::MutexLock lock(&mu_);
  return latest_checkpoint_;
}

JobStatus Coordinator::Status() {
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  ExpireLeasesLocked(now, deferred);
  JobStatus status;
  status.state = state_;
  status.abort_reason = abort_reason_;
  status.world_size = options_.world_size;
  status.job_id = options_.job_id;
  for (const auto& [rank, m] : members_) {
    status.members.push_back(
        MemberStatus{rank, m.host, m.endpoints, now - m.last_heartbeat, m.step, m.finished});
    status.step = status.members.size() == 1 ? m.step : std::min(status.step, m.step);
  }
  status.latest_checkpoint = latest_checkpoint_;
  status.checkpoint_commits = checkpoint_commits_;
  status.stop_requested = stop_requested_;
  status.generation = options_.generation;
  return status;
}

absl::StatusOr<JobState> Coordinator::Finish(int rank) {
  if (absl::Status s = CheckRank(rank, options_.world_size); !s.ok()) return s;
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  ExpireLeasesLocked(clock_->Now(), deferred);
  if (absl::Status s = CheckMemberLocked(rank); !s.ok()) return s;
  if (state_ == JobState::kFailed) return state_;
  members_[rank].finished = true;
  const bool all = static_cast<int>(members_.size()) == options_.world_size &&
                   std::all_of(members_.begin(), members_.end(),
                               [](const auto& kv) { return kv.second.finished; });
  if (all && state_ != JobState::kFinished) {
    state_ = JobState::kFinished;
    AbortWaitsLocked(WaitBlockerLocked(), deferred);
  }
  return state_;
}

absl::Status Coordinator::Fail(int rank, std::string_view reason) {
  if (rank != -1) {
    if (absl::Status s = CheckRank(rank, options_.world_size); !s.ok()) return s;
  }
  if (absl::Status s = CheckLength("reason", reason, kMaxReasonBytes); !s.ok()) return s;
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  if (state_ == JobState::kFinished) {
    return absl::FailedPreconditionError("the job has finished; it cannot fail");
  }
  FailLocked(rank == -1 ? absl::StrCat("operator: ", std::string(reason))
                        : absl::StrFormat("rank %d: %s", rank, reason),
             deferred);
  return absl::OkStatus();
}

absl::Status Coordinator::RequestStop() {
  absl::MutexLock lock(&mu_);
  if (options_.config.checkpoint_dir.empty()) {
    return absl::FailedPreconditionError(
        "cannot stop at a checkpoint: the coordinator has no checkpoint folder");
  }
  if (state_ == JobState::kFailed || state_ == JobState::kFinished) {
    return absl::FailedPreconditionError(
        absl::StrCat("the job is ", std::string(JobStateName(state_))));
  }
  stop_requested_ = true;
  return absl::OkStatus();
}

void Coordinator::Poll() {
  store_.Poll();
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  ExpireLeasesLocked(now, deferred);
  const int w = options_.world_size;
  for (auto it = barriers_.begin(); it != barriers_.end();) {
    auto& waiters = it->second;
    const std::string missing = FormatRanks(MissingRanks(Keys(waiters), w));
    const absl::Status expired = absl::DeadlineExceededError(
        absl::StrFormat("barrier '%s': %d of %d ranks arrived; missing ranks %s", it->first,
                        waiters.size(), w, missing));
    ExpireWaiters(waiters, now, expired, deferred);
    if (waiters.empty()) {
      barriers_.erase(it++);
    } else {
      ++it;
    }
  }
  if (!manifest_waiters_.empty()) {
    const absl::Status expired = absl::DeadlineExceededError(absl::StrFormat(
        "tensor manifest agreement: %d of %d ranks submitted; missing ranks %s",
        manifests_.size(), w, FormatRanks(MissingRanks(Keys(manifests_), w))));
    for (int rank : ExpireWaiters(manifest_waiters_, now, expired, deferred)) {
      manifests_.erase(rank);  // withdrawn: the rank may submit again
    }
  }
}

void Coordinator::Shutdown() {
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  AbortWaitsLocked(WaitBlockerLocked(), deferred);
}

}  // namespace came::service
