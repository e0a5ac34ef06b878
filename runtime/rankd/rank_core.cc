#include "runtime/rankd/rank_core.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <utility>
#include <cstring>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "runtime/checkpoint.h"
#include "runtime/service/limits.h"

namespace came::rankd {
namespace {

constexpr absl::Duration kAgreementSlice = absl::Seconds(1);

absl::Status Invalid(const std::string& s) { return absl::InvalidArgumentError(s); }

// FNV-1a over a canonical text of the manifest, twice with different seeds: a 128-bit
// fingerprint (agreement between ranks, not a security measure).
std::string Fingerprint(const std::string& text) {
  uint64_t a = 0xcbf29ce484222325ull, b = 0x84222325cbf29ce4ull;
  for (unsigned char c : text) {
    a = (a ^ c) * 0x100000001b3ull;
    b = (b ^ (c + 0x5bu)) * 0x100000001b3ull;
  }
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b));
  return buf;
}

std::string RandomId() {
  std::random_device rd;
  return absl::StrCat(absl::Hex(static_cast<uint64_t>(rd()) << 32 | rd(), absl::kZeroPad16));
}

// A failure of the engine that leaves it usable (a refused step or export: nothing changed
// on any rank); any other failure fails the job.
bool Recoverable(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument ||
         s.code() == absl::StatusCode::kFailedPrecondition;
}

}  // namespace

CameHyper HyperOverride::Apply(CameHyper h) const {
  for (auto [value, field] : {std::pair{&lr, &h.lr}, std::pair{&eps1, &h.eps1},
                              std::pair{&eps2, &h.eps2}, std::pair{&clip_threshold, &h.clip_threshold},
                              std::pair{&beta1, &h.beta1}, std::pair{&beta2, &h.beta2},
                              std::pair{&beta3, &h.beta3}, std::pair{&weight_decay, &h.weight_decay}})
    if (value->has_value()) *field = **value;
  return h;
}

absl::Status ValidateManifest(const Manifest& m) {
  using namespace came::service;  // limits
  if (m.tensors.empty()) return Invalid("the manifest has no tensors");
  if (static_cast<int64_t>(m.tensors.size()) > kMaxTensors)
    return Invalid(absl::StrCat("the manifest has ", m.tensors.size(), " tensors; the limit is ",
                                kMaxTensors));
  if (m.groups.empty()) return Invalid("at least one parameter group is required");
  if (static_cast<int64_t>(m.groups.size()) > kMaxParamGroups)
    return Invalid(absl::StrCat("too many parameter groups (limit ", kMaxParamGroups, ")"));
  for (size_t g = 0; g < m.groups.size(); ++g)
    if (absl::Status s = ValidateHyper(m.groups[g], g); !s.ok()) return s;
  std::set<std::string> names;
  int64_t total = 0;
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    const TensorSpec& t = m.tensors[i];
    const std::string who = absl::StrCat("tensor ", i, " '", t.name.substr(0, 64), "'");
    if (t.name.empty()) return Invalid(absl::StrCat("tensor ", i, " has an empty name"));
    if (static_cast<int64_t>(t.name.size()) > kMaxNameLength)
      return Invalid(absl::StrCat(who, ": name longer than ", kMaxNameLength, " bytes"));
    if (!names.insert(t.name).second) return Invalid(absl::StrCat(who, ": duplicate name"));
    if (static_cast<int>(t.shape.size()) > kMaxDims)
      return Invalid(absl::StrCat(who, ": ", t.shape.size(), " dims; the limit is ", kMaxDims));
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d <= 0) return Invalid(absl::StrCat(who, ": dims must be >= 1, got ", d));
      if (__builtin_mul_overflow(numel, d, &numel) || numel > kMaxTotalElements)
        return Invalid(absl::StrCat(who, ": element count overflows the limit of 2^40"));
    }
    if (__builtin_add_overflow(total, numel, &total) || total > kMaxTotalElements)
      return Invalid("the manifest has more than 2^40 elements in all");
    if (t.dtype != m.tensors[0].dtype)
      return Invalid(absl::StrCat(who, ": dtype ", std::string(DTypeName(t.dtype)), " differs from ",
                                  std::string(DTypeName(m.tensors[0].dtype)),
                                  " (all tensors of a manifest share one dtype)"));
    if (t.group < 0 || t.group >= static_cast<int>(m.groups.size()))
      return Invalid(absl::StrCat(who, ": group ", t.group, " does not exist (", m.groups.size(),
                                  " groups)"));
  }
  return absl::OkStatus();
}

