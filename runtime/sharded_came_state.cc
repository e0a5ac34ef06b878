// ShardedCame's round headers (Note [Step rounds]) and the whole-state export and import.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "absl/strings/str_cat.h"
#include "runtime/sharded_came.h"

namespace came {
namespace {

// Header slots before the per-group values: per round kind, the lowest rank calling it, its
// lowest step and the lowest rank refusing it (kNone / the world size: none), then the
// values a step round compares (Note [Step rounds]).
enum Slot {
  kLastStep = 0,
  kKindRank,
  kKindStep = kKindRank + kRoundKinds,
  kKindRefuser = kKindStep + kRoundKinds,
  kStep = kKindRefuser + kRoundKinds,
  kMaxGradNorm,
  kFixedSlots
};
constexpr double kNone = std::numeric_limits<double>::max();
constexpr int kValuesPerGroup = 8;
constexpr const char* kGroupValueNames[kValuesPerGroup] = {
    "lr", "eps1", "eps2", "clip_threshold", "beta1", "beta2", "beta3", "weight_decay"};

void GroupValues(const CameHyper& h, double* out) {
  const double v[kValuesPerGroup] = {h.lr,    h.eps1,  h.eps2,  h.clip_threshold,
                                     h.beta1, h.beta2, h.beta3, h.weight_decay};
  std::copy(std::begin(v), std::end(v), out);
}

std::string SlotName(size_t slot) {
  switch (slot) {
    case kStep: return "the step number";
    case kMaxGradNorm: return "max_grad_norm";
    default: break;
  }
  const size_t g = (slot - kFixedSlots) / kValuesPerGroup;
  return absl::StrCat(kGroupValueNames[(slot - kFixedSlots) % kValuesPerGroup],
                      " of parameter group ", g);
}

// Returns the shortest of %.15g and %.17g that reads back as v.
std::string Number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  if (std::strtod(buf, nullptr) != v) std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

const char* RoundKindName(RoundKind kind) {
  switch (kind) {
    case RoundKind::kStep: return "step";
    case RoundKind::kExport: return "export";
    case RoundKind::kSave: return "save";
    case RoundKind::kLoad: return "load";
    case RoundKind::kDetach: return "detach";
  }
  return "unknown";
}

StateLayout ShardedCame::StateLayoutOf(const ShardPlan& plan) {
  StateLayout l;
  l.exp_avg = 0;
  l.exp_avg_sq = plan.used_size;
  int64_t next = 2 * plan.used_size;
  l.factored.assign(plan.tensors.size(), -1);
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorGeometry& g = plan.tensors[t].geom;
    if (!g.factored) continue;
    l.factored[t] = next;
    next += 2 * g.stats_size();
  }
  l.size = next;
  return l;
}

absl::Status ShardedCame::Round(const StepInputs* inputs, const std::string& error,
                                std::span<float> out) {
  const absl::Status refusal =
      error.empty() ? absl::OkStatus()
                    : absl::InvalidArgumentError(absl::StrCat("step ", inputs->step, ": ", error));
  return Round(RoundKind::kStep, inputs->step, inputs, refusal, out);
}

absl::Status ShardedCame::OpenRound(RoundKind kind, int64_t step, const absl::Status& refusal) {
  if (broken_)
    return absl::FailedPreconditionError(
        "the engine is unusable after a failed collective; restart from a checkpoint");
  if ((kind == RoundKind::kStep || kind == RoundKind::kExport) && refusal.ok())
    return absl::InternalError("step and export rounds open validly only through Step and "
                               "ExportState");
  StepInputs in;
  in.step = step;
  return Round(kind, step, kind == RoundKind::kStep ? &in : nullptr, refusal, {});
}

absl::Status ShardedCame::Round(RoundKind kind, int64_t step, const StepInputs* inputs,
                                const absl::Status& refusal, std::span<float> out) {
  const bool exporting = kind == RoundKind::kExport;
  if (!departed_.empty()) return absl::FailedPreconditionError(departed_);
  if (plan_.world_size == 1) {
    if (!refusal.ok()) return refusal;
    return exporting ? GatherState(out, true) : absl::OkStatus();
  }
  const double world = plan_.world_size;
  const size_t n = kFixedSlots + kValuesPerGroup * options_.groups.size();
  auto open = [&] {
    header_.assign(2 * n, 0.0);
    double* v = header_.data();
    for (int k = 0; k < kRoundKinds; ++k) {
      const bool mine = k == static_cast<int>(kind);
      v[kKindRank + k] = mine ? rank_ : world;
      v[kKindStep + k] = mine ? static_cast<double>(step) : kNone;
      v[kKindRefuser + k] = mine && !refusal.ok() ? rank_ : world;
    }
    v[kLastStep] = static_cast<double>(last_step_);
    v[kStep] = static_cast<double>(step);
    if (inputs != nullptr) {
      v[kMaxGradNorm] = inputs->max_grad_norm.value_or(options_.max_grad_norm);
      for (size_t g = 0; g < step_groups_.size(); ++g)
        GroupValues(step_groups_[g], v + kFixedSlots + kValuesPerGroup * g);
    }
    for (size_t i = 0; i < n; ++i) header_[n + i] = -header_[i];
  };
  while (true) {
    open();
    if (absl::Status s = comm_->AllReduce(header_.data(), 2 * n, comm::ElemType::kFloat64,
                                          comm::ReduceOp::kMax, options_.collective_timeout);
        !s.ok()) {
      broken_ = true;
      return s;
    }
    auto max_of = [&](size_t i) { return header_[i]; };
    auto min_of = [&](size_t i) { return -header_[n + i]; };
    auto first_rank = [&](RoundKind k) { return min_of(kKindRank + static_cast<int>(k)); };
    auto refuser = [&](RoundKind k) { return min_of(kKindRefuser + static_cast<int>(k)); };
    auto present = [&](RoundKind k) { return first_rank(k) < world; };
    int kinds = 0;
    for (int k = 0; k < kRoundKinds; ++k) kinds += present(static_cast<RoundKind>(k)) ? 1 : 0;
    const bool export_round =
        present(RoundKind::kExport) && kinds == (present(RoundKind::kStep) ? 2 : 1);
    if (kinds > 1 && !export_round) {
      std::string calls;
      for (int k = 0; k < kRoundKinds; ++k) {
        const auto kk = static_cast<RoundKind>(k);
        if (!present(kk)) continue;
        absl::StrAppend(&calls, calls.empty() ? "" : ", ", RoundKindName(kk), " on rank ",
                        Number(first_rank(kk)), " (step ", Number(min_of(kKindStep + k)), ")");
      }
      const std::string error = absl::StrCat(
          "the ranks' collective calls do not pair up: ", calls,
          "; every rank must make the same call (an export pairs only with exports and "
          "steps); nothing changed");
      if (present(RoundKind::kDetach) && kind != RoundKind::kDetach)
        departed_ = absl::StrCat(error, ". A rank detached: detach this rank too and attach "
                                 "every rank again");
      return absl::FailedPreconditionError(error);
    }
    const RoundKind round = export_round ? RoundKind::kExport : kind;
    if (round != RoundKind::kLoad && round != RoundKind::kDetach &&
        min_of(kLastStep) != max_of(kLastStep))
      return absl::FailedPreconditionError(absl::StrCat(
          "the ranks hold the optimizer state of different steps (", Number(min_of(kLastStep)),
          " and ", Number(max_of(kLastStep)), "): load the same state on every rank"));
    if (round == RoundKind::kExport) {
      const bool refused = refuser(RoundKind::kExport) < world;
      if (exporting) {
        if (!refusal.ok()) return refusal;
        if (refused)
          return absl::FailedPreconditionError(absl::StrCat(
              "rank ", Number(refuser(RoundKind::kExport)), " refused the export of the state "
              "after step ", last_step_, " (its error says why); nothing was exported"));
        return GatherState(out, true);
      }
      if (!refused) {
        // Serve another rank's export (only the factored statistics' sum needs room here),
        // then open this step's round again.
        std::vector<float> scratch(StateLayoutOf(plan_).size - 2 * plan_.used_size);
        if (absl::Status s = GatherState(scratch, false); !s.ok()) return s;
      }
      continue;
    }
    if (!refusal.ok()) return refusal;
    if (refuser(round) < world) {
      const std::string who = Number(refuser(round));
      if (round == RoundKind::kStep)
        return absl::InvalidArgumentError(absl::StrCat(
            "step ", step, ": rank ", who,
            " refused its step inputs (its error names the value); nothing changed"));
      return absl::FailedPreconditionError(absl::StrCat(
          "rank ", who, " refused the ", RoundKindName(round), " (step ", step,
          "; its error says why); nothing changed"));
    }
    const size_t compared_end = round == RoundKind::kStep   ? n
                                : round == RoundKind::kSave ? kStep + 1
                                                            : kStep;
    for (size_t i = kStep; i < compared_end; ++i)
      if (min_of(i) != max_of(i))
        return absl::InvalidArgumentError(absl::StrCat(
            round == RoundKind::kStep ? absl::StrCat("step ", step, ": ") : "",
            "the ranks disagree on ", SlotName(i), " (", Number(min_of(i)), " on one rank, ",
            Number(max_of(i)), " on another): every rank must send the same ",
            round == RoundKind::kStep ? "step scalars" : "values", "; nothing changed"));
    return absl::OkStatus();
  }
}

// Collects every rank's state; collective, after a round. `whole`: `out` is the whole state
// (StateLayoutOf's layout); else this rank only serves another's export and `out` holds the
// factored statistics alone (the layout's tail).
absl::Status ShardedCame::GatherState(std::span<float> out, bool whole) {
  const StateLayout layout = StateLayoutOf(plan_);
  const int64_t flat = whole ? 2 * plan_.used_size : 0;  // where the statistics start in out
  if (static_cast<int64_t>(out.size()) != layout.size - 2 * plan_.used_size + flat)
    return absl::InvalidArgumentError(absl::StrCat("the state buffer holds ", out.size(),
                                                   " floats, the state needs ", layout.size));
  const int64_t chunk = plan_.chunk_size;
  const int64_t w = plan_.world_size;
  // exp_avg and exp_avg_sq of this rank's chunk, side by side, then all-gathered.
  std::vector<float> gathered(2 * chunk * w, 0.0f);
  float* mine = gathered.data() + 2 * chunk * rank_;
  std::fill(out.begin() + flat, out.end(), 0.0f);
  for (const ShardPiece& piece : plan_.pieces[rank_]) {
    const TensorStateView v = tensor_state(piece.tensor);
    std::copy(v.exp_avg.begin(), v.exp_avg.end(), mine + piece.chunk_offset);
    std::copy(v.exp_avg_sq.begin(), v.exp_avg_sq.end(), mine + chunk + piece.chunk_offset);
    const auto& t = plan_.tensors[piece.tensor];
    if (!t.geom.factored || t.first_rank != rank_) continue;  // one copy of split statistics
    float* f = out.data() + flat + (layout.factored[piece.tensor] - 2 * plan_.used_size);
    for (std::span<const float> s :
         {v.exp_avg_sq_row, v.exp_avg_sq_col, v.exp_avg_res_row, v.exp_avg_res_col})
      f = std::copy(s.begin(), s.end(), f);
  }
  if (w > 1) {
    const int64_t stats = layout.size - 2 * plan_.used_size;
    // Every rank's exp_avg and exp_avg_sq chunks reach every rank (there is no gather to one).
    absl::Status s = comm_->AllGather(mine, gathered.data(), 2 * chunk, comm::ElemType::kFloat32,
                                      options_.collective_timeout);
    if (s.ok() && stats > 0)
      s = comm_->AllReduce(out.data() + flat, stats, comm::ElemType::kFloat32,
                           comm::ReduceOp::kSum, options_.collective_timeout);
    if (!s.ok()) {
      broken_ = true;
      return s;
    }
  }
  for (int64_t i = 0; whole && i < plan_.used_size; ++i) {
    const float* block = gathered.data() + 2 * chunk * (i / chunk);
    out[layout.exp_avg + i] = block[i % chunk];
    out[layout.exp_avg_sq + i] = block[chunk + i % chunk];
  }
  return absl::OkStatus();
}

absl::Status ShardedCame::ExportState(std::span<float> out) {
  if (broken_)
    return absl::FailedPreconditionError(
        "the engine is unusable after a failed collective; restart from a checkpoint");
  return Round(RoundKind::kExport, last_step_, nullptr, absl::OkStatus(), out);
}

absl::Status ShardedCame::ImportState(std::span<const float> in, int64_t step) {
  const StateLayout layout = StateLayoutOf(plan_);
  if (static_cast<int64_t>(in.size()) != layout.size)
    return absl::InvalidArgumentError(absl::StrCat("the state holds ", in.size(),
                                                   " floats, this plan's state has ", layout.size));
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("step must be >= 0, got ", step));
  // Check everything this rank takes before changing anything.
  auto check = [&](int t, const char* what, int64_t from, int64_t count, bool moment) {
    for (int64_t i = 0; i < count; ++i) {
      const float x = in[from + i];
      if (!std::isfinite(x) || (moment && x < 0))
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", plan_.tensors[t].spec.name, "': ", what, "[", i, "] is ", Number(x),
            moment ? " (a second moment must be finite and >= 0)" : " (must be finite)"));
    }
    return absl::OkStatus();
  };
  for (const ShardPiece& piece : plan_.pieces[rank_]) {
    const int t = piece.tensor;
    const auto& tp = plan_.tensors[t];
    const int64_t from = tp.offset + piece.begin, count = piece.end - piece.begin;
    if (absl::Status s = check(t, "exp_avg", layout.exp_avg + from, count, false); !s.ok())
      return s;
    if (!tp.geom.factored) {
      if (absl::Status s = check(t, "exp_avg_sq", layout.exp_avg_sq + from, count, true); !s.ok())
        return s;
      continue;
    }
    if (absl::Status s = check(t, "factored statistics", layout.factored[t],
                               2 * tp.geom.stats_size(), true);
        !s.ok())
      return s;
  }
  for (const ShardPiece& piece : plan_.pieces[rank_]) {
    const int t = piece.tensor;
    const auto& tp = plan_.tensors[t];
    const int64_t from = tp.offset + piece.begin, count = piece.end - piece.begin;
    TensorStateView v;
    v.begin = piece.begin;
    v.end = piece.end;
    v.exp_avg = in.subspan(layout.exp_avg + from, count);
    if (tp.geom.factored) {
      const int64_t rows = tp.geom.rows(), cols = tp.geom.cols();
      std::span<const float> f = in.subspan(layout.factored[t], 2 * (rows + cols));
      v.exp_avg_sq_row = f.subspan(0, rows);
      v.exp_avg_sq_col = f.subspan(rows, cols);
      v.exp_avg_res_row = f.subspan(rows + cols, rows);
      v.exp_avg_res_col = f.subspan(2 * rows + cols, cols);
    } else {
      v.exp_avg_sq = in.subspan(layout.exp_avg_sq + from, count);
    }
    // Sizes match the plan, so this cannot fail after the checks above.
    if (absl::Status s = SetTensorState(t, v); !s.ok()) return s;
  }
  if (!master_.empty()) {
    const uint8_t* my_params = params_ + rank_ * plan_.chunk_size * elem_size_;
    for (size_t i = 0; i < master_.size(); ++i)
      master_[i] = LoadAsFloat(my_params, plan_.dtype, i);
  }
  last_step_ = step;
  return absl::OkStatus();
}

}  // namespace came
