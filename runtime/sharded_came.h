// ShardedCame: one rank's part of a ZeRO-style CAME optimizer (docs/design.md, "One optimizer
// step"). The only place where kernels and communicators meet.
//
// Ownership: the flat parameter and gradient buffers (ShardPlan::padded_size elements of the
// plan's dtype each) belong to the caller (rankd's shared memory, or a test) and must outlive
// the engine; the engine owns this rank's optimizer state: the fp32 master copy of its chunk
// (only when parameters are bf16/fp16; fp32 parameters are updated in place), the momentum,
// the second moment of unfactored pieces, and the row/column statistics of every factored
// tensor that intersects its chunk (Note [Split tensors]).
//
// Note [Split tensors]
// Every rank that holds a piece of a split tensor keeps the full row and column statistics
// of that tensor and updates them from the same all-reduced sums, so the copies stay
// identical. Between kernel phases the partial sums of split tensors are packed into one
// buffer per phase, in plan order (ranks that do not share a tensor contribute zeros),
// all-reduced and unpacked: three small all-reduces per step whose size is
// O(sum of rows + cols of split tensors), the first of which also carries the global sum of
// g^2 (finiteness and gradient-norm clipping). Whole tensors need no communication.
//
// Note [16-bit reduction]
// bf16/fp16 gradients are reduce-scattered in their own dtype, as NCCL does and as FSDP does
// by default (reduce_dtype = param dtype): each ring hop adds in float and rounds the partial
// sum to 16 bits (the last hop divides by W before it rounds), so the wire carries 2 bytes per
// element. When the ranks' gradients differ, the average therefore differs from the exact
// mean by a few 16-bit ulps, and the updates by about the same relative amount; fp32
// gradients are unaffected.
// EngineOptions::reduce_in_float32 reduces 16-bit gradients in float32 instead.
//
// Note [Step rounds]
// Every collective sequence of the engine and of rankd (Step, ExportState, a checkpoint's
// save and load, a detach: RoundKind) opens with one small all-reduce, the round header, so
// that the ranks agree on what they do before any state changes and no collective pairs
// with another kind's. It carries, per kind, the lowest rank calling it, its step and the
// lowest rank refusing it, then (last step, step, max_grad_norm, every group's
// hyperparameters); each value v as (v, -v) reduced with max, so every rank learns each
// value's max and min.
//  - If any rank exports and every other rank exports or steps, the round is an export
//    round: every rank contributes its shard (ExportState's layout); a rank whose call is a
//    Step serves the export and then opens the next round for its step. So a trainer may
//    call ExportState alone (only rank 0 saving, as in Hugging Face Trainer under
//    torch.distributed): the others serve it from their next Step.
//  - Any other mix of kinds (an export against a save, load or detach; a step against a
//    save; ...) fails the call on every rank at once with FailedPrecondition naming each
//    kind with its lowest rank and step; nothing changes. A detaching rank thus fails the
//    others' pending export or step at once instead of leaving them to the deadline; a rank
//    that saw a detach refuses every later call at once (its peer's engine is gone), so its
//    own Detach does not wait for it either.
//  - A rank that refuses its own call (invalid step inputs, a step out of order, a save of
//    the wrong step, no room for the state) still joins the round, marked refused: every
//    rank fails that call together, the refusing rank with its own error, the others naming
//    it (InvalidArgument for a step, FailedPrecondition otherwise), and nothing changes.
//  - Steps and exports require every rank to hold the state of the same step, and a step
//    round compares every value (step number, lr, betas, ...): a disagreement fails the step
//    on every rank with InvalidArgument naming the value. A save round compares the step.
//
// Thread-safety: Step and the state accessors must be called from one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/came_math.h"
#include "kernels/cpu_came.h"
#include "runtime/comm/communicator.h"
#include "runtime/shard_plan.h"