std::string ManifestDigestOf(const Manifest& m) {
  std::string text;
  for (const TensorSpec& t : m.tensors) {
    absl::StrAppend(&text, t.name.size(), ":", t.name, "|", static_cast<int>(t.dtype), "|",
                    t.group, "|");
    for (int64_t d : t.shape) absl::StrAppend(&text, d, ",");
    text += ";";
  }
  // Every hyperparameter, bit for bit (a decimal rendering would hide small differences).
  for (const CameHyper& h : m.groups) {
    text += "g";
    for (double v : {h.lr, h.eps1, h.eps2, h.clip_threshold, h.beta1, h.beta2, h.beta3,
                     h.weight_decay}) {
      uint64_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      absl::StrAppend(&text, absl::Hex(bits), ",");
    }
    text += ";";
  }
  return Fingerprint(text);
}

struct RankCore::Attachment {
  std::string id;
  Manifest manifest;
  ShardPlan plan;
  std::unique_ptr<TrainerBuffer> params, grads;
  std::unique_ptr<ShardedCame> engine;
  int64_t last_step = 0;
  std::optional<std::pair<int64_t, SavedCheckpoint>> saved;  // the last save: step, where
  int64_t stopped_after = 0;  // > 0: the job stopped after this step (Note [Stop requests])
  std::unique_ptr<SharedBuffer> state;  // the last ExportState's or ReserveStateBuffer's
  int64_t state_buffers = 0;
};

RankCore::RankCore(RankCoreOptions options, std::unique_ptr<comm::Communicator> comm,
                   Agreement agreement, StepObserver observer, CheckpointHooks checkpoints)
    : options_(std::move(options)),
      comm_(std::move(comm)),
      agreement_(std::move(agreement)),
      observer_(std::move(observer)),
      checkpoints_(std::move(checkpoints)) {}

absl::StatusOr<std::unique_ptr<RankCore>> RankCore::Create(RankCoreOptions options,
                                                           std::unique_ptr<comm::Communicator> comm,
                                                           Agreement agreement,
                                                           StepObserver observer,
                                                           CheckpointHooks checkpoints) {
  if (comm == nullptr) return Invalid("no communicator");
  if (comm->rank() != options.rank || comm->size() != options.world_size)
    return Invalid(absl::StrCat("the communicator is rank ", comm->rank(), " of ", comm->size(),
                                ", expected ", options.rank, " of ", options.world_size));
  if (options.shm_prefix.empty() || options.shm_prefix[0] != '/')
    return Invalid("shm_prefix must start with '/'");
  if (options.alignment < 1) return Invalid("alignment must be >= 1");
  if (options.device >= 0)
    if (absl::Status s = CheckDevice(options.device); !s.ok()) return s;
  std::unique_ptr<RankCore> core(new RankCore(std::move(options), std::move(comm),
                                              std::move(agreement), std::move(observer),
                                              std::move(checkpoints)));
  core->worker_ = std::thread([c = core.get()] { c->WorkerLoop(); });
  return core;
}

RankCore::~RankCore() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    if (abort_.ok()) abort_ = absl::CancelledError("the rank daemon is shutting down");
  }
  comm_->Abort();
  worker_.join();
}

void RankCore::Abort(absl::Status reason) {
  {
    absl::MutexLock lock(&mu_);
    if (!abort_.ok()) return;
    abort_ = reason.ok() ? absl::AbortedError("aborted") : std::move(reason);
  }
  comm_->Abort();
}

void RankCore::RequestStop() {
  absl::MutexLock lock(&mu_);
  stop_requested_ = true;
}

absl::Status RankCore::aborted() const {
  absl::MutexLock lock(&mu_);
  return abort_;
}

void RankCore::Enqueue(absl::AnyInvocable<void(absl::Status)> task) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(task));
}

void RankCore::WorkerLoop() {
  while (true) {
    absl::AnyInvocable<void(absl::Status)> task;
    absl::Status abort;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](RankCore* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
            return c->stop_ || !c->queue_.empty();
          },
          this));
      if (queue_.empty()) break;  // stopping with nothing left
      task = std::move(queue_.front());
      queue_.pop_front();
      abort = abort_;
    }
    task(abort);
  }
  attachment_.reset();
}