namespace came {

// Returns InvalidArgument naming group `g` unless its hyperparameters are usable
// (HyperError, kernels/hyper_check.h: the one check every entry point shares).
absl::Status ValidateHyper(const CameHyper& h, size_t g);

// Returns the communicator element type of a parameter dtype.
comm::ElemType ElemTypeOf(DType t);

// The collective call a round opens (Note [Step rounds]).
enum class RoundKind { kStep = 0, kExport, kSave, kLoad, kDetach };
inline constexpr int kRoundKinds = 5;
// Returns how messages name a kind ("step", "export", "save", "load", "detach").
const char* RoundKindName(RoundKind kind);

struct EngineOptions {
  std::vector<CameHyper> groups;   // hyperparameters per parameter group (index = group)
  double max_grad_norm = 0.0;      // > 0: clip the global gradient norm (clip_grad_norm_)
  int num_threads = 1;             // CPU kernel threads
  // bf16/fp16 gradients: reduce-scatter in float32 (FSDP's reduce_dtype=float32) instead of
  // in their own dtype (Note [16-bit reduction]): the average is exact to float32 at any world
  // size, for twice the wire bytes and a float32 copy of the gradient buffer. No effect for
  // float32 gradients.
  bool reduce_in_float32 = false;
  absl::Duration collective_timeout = absl::Minutes(5);
};

// Per-step inputs; each set value overrides the engine's option for this step (LR
// schedulers, torch param_groups edited between steps): `groups` replaces every
// hyperparameter of each group, then `lr` and `weight_decay` replace those two. Every rank
// must pass the same values (Note [Step rounds]).
struct StepInputs {
  int64_t step = 0;
  std::vector<double> lr;            // empty, or one per group
  std::vector<double> weight_decay;  // empty, or one per group
  std::vector<CameHyper> groups;     // empty, or one per group
  std::optional<double> max_grad_norm;
  // This rank asks every rank to stop after this step; carried by the step's first
  // all-reduce at no extra cost (Note [Stop requests] in runtime/service/coordinator.h).
  bool stop_vote = false;
};

struct PhaseTimes {
  double reduce_scatter = 0.0;  // seconds
  double stats_all_reduce = 0.0;
  double kernels = 0.0;
  double all_gather = 0.0;
  double total = 0.0;
};

struct EngineStepStats {
  bool skipped = false;        // a non-finite gradient somewhere: nothing changed anywhere
  double grad_norm = 0.0;      // global L2 norm of the averaged gradient
  double grad_scale = 1.0;     // gradient-norm clip factor
  double min_clip_scale = 1.0; // smallest update clip scale over this rank's tensors
  bool stop_voted = false;     // some rank set StepInputs::stop_vote in this step
  PhaseTimes seconds;
  int64_t bytes_reduce_scatter = 0;  // payload bytes this rank sent, per collective kind
  int64_t bytes_stats = 0;
  int64_t bytes_all_gather = 0;
};

// Optimizer state bytes held by this rank, by kind.
struct StateBytes {
  int64_t master = 0;       // fp32 master copy (low-precision parameters only)
  int64_t momentum = 0;     // exp_avg
  int64_t second_moment = 0;  // exp_avg_sq of unfactored pieces
  int64_t factored = 0;     // row/column statistics (sq and res)
  int64_t total() const { return master + momentum + second_moment + factored; }
};

// Where ExportState puts the whole optimizer state, in floats: exp_avg of every element in
// flat-buffer order (plan.used_size values, a tensor at its plan offset), exp_avg_sq likewise
// (0 for factored tensors), then for each factored tensor t from factored[t]: exp_avg_sq_row
// (rows), exp_avg_sq_col (cols), exp_avg_res_row (rows), exp_avg_res_col (cols).
struct StateLayout {
  int64_t exp_avg = 0;
  int64_t exp_avg_sq = 0;
  std::vector<int64_t> factored;  // per tensor; -1 when unfactored
  int64_t size = 0;
};

// This rank's state of one tensor (for tests, checkpoints and diagnostics).
struct TensorStateView {
  int64_t begin = 0, end = 0;          // the owned element range
  std::span<const float> exp_avg;      // [begin, end)
  std::span<const float> exp_avg_sq;   // unfactored: [begin, end)
  std::span<const float> exp_avg_sq_row, exp_avg_sq_col;    // factored: whole tensor
  std::span<const float> exp_avg_res_row, exp_avg_res_col;  // factored: whole tensor
  std::span<const float> master;       // [begin, end)
};

class ShardedCame {
 public:
  // Builds rank comm->rank()'s engine for `plan` (made for comm->size() ranks) over the
  // caller's flat buffers. The master copy is initialised from `params`. InvalidArgument when
  // the plan, the groups or the communicator do not fit together.
  static absl::StatusOr<std::unique_ptr<ShardedCame>> Create(const ShardPlan& plan,
                                                             comm::Communicator* comm,
                                                             void* params, void* grads,
                                                             EngineOptions options);
  ~ShardedCame();

  // Runs one optimizer step on the gradients in the flat gradient buffer (every rank's own)
  // and leaves the updated parameters in every rank's parameter buffer. A communicator
  // failure returns its status (DeadlineExceeded, Aborted, ...) and leaves the engine broken:
  // later steps return FailedPrecondition.
  absl::StatusOr<EngineStepStats> Step(const StepInputs& inputs);