absl::Status RankCore::CheckAttachment(const std::string& id) const {
  if (attachment_ == nullptr) return absl::FailedPreconditionError("no trainer is attached: call Attach first");
  if (id != attachment_->id)
    return absl::FailedPreconditionError(
        absl::StrCat("unknown attachment id '", id.substr(0, 64), "'"));
  return absl::OkStatus();
}

absl::Status RankCore::CheckEngine(const std::string& id) const {
  if (absl::Status s = CheckAttachment(id); !s.ok()) return s;
  if (attachment_->engine == nullptr)
    return absl::FailedPreconditionError(
        "the initial parameters were never synchronized: call SyncParameters first");
  return absl::OkStatus();
}

void RankCore::Attach(Manifest manifest, Done<absl::StatusOr<Layout>> done) {
  if (absl::Status s = ValidateManifest(manifest); !s.ok()) return done(s);
  auto plan = ShardPlan::Make(manifest.tensors, options_.world_size, options_.alignment);
  if (!plan.ok()) return done(plan.status());
  Enqueue([this, manifest = std::move(manifest), plan = *std::move(plan),
           done = std::move(done)](absl::Status aborted) mutable {
    if (!aborted.ok()) return done(aborted);
    if (attachment_ != nullptr)
      return done(absl::FailedPreconditionError(
          "a trainer is already attached to this rank; Detach it first"));
    const std::string digest = ManifestDigestOf(manifest);
    if (agreement_) {
      // Waits in slices of at most kAgreementSlice so that an Abort ends the wait promptly
      // (a timed-out submission may be repeated: the coordinator keeps the rank's digest).
      const absl::Time deadline = absl::Now() + options_.agreement_timeout;
      absl::Status s;
      while (true) {
        if (absl::Status a = RankCore::aborted(); !a.ok()) return done(a);
        const absl::Duration left = deadline - absl::Now();
        s = agreement_(digest, static_cast<int64_t>(manifest.tensors.size()),
                       std::min(left, kAgreementSlice));
        if (s.code() != absl::StatusCode::kDeadlineExceeded || left <= kAgreementSlice) break;
      }
      if (!s.ok()) return done(s);
    }
    auto a = std::make_unique<Attachment>();
    a->id = RandomId();
    const size_t bytes = static_cast<size_t>(plan.padded_size) * DTypeSize(plan.dtype);
    const std::string base = absl::StrCat(options_.shm_prefix, "-", ++attach_count_);
    auto params = CreateTrainerBuffer(options_.device, base + "-params", bytes);
    if (!params.ok()) return done(params.status());
    auto grads = CreateTrainerBuffer(options_.device, base + "-grads", bytes);
    if (!grads.ok()) return done(grads.status());
    a->params = *std::move(params);
    a->grads = *std::move(grads);
    a->manifest = std::move(manifest);
    a->plan = std::move(plan);
    Layout layout;
    layout.attachment_id = a->id;
    layout.rank = options_.rank;
    layout.world_size = options_.world_size;
    layout.plan = a->plan;
    layout.params_name = a->params->name();
    layout.grads_name = a->grads->name();
    layout.device = a->params->device();
    layout.params_ipc_handle = a->params->ipc_handle();
    layout.grads_ipc_handle = a->grads->ipc_handle();
    layout.buffer_bytes = bytes;
    layout.digest = digest;
    attachment_ = std::move(a);
    done(std::move(layout));
  });
}

void RankCore::SyncParameters(std::string id, Done<absl::StatusOr<StateBytes>> done) {
  Enqueue([this, id = std::move(id), done = std::move(done)](absl::Status aborted) mutable {
    if (!aborted.ok()) return done(aborted);
    if (absl::Status s = CheckAttachment(id); !s.ok()) return done(s);
    Attachment& a = *attachment_;
    if (a.engine != nullptr)
      return done(absl::FailedPreconditionError("parameters were already synchronized"));
    // The engine's kernels and the rank's communicator read host memory: device buffers
    // wait for the engine's CUDA backend (EngineOptions), which this build does not have.
    if (options_.device >= 0)
      return done(absl::UnimplementedError(absl::StrCat(
          "the parameters are in CUDA device ", options_.device,
          "'s memory, but this build's optimizer engine steps host buffers only: start "
          "came-rankd without --device (host shared memory)")));
    absl::Status s = comm_->Broadcast(a.params->data(), a.plan.padded_size,
                                      ElemTypeOf(a.plan.dtype), 0, options_.collective_timeout);
    if (!s.ok()) {
      Abort(s);
      return done(RankCore::aborted());  // the first reason: another rank's death rather than our abort
    }
    EngineOptions eo;
    eo.groups = a.manifest.groups;
    eo.num_threads = options_.num_threads;
    eo.reduce_in_float32 = options_.reduce_in_float32;
    eo.collective_timeout = options_.collective_timeout;
    auto engine = ShardedCame::Create(a.plan, comm_.get(), a.params->data(), a.grads->data(), eo);
    if (!engine.ok()) return done(engine.status());
    a.engine = *std::move(engine);
    done(a.engine->state_bytes());
  });
}

void RankCore::Step(StepCall call, Done<absl::StatusOr<StepOutcome>> done) {
  Enqueue([this, call = std::move(call), done = std::move(done)](absl::Status aborted) mutable {
    if (!aborted.ok()) return done(aborted);
    if (absl::Status s = CheckAttachment(call.attachment_id); !s.ok()) return done(s);
    Attachment& a = *attachment_;
    if (a.engine == nullptr)
      return done(absl::FailedPreconditionError(
          "Step before SyncParameters: the initial parameters were never synchronized"));
    if (a.stopped_after > 0) {
      StepOutcome stopped;
      stopped.stopped = true;
      stopped.stopped_after = a.stopped_after;
      return done(std::move(stopped));
    }
    // A refused step still joins the step's round, so that every rank fails it at once
    // (Note [Step rounds] in runtime/sharded_came.h).
    const size_t groups = a.manifest.groups.size();
    absl::Status refusal;
    if (call.step < 1)
      refusal = Invalid(absl::StrCat("step must be >= 1, got ", call.step));
    else if (!std::isfinite(call.max_grad_norm) || call.max_grad_norm < 0)
      refusal = Invalid("max_grad_norm must be finite and >= 0 (0: off)");
    else if (call.step <= a.last_step)
      refusal = absl::FailedPreconditionError(
          absl::StrCat("step ", call.step, " is out of order: step ", a.last_step,
                       " was already taken (steps must increase)"));
    else if (call.lr.size() != groups)
      refusal = Invalid(absl::StrCat("expected one lr per parameter group (", groups, "), got ",
                                     call.lr.size()));
    else if (!call.hyper.empty() && call.hyper.size() != groups)
      refusal = Invalid(absl::StrCat("expected one set of hyperparameters per parameter group (",
                                     groups, "), got ", call.hyper.size()));
    if (!refusal.ok()) return done(Refuse(RoundKind::kStep, call.step, std::move(refusal)));
    a.state.reset();  // the trainer has read the last exported state by now
    StepInputs in;
    in.step = call.step;
    for (size_t g = 0; g < groups; ++g) {
      CameHyper h = a.manifest.groups[g];
      h.lr = call.lr[g];
      if (!call.weight_decay.empty()) h.weight_decay = call.weight_decay[g];
      in.groups.push_back(call.hyper.empty() ? h : call.hyper[g].Apply(h));
    }
    in.max_grad_norm = call.max_grad_norm;
    {
      absl::MutexLock lock(&mu_);
      in.stop_vote = stop_requested_;
    }
    auto stats = a.engine->Step(in);
    if (!stats.ok()) {
      if (Recoverable(stats.status())) return done(stats.status());
      Abort(stats.status());
      return done(RankCore::aborted());  // the first reason: another rank's death rather than our abort
    }
    a.last_step = call.step;
    StepOutcome out{*std::move(stats), a.engine->state_bytes()};
    if (observer_) observer_(call.step, out.stats, out.state_bytes);
    // Every rank takes the same decision here: the stop vote is the same all-reduced value
    // everywhere, and the step numbers are too.
    const bool every = options_.checkpoint_every > 0 && call.step % options_.checkpoint_every == 0;
    if (checkpoints_.begin && (every || out.stats.stop_voted)) {
      auto saved = SaveOnWorker(call.step);
      // A failed save fails on every rank alike (the coordinator aborts the checkpoint for
      // all). The state after a stop vote must reach disk, so that failure ends the Step; an
      // automatic save that fails is reported and training goes on (the next one retries).
      if (!saved.ok() && out.stats.stop_voted)
        return done(absl::Status(saved.status().code(),
                                 absl::StrCat("step ", call.step, " was taken but its checkpoint "
                                              "failed: ", saved.status().message())));
      if (!saved.ok()) {
        out.checkpoint_error = absl::StrCat("the automatic checkpoint of step ", call.step,
                                            " failed: ", saved.status().ToString());
        std::fprintf(stderr, "came-rankd: rank %d: %s; training goes on\n", options_.rank,
                     out.checkpoint_error.c_str());
      }
    }
    if (out.stats.stop_voted) a.stopped_after = call.step;
    done(std::move(out));
  });
}