  const ShardPlan& plan() const { return plan_; }
  const EngineOptions& options() const { return options_; }
  StateBytes state_bytes() const;
  // Returns this rank's state of tensor t; empty ranges when the rank holds none of it.
  TensorStateView tensor_state(int t) const;
  // Replaces this rank's state of tensor t (checkpoint loading): spans as in tensor_state.
  absl::Status SetTensorState(int t, const TensorStateView& state);
  int64_t steps_taken() const { return steps_taken_; }

  // All-gathers every rank's parameter chunk into every rank's parameter buffer (after
  // SetTensorState); collective.
  absl::Status GatherParameters();

  // Returns where ExportState puts each part of the state for `plan`.
  static StateLayout StateLayoutOf(const ShardPlan& plan);
  // Writes the whole optimizer state (every rank's shard) into `out` (StateLayoutOf(plan())
  // .size floats). Collective: the other ranks take part from their own ExportState or their
  // next Step (Note [Step rounds]). FailedPrecondition when the ranks hold the state of
  // different steps; a communicator failure breaks the engine as in Step.
  absl::Status ExportState(std::span<float> out);
  // Opens a round of `kind` (Note [Step rounds]) for a collective sequence that runs
  // outside the engine (rankd's checkpoint save and load, a detach), or joins a round of any
  // kind refusing this rank's call: `refusal` is this rank's verdict on its call (OK: valid;
  // step and export rounds open validly only through Step and ExportState). `step` is the
  // step the call concerns, named in messages and compared in save rounds. Returns OK when
  // every rank opened a valid round of this kind (the caller then runs its collectives);
  // else the same failure on every rank at once, as the Note says, `refusal` itself on the
  // refusing rank. A refused step still serves other ranks' exports. A communicator failure
  // breaks the engine as in Step.
  absl::Status OpenRound(RoundKind kind, int64_t step,
                         const absl::Status& refusal = absl::OkStatus());
  // Replaces this rank's state with its part of `in`, a whole state in StateLayoutOf(plan())
  // (from any world size), which follows step `step`; low-precision parameters' fp32 master
  // copy restarts from the parameter buffer. Not collective. InvalidArgument naming the
  // tensor when a value is not finite or a second moment is negative; nothing changes then.
  absl::Status ImportState(std::span<const float> in, int64_t step);
  // The number of the step the state follows (the last Step's, or what a load set).
  int64_t last_step() const { return last_step_; }
  void set_last_step(int64_t step) { last_step_ = step; }

 private:
  struct Piece;  // one ShardPiece with its state buffers
  class Completer;  // the completions between phases (kernels/step_sequence.h)
  ShardedCame(const ShardPlan& plan, comm::Communicator* comm, void* params, void* grads,
              EngineOptions options);
  absl::Status Init();
  // Opens Step's round: `error` is this rank's verdict on its own inputs ("" when valid).
  // Defined, as the rest of the rounds, in sharded_came_state.cc.
  absl::Status Round(const StepInputs* inputs, const std::string& error, std::span<float> out);
  // Runs rounds (Note [Step rounds]) until one of this call's kind: serves the export rounds
  // in between when this call is a step. `inputs`: the step's (kStep), else null; `out`: an
  // export's buffer.
  absl::Status Round(RoundKind kind, int64_t step, const StepInputs* inputs,
                     const absl::Status& refusal, std::span<float> out);
  absl::Status GatherState(std::span<float> out, bool whole);
  absl::Status CompleteSums(std::span<double> local, int kind, std::span<double> extra,
                            absl::Duration timeout);

  ShardPlan plan_;
  comm::Communicator* comm_;
  uint8_t* params_;
  uint8_t* grads_;
  EngineOptions options_;
  int rank_;
  size_t elem_size_;

  std::vector<Piece> pieces_;
  std::vector<int> piece_of_tensor_;     // tensor -> index into pieces_, or -1
  std::vector<float> grad_f32_;          // reduce_in_float32: the gradients in float32
  std::vector<float> master_;            // chunk_size floats when params are low precision
  std::unique_ptr<CpuCame> cpu_;
  std::unique_ptr<PhaseBackend> backend_;  // cpu_'s phases (Note [Phase backends])
  // Step scratch (no allocation per step).
  std::vector<double> packed_;           // split-tensor partial sums, plan order
  std::vector<int64_t> split_offset_;    // per split tensor: offset in packed_ (stats)
  int64_t packed_stats_size_ = 0;
  std::vector<CameHyper> step_groups_;
  bool broken_ = false;
  int64_t steps_taken_ = 0;
  int64_t last_step_ = 0;
  std::vector<double> header_;           // round header scratch
  std::string departed_;                 // why the ranks can no longer step together, or ""
};

}  // namespace came