void RankCore::Detach(std::string id, Done<absl::Status> done) {
  Enqueue([this, id = std::move(id), done = std::move(done)](absl::Status aborted) mutable {
    if (absl::Status s = CheckAttachment(id); !s.ok()) return done(s);
    // A detach is a round (Note [Step rounds] in runtime/sharded_came.h): every rank's
    // trainer detaches, and another rank's pending export, step, save or load fails at once
    // naming it instead of waiting out the deadline. Detaching is allowed after an abort
    // too (there is nobody to tell then): it releases the buffers.
    absl::Status round;
    if (aborted.ok() && attachment_->engine != nullptr) {
      round = attachment_->engine->OpenRound(RoundKind::kDetach, attachment_->last_step);
      if (!round.ok() && !Recoverable(round)) Abort(round);
    }
    attachment_.reset();
    done(round.ok() || Recoverable(round) ? absl::OkStatus() : RankCore::aborted());
  });
}

void RankCore::SaveCheckpoint(std::string id, int64_t step,
                              Done<absl::StatusOr<SavedCheckpoint>> done) {
  if (!checkpoints_.begin)
    return done(absl::FailedPreconditionError("checkpoints are off: start the coordinator with --checkpoint-dir"));
  Enqueue([this, id = std::move(id), step, done = std::move(done)](absl::Status aborted) mutable {
    if (!aborted.ok()) return done(aborted);
    if (absl::Status s = CheckEngine(id); !s.ok()) return done(s);
    if (step != attachment_->last_step)
      return done(Refuse(RoundKind::kSave, step,
                         absl::FailedPreconditionError(absl::StrCat(
                             "asked to save step ", step, " but the state is that after step ",
                             attachment_->last_step))));
    done(SaveOnWorker(step));
  });
}

absl::Status RankCore::Refuse(RoundKind kind, int64_t step, absl::Status reason) {
  absl::Status s = attachment_->engine->OpenRound(kind, step, reason);
  if (s == reason || Recoverable(s)) return s;
  Abort(s);  // the round's collective failed
  return RankCore::aborted();
}

absl::StatusOr<SavedCheckpoint> RankCore::SaveOnWorker(int64_t step) {
  Attachment& a = *attachment_;
  // The save's collectives open with a save round (Note [Step rounds]).
  if (absl::Status s = a.engine->OpenRound(RoundKind::kSave, step); !s.ok()) {
    if (Recoverable(s)) return s;
    Abort(s);
    return RankCore::aborted();
  }
  if (a.saved.has_value() && a.saved->first == step) return a.saved->second;
  // Note [Save agreement]: every rank writes and reports its shard, then the ranks count
  // their failures (an all-reduce, the barrier the commit needs anyway). A rank whose disk is
  // full or whose folder is gone fails the save on every rank at once; nobody commits, nobody
  // is left waiting, the job keeps training and a later save (this step again, or a later
  // one) starts afresh (the coordinator drops an older abandoned checkpoint).
  absl::StatusOr<std::pair<std::string, std::string>> begun = checkpoints_.begin(step);
  absl::Status mine = begun.status();
  const std::string file = absl::StrCat("rank-", options_.rank, ".safetensors");
  if (mine.ok()) {
    absl::StatusOr<ShardFile> shard = WriteShard(*a.engine, step, begun->second + "/" + file);
    mine = shard.ok() ? checkpoints_.report(begun->first, file, shard->bytes, shard->sha256)
                      : shard.status();
  }
  int64_t failed = mine.ok() ? 0 : 1;
  if (absl::Status s = comm_->AllReduce(&failed, 1, comm::ElemType::kInt64, comm::ReduceOp::kSum,
                                        options_.collective_timeout);
      !s.ok()) {
    Abort(s);
    return RankCore::aborted();
  }
  if (!mine.ok())
    return absl::Status(mine.code(), absl::StrCat("rank ", options_.rank, " could not save step ",
                                                  step, ": ", mine.message()));
  if (failed != 0)
    return absl::AbortedError(absl::StrCat("the checkpoint of step ", step, " was not saved: ", failed,
                                           " other rank(s) could not write their shard"));
  const std::string& ckpt_id = begun->first;
  auto manifest = checkpoints_.commit(ckpt_id);
  if (!manifest.ok()) return manifest.status();
  a.saved = {step, SavedCheckpoint{ckpt_id, *manifest}};
  return a.saved->second;
}

void RankCore::LoadCheckpoint(std::string id, std::string manifest_path,
                              Done<absl::StatusOr<LoadedCheckpoint>> done) {
  if (manifest_path.empty() && !checkpoints_.latest)
    return done(absl::FailedPreconditionError(
        "checkpoints are off: give a manifest path or start the coordinator with --checkpoint-dir"));
  Enqueue([this, id = std::move(id), path = std::move(manifest_path),
           done = std::move(done)](absl::Status aborted) mutable {
    if (!aborted.ok()) return done(aborted);
    if (absl::Status s = CheckEngine(id); !s.ok()) return done(s);
    // The load's collectives open with a load round (Note [Step rounds]).
    if (absl::Status s = attachment_->engine->OpenRound(RoundKind::kLoad, attachment_->last_step);
        !s.ok()) {
      if (Recoverable(s)) return done(s);
      Abort(s);
      return done(RankCore::aborted());
    }
    // Note [Load agreement]: every rank reads its part, and the ranks compare what they
    // read, before any rank changes state. One rank's bad or different manifest, or bad file,
    // fails the load everywhere (nobody waits for a collective it will not join) and leaves
    // every rank as it was.
    absl::StatusOr<CheckpointManifest> manifest = absl::UnknownError("unread");
    if (path.empty()) {
      absl::StatusOr<std::string> latest = checkpoints_.latest();
      if (latest.ok()) path = *latest;
      manifest = latest.ok() ? ReadCheckpointManifest(path) : latest.status();
    } else {
      manifest = ReadCheckpointManifest(path);
    }
    Attachment& a = *attachment_;
    absl::Status verified = manifest.ok() ? VerifyShards(*manifest) : manifest.status();
    absl::StatusOr<PendingLoad> load =
        verified.ok() ? ReadShards(*a.engine, *manifest) : absl::StatusOr<PendingLoad>(verified);
    std::string reference(64, '\0');  // rank 0's manifest digest
    if (options_.rank == 0 && manifest.ok()) reference = manifest->sha256;
    int64_t outcome[2] = {load.ok() ? 0 : 1, 0};  // ranks that failed, ranks that differ
    absl::Status s = comm_->Broadcast(reference.data(), reference.size(), comm::ElemType::kUInt8, 0,
                                      options_.collective_timeout);
    const bool differs = manifest.ok() && manifest->sha256 != reference;
    outcome[1] = differs ? 1 : 0;
    if (s.ok())
      s = comm_->AllReduce(outcome, 2, comm::ElemType::kInt64, comm::ReduceOp::kSum,
                           options_.collective_timeout);
    if (!s.ok()) {
      Abort(s);
      return done(RankCore::aborted());
    }
    if (!load.ok()) return done(load.status());
    if (differs)
      return done(absl::FailedPreconditionError(absl::StrCat(
          "the ranks disagree on the checkpoint to load: rank ", options_.rank, " read ", path,
          " (manifest SHA-256 ", manifest->sha256.substr(0, 16), "...), which is not rank 0's ",
          "manifest; give every rank the same manifest. Nothing was loaded")));
    if (outcome[0] + outcome[1] != 0)
      return done(absl::FailedPreconditionError(absl::StrCat(
          outcome[0], " other rank(s) could not read the checkpoint ", path, " and ", outcome[1],
          " read a different manifest than rank 0; nothing was loaded")));
    if (absl::Status s = ApplyShards(*a.engine, *load); !s.ok()) {
      Abort(s);  // a size mismatch after a successful read: a bug, the state is partial
      return done(RankCore::aborted());
    }
    if (absl::Status s = a.engine->GatherParameters(); !s.ok()) {
      Abort(s);
      return done(RankCore::aborted());
    }
    a.last_step = manifest->step;
    a.engine->set_last_step(manifest->step);
    // Saving the loaded step again (a job restarted after its last save) returns this one.
    a.saved = {manifest->step,
               SavedCheckpoint{std::filesystem::path(path).parent_path().filename().string(), path}};
    done(LoadedCheckpoint{path, manifest->step, manifest->world_size});
  });
}

namespace {

// Replaces `slot` with a new zeroed shared buffer of the engine's state layout.
absl::StatusOr<StateTransfer> NewStateBuffer(const std::string& name, const ShardedCame& engine,
                                             std::unique_ptr<SharedBuffer>& slot) {
  slot.reset();
  StateTransfer t;
  t.layout = ShardedCame::StateLayoutOf(engine.plan());
  t.buffer_bytes = static_cast<size_t>(t.layout.size) * sizeof(float);
  auto buffer = SharedBuffer::Create(name, t.buffer_bytes);
  if (!buffer.ok()) return buffer.status();
  slot = *std::move(buffer);
  t.buffer_name = slot->name();
  t.step = engine.last_step();
  return t;
}

}  // namespace

absl::StatusOr<StateTransfer> RankCore::StateBufferOnWorker() {
  Attachment& a = *attachment_;
  return NewStateBuffer(
      absl::StrCat(options_.shm_prefix, "-", attach_count_, "-state-", ++a.state_buffers),
      *a.engine, a.state);
}

void RankCore::ExportState(std::string id, Done<absl::StatusOr<StateTransfer>> done) {
  Enqueue([this, id = std::move(id), done = std::move(done)](absl::Status aborted) mutable {
    if (!aborted.ok()) return done(aborted);
    if (absl::Status s = CheckEngine(id); !s.ok()) return done(s);
    Attachment& a = *attachment_;
    auto t = StateBufferOnWorker();
    // No room for the state: the export's round is refused, so the others fail it at once.
    if (!t.ok()) return done(Refuse(RoundKind::kExport, a.last_step, t.status()));
    absl::Status s = a.engine->ExportState(
        {static_cast<float*>(a.state->data()), static_cast<size_t>(t->layout.size)});
    if (!s.ok()) {
      a.state.reset();
      if (Recoverable(s)) return done(s);
      Abort(s);
      return done(RankCore::aborted());
    }
    done(*std::move(t));
  });
}

void RankCore::ReserveStateBuffer(std::string id, Done<absl::StatusOr<StateTransfer>> done) {
  Enqueue([this, id = std::move(id), done = std::move(done)](absl::Status aborted) mutable {
    if (!aborted.ok()) return done(aborted);
    if (absl::Status s = CheckEngine(id); !s.ok()) return done(s);
    done(StateBufferOnWorker());
  });
}

void RankCore::ImportState(std::string id, int64_t step, Done<absl::Status> done) {
  if (step < 0) return done(Invalid(absl::StrCat("step must be >= 0, got ", step)));
  Enqueue([this, id = std::move(id), step, done = std::move(done)](absl::Status aborted) mutable {
    if (!aborted.ok()) return done(aborted);
    if (absl::Status s = CheckEngine(id); !s.ok()) return done(s);
    Attachment& a = *attachment_;
    if (a.state == nullptr)
      return done(absl::FailedPreconditionError(
          "no state buffer to import: call ReserveStateBuffer and fill it first"));
    const size_t n = static_cast<size_t>(ShardedCame::StateLayoutOf(a.plan).size);
    absl::Status s = a.engine->ImportState({static_cast<const float*>(a.state->data()), n}, step);
    a.state.reset();
    if (!s.ok()) return done(s);
    a.last_step = step;
    a.saved.reset();
    done(absl::OkStatus());
  });
}

}  // namespace came::rankd
