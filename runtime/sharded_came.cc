#include "runtime/sharded_came.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/hyper_check.h"
#include "kernels/step_sequence.h"

namespace came {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

absl::Status ToStatus(const PhaseStatus& s) {
  switch (s.code) {
    case PhaseStatus::kOk: return absl::OkStatus();
    case PhaseStatus::kInvalidArgument: return absl::InvalidArgumentError(s.message);
    case PhaseStatus::kFailedPrecondition: return absl::FailedPreconditionError(s.message);
    case PhaseStatus::kUnavailable: return absl::UnavailableError(s.message);
    case PhaseStatus::kInternal: return absl::InternalError(s.message);
  }
  return absl::InternalError(s.message);
}

}  // namespace

absl::Status ValidateHyper(const CameHyper& h, size_t g) {
  const std::string error = HyperError(h);
  if (error.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("parameter group ", g, ": ", error));
}

comm::ElemType ElemTypeOf(DType t) {
  switch (t) {
    case DType::kFloat32: return comm::ElemType::kFloat32;
    case DType::kBFloat16: return comm::ElemType::kBFloat16;
    case DType::kFloat16: return comm::ElemType::kFloat16;
  }
  return comm::ElemType::kFloat32;
}

// The completions between phases (kernels/step_sequence.h): all-reduces of the packed partial
// sums of split tensors, the first also carrying the sum of g^2 and the stop votes. Packs on
// the host: the engine runs the CPU backend (CpuPhases) only; a device backend needs the
// packing on its stream (docs/PERF.md, "GPU (H200): owed").
class ShardedCame::Completer final : public SumCompleter {
 public:
  Completer(ShardedCame& engine, bool stop_vote) : engine_(engine), stop_vote_(stop_vote) {}
  PhaseStatus Complete(SumKind kind) override {
    StepBuffers b = engine_.backend_->buffers();
    absl::Status s;
    if (kind == SumKind::kGradStats) {
      // {sum of g^2, stop votes}: Note [Stop requests] in runtime/service/coordinator.h.
      double extra[2] = {*b.grad_sum_sq, stop_vote_ ? 1.0 : 0.0};
      s = engine_.CompleteSums({b.sums, static_cast<size_t>(engine_.backend_->stats_size())}, 0,
                               extra, engine_.options_.collective_timeout);
      *b.grad_sum_sq = extra[0];
      stop_voted_ = extra[1] > 0;
    } else if (kind == SumKind::kSquares) {
      s = engine_.CompleteSums({b.sum_sq, engine_.pieces_.size()}, 1, {},
                               engine_.options_.collective_timeout);
    } else {
      s = engine_.CompleteSums({b.sums, static_cast<size_t>(engine_.backend_->stats_size())}, 2,
                               {}, engine_.options_.collective_timeout);
    }
    if (s.ok()) return {};
    status_ = s;
    return {PhaseStatus::kInternal, std::string(s.message())};
  }
  bool stop_voted() const { return stop_voted_; }
  // The communicator's status of a failed completion.
  const absl::Status& status() const { return status_; }

 private:
  ShardedCame& engine_;
  const bool stop_vote_;
  bool stop_voted_ = false;
  absl::Status status_;
};

struct ShardedCame::Piece {
  ShardPiece piece;
  TensorGeometry geom;
  std::vector<float> exp_avg;
  std::vector<float> exp_avg_sq;
  std::vector<float> sq_row, sq_col, res_row, res_col;
};

ShardedCame::ShardedCame(const ShardPlan& plan, comm::Communicator* comm, void* params,
                         void* grads, EngineOptions options)
    : plan_(plan),
      comm_(comm),
      params_(static_cast<uint8_t*>(params)),
      grads_(static_cast<uint8_t*>(grads)),
      options_(std::move(options)),
      rank_(comm->rank()),
      elem_size_(DTypeSize(plan.dtype)) {}

ShardedCame::~ShardedCame() = default;

absl::StatusOr<std::unique_ptr<ShardedCame>> ShardedCame::Create(const ShardPlan& plan,
                                                                 comm::Communicator* comm,
                                                                 void* params, void* grads,
                                                                 EngineOptions options) {
  if (comm == nullptr) return absl::InvalidArgumentError("no communicator");
  if (params == nullptr || grads == nullptr)
    return absl::InvalidArgumentError("parameter and gradient buffers are required");
  if (comm->size() != plan.world_size)
    return absl::InvalidArgumentError(absl::StrCat("the plan is for ", plan.world_size,
                                                   " ranks but the communicator has ",
                                                   comm->size()));
  if (options.groups.empty())
    return absl::InvalidArgumentError("at least one parameter group is required");
  for (size_t g = 0; g < options.groups.size(); ++g)
    if (absl::Status s = ValidateHyper(options.groups[g], g); !s.ok()) return s;
  for (const auto& t : plan.tensors)
    if (t.spec.group >= static_cast<int>(options.groups.size()))
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.spec.name, "' uses group ",
                                                     t.spec.group, " but only ",
                                                     options.groups.size(), " are defined"));
  if (options.max_grad_norm < 0 || !std::isfinite(options.max_grad_norm))
    return absl::InvalidArgumentError("max_grad_norm must be >= 0 (0: no clipping)");
  if (options.num_threads < 1) options.num_threads = 1;
  std::unique_ptr<ShardedCame> e(new ShardedCame(plan, comm, params, grads, std::move(options)));
  if (absl::Status s = e->Init(); !s.ok()) return s;
  return e;
}

absl::Status ShardedCame::Init() {
  const bool fp32 = plan_.dtype == DType::kFloat32;
  const int64_t chunk = plan_.chunk_size;
  uint8_t* my_params = params_ + rank_ * chunk * elem_size_;
  uint8_t* my_grads = grads_ + rank_ * chunk * elem_size_;
  const bool f32_reduce = options_.reduce_in_float32 && !fp32;
  if (f32_reduce) grad_f32_.assign(plan_.padded_size, 0.0f);
  if (!fp32) {
    master_.resize(chunk);
    for (int64_t i = 0; i < chunk; ++i) master_[i] = LoadAsFloat(my_params, plan_.dtype, i);
  }

  const auto& mine = plan_.pieces[rank_];
  pieces_.resize(mine.size());
  piece_of_tensor_.assign(plan_.tensors.size(), -1);
  std::vector<TensorSlice> slices;
  for (size_t i = 0; i < mine.size(); ++i) {
    Piece& p = pieces_[i];
    p.piece = mine[i];
    const auto& t = plan_.tensors[p.piece.tensor];
    p.geom = t.geom;
    piece_of_tensor_[p.piece.tensor] = static_cast<int>(i);
    const int64_t n = p.piece.end - p.piece.begin;
    p.exp_avg.assign(n, 0.0f);
    TensorSlice s;
    s.geom = t.geom;
    s.begin = p.piece.begin;
    s.end = p.piece.end;
    s.group = t.spec.group;
    if (f32_reduce) {
      s.grad = grad_f32_.data() + rank_ * chunk + p.piece.chunk_offset;
      s.grad_dtype = DType::kFloat32;
    } else {
      s.grad = my_grads + p.piece.chunk_offset * elem_size_;
      s.grad_dtype = plan_.dtype;
    }
    if (fp32) {
      s.master = reinterpret_cast<float*>(my_params) + p.piece.chunk_offset;
    } else {
      s.master = master_.data() + p.piece.chunk_offset;
      s.param = my_params + p.piece.chunk_offset * elem_size_;
      s.param_dtype = plan_.dtype;
    }
    s.exp_avg = p.exp_avg.data();
    if (t.geom.factored) {
      p.sq_row.assign(t.geom.rows(), 0.0f);
      p.sq_col.assign(t.geom.cols(), 0.0f);
      p.res_row.assign(t.geom.rows(), 0.0f);
      p.res_col.assign(t.geom.cols(), 0.0f);
      s.exp_avg_sq_row = p.sq_row.data();
      s.exp_avg_sq_col = p.sq_col.data();
      s.exp_avg_res_row = p.res_row.data();
      s.exp_avg_res_col = p.res_col.data();
    } else {
      p.exp_avg_sq.assign(n, 0.0f);
      s.exp_avg_sq = p.exp_avg_sq.data();
    }
    slices.push_back(s);
  }
  cpu_ = std::make_unique<CpuCame>(std::move(slices), options_.num_threads);
  backend_ = std::make_unique<CpuPhases>(*cpu_);

  // Packed layout of split tensors' partial sums (Note [Split tensors]).
  split_offset_.assign(plan_.tensors.size(), -1);
  packed_stats_size_ = 0;
  for (int t : plan_.split_tensors) {
    split_offset_[t] = packed_stats_size_;
    packed_stats_size_ += plan_.tensors[t].geom.stats_size();
  }
  packed_.assign(2 + std::max<int64_t>(packed_stats_size_, plan_.split_tensors.size()), 0.0);
  step_groups_ = options_.groups;
  return absl::OkStatus();
}

// Completes the partial sums of split tensors across ranks (Note [Split tensors]).
// kind 0: factored stats (phase 1, with `extra` in front: the global sum of g^2 and the
// stop vote); kind 1: per-tensor sums of u^2 (phase 3); kind 2: factored residual stats
// (phase 4).
absl::Status ShardedCame::CompleteSums(std::span<double> local, int kind,
                                       std::span<double> extra, absl::Duration timeout) {
  if (plan_.world_size == 1) return absl::OkStatus();
  const bool has_extra = !extra.empty();
  if (plan_.split_tensors.empty() && !has_extra) return absl::OkStatus();
  const int64_t base = static_cast<int64_t>(extra.size());
  const int64_t size = base + (kind == 1 ? static_cast<int64_t>(plan_.split_tensors.size())
                                         : packed_stats_size_);
  std::fill(packed_.begin(), packed_.begin() + size, 0.0);
  std::copy(extra.begin(), extra.end(), packed_.begin());
  auto for_each_split_piece = [&](auto&& fn) {
    for (size_t i = 0; i < pieces_.size(); ++i) {
      const int t = pieces_[i].piece.tensor;
      if (!plan_.tensors[t].split()) continue;
      fn(static_cast<int>(i), t);
    }
  };
  // Position of a split tensor in the kind-1 buffer: its index among split tensors.
  auto split_index = [&](int t) {
    return std::lower_bound(plan_.split_tensors.begin(), plan_.split_tensors.end(), t) -
           plan_.split_tensors.begin();
  };
  for_each_split_piece([&](int i, int t) {
    if (kind == 1) {
      packed_[base + split_index(t)] = local[i];
    } else {
      const int64_t n = plan_.tensors[t].geom.stats_size();
      std::copy_n(&local[backend_->stats_offset(i)], n, &packed_[base + split_offset_[t]]);
    }
  });
  absl::Status s = comm_->AllReduce(packed_.data(), size, comm::ElemType::kFloat64,
                                    comm::ReduceOp::kSum, timeout);
  if (!s.ok()) return s;
  std::copy_n(packed_.begin(), extra.size(), extra.begin());
  for_each_split_piece([&](int i, int t) {
    if (kind == 1) {
      local[i] = packed_[base + split_index(t)];
    } else {
      const int64_t n = plan_.tensors[t].geom.stats_size();
      std::copy_n(&packed_[base + split_offset_[t]], n, &local[backend_->stats_offset(i)]);
    }
  });
  return absl::OkStatus();
}

absl::StatusOr<EngineStepStats> ShardedCame::Step(const StepInputs& inputs) {
  if (broken_)
    return absl::FailedPreconditionError(
        "the engine is unusable after a failed collective; restart from a checkpoint");
  // This step's hyperparameters; invalid inputs still take part in the round (so that every
  // rank fails together) with `error` saying what is wrong.
  std::string error;
  const size_t groups = options_.groups.size();
  auto count_error = [&](const char* what, size_t n) {
    if (n != 0 && n != groups && error.empty())
      error = absl::StrCat("expected ", groups, " ", what, " (one per group), got ", n);
  };
  count_error("hyperparameter sets", inputs.groups.size());
  count_error("learning rates", inputs.lr.size());
  count_error("weight decays", inputs.weight_decay.size());
  for (size_t g = 0; g < groups && error.empty(); ++g) {
    CameHyper h = inputs.groups.empty() ? options_.groups[g] : inputs.groups[g];
    if (!inputs.lr.empty()) h.lr = inputs.lr[g];
    if (!inputs.weight_decay.empty()) h.weight_decay = inputs.weight_decay[g];
    step_groups_[g] = h;
    if (absl::Status s = ValidateHyper(h, g); !s.ok()) error = std::string(s.message());
  }
  const double max_grad_norm = inputs.max_grad_norm.value_or(options_.max_grad_norm);
  if (error.empty() && (!(max_grad_norm >= 0) || !std::isfinite(max_grad_norm)))
    error = "max_grad_norm must be >= 0 (0: no clipping)";
  if (absl::Status s = Round(&inputs, error, {}); !s.ok()) return s;

  using Clock = std::chrono::steady_clock;
  const absl::Duration timeout = options_.collective_timeout;
  const comm::CommStats before = comm_->stats();
  EngineStepStats out;
  const auto t_start = Clock::now();
  auto fail = [&](absl::Status s) {
    broken_ = true;
    return s;
  };

  // 2. Reduce-scatter (average) of the gradients: rank k keeps chunk k, in place.
  auto t0 = Clock::now();
  if (!grad_f32_.empty()) {
    // Note [16-bit reduction]: widen the whole gradient buffer, then reduce in float32.
    const uint16_t* g16 = reinterpret_cast<const uint16_t*>(grads_);
    float* f = grad_f32_.data();
    const int64_t n = plan_.padded_size;
    if (plan_.dtype == DType::kBFloat16) {
      for (int64_t i = 0; i < n; ++i) f[i] = BFloat16ToFloat(g16[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) f[i] = HalfToFloat(g16[i]);
    }
    if (plan_.world_size > 1) {
      float* mine = grad_f32_.data() + rank_ * plan_.chunk_size;
      if (absl::Status s = comm_->ReduceScatter(grad_f32_.data(), mine, plan_.chunk_size,
                                                comm::ElemType::kFloat32, comm::ReduceOp::kAvg,
                                                timeout);
          !s.ok())
        return fail(s);
    }
  } else if (plan_.world_size > 1) {
    uint8_t* my_grads = grads_ + rank_ * plan_.chunk_size * elem_size_;
    if (absl::Status s = comm_->ReduceScatter(grads_, my_grads, plan_.chunk_size,
                                              ElemTypeOf(plan_.dtype), comm::ReduceOp::kAvg,
                                              timeout);
        !s.ok())
      return fail(s);
  }
  out.seconds.reduce_scatter = SecondsSince(t0);

  // 3-7. The phases and the completions of split tensors' sums (kernels/step_sequence.h).
  Completer completer(*this, inputs.stop_vote);
  SequenceResult r;
  if (PhaseStatus ps = RunStepSequence(*backend_, step_groups_, max_grad_norm, &completer, &r);
      !ps.ok())
    return fail(completer.status().ok() ? ToStatus(ps) : completer.status());
  out.seconds.kernels = r.kernel_seconds;
  out.seconds.stats_all_reduce = r.complete_seconds;
  out.stop_voted = completer.stop_voted();
  out.grad_norm = r.decision.grad_norm;
  if (r.decision.skipped) {
    out.skipped = true;
    out.seconds.total = SecondsSince(t_start);
    last_step_ = inputs.step;
    return out;
  }
  out.grad_scale = r.decision.grad_scale;
  out.min_clip_scale = r.min_clip_scale;

  // 8. All-gather of the parameter chunks, in the parameters' dtype.
  t0 = Clock::now();
  if (plan_.world_size > 1) {
    if (absl::Status s = comm_->AllGather(params_ + rank_ * plan_.chunk_size * elem_size_,
                                          params_, plan_.chunk_size, ElemTypeOf(plan_.dtype),
                                          timeout);
        !s.ok())
      return fail(s);
  }
  out.seconds.all_gather = SecondsSince(t0);
  out.seconds.total = SecondsSince(t_start);

  const comm::CommStats after = comm_->stats();
  auto delta = [&](comm::CollectiveKind k) {
    return after.of(k).bytes_sent - before.of(k).bytes_sent;
  };
  out.bytes_reduce_scatter = delta(comm::CollectiveKind::kReduceScatter);
  out.bytes_stats = delta(comm::CollectiveKind::kAllReduce);
  out.bytes_all_gather = delta(comm::CollectiveKind::kAllGather);
  ++steps_taken_;
  last_step_ = inputs.step;
  return out;
}

absl::Status ShardedCame::GatherParameters() {
  if (plan_.world_size == 1) return absl::OkStatus();
  return comm_->AllGather(params_ + rank_ * plan_.chunk_size * elem_size_, params_,
                          plan_.chunk_size, ElemTypeOf(plan_.dtype), options_.collective_timeout);
}

StateBytes ShardedCame::state_bytes() const {
  StateBytes b;
  b.master = static_cast<int64_t>(master_.size() * sizeof(float));
  for (const Piece& p : pieces_) {
    b.momentum += p.exp_avg.size() * sizeof(float);
    b.second_moment += p.exp_avg_sq.size() * sizeof(float);
    b.factored += (p.sq_row.size() + p.sq_col.size() + p.res_row.size() + p.res_col.size()) *
                  sizeof(float);
  }
  return b;
}

TensorStateView ShardedCame::tensor_state(int t) const {
  TensorStateView v;
  const int i = t >= 0 && t < static_cast<int>(piece_of_tensor_.size()) ? piece_of_tensor_[t] : -1;
  if (i < 0) return v;
  const Piece& p = pieces_[i];
  v.begin = p.piece.begin;
  v.end = p.piece.end;
  v.exp_avg = p.exp_avg;
  v.exp_avg_sq = p.exp_avg_sq;
  v.exp_avg_sq_row = p.sq_row;
  v.exp_avg_sq_col = p.sq_col;
  v.exp_avg_res_row = p.res_row;
  v.exp_avg_res_col = p.res_col;
  v.master = {cpu_->slices()[i].master, static_cast<size_t>(p.piece.end - p.piece.begin)};
  return v;
}

absl::Status ShardedCame::SetTensorState(int t, const TensorStateView& v) {
  if (t < 0 || t >= static_cast<int>(piece_of_tensor_.size()))
    return absl::InvalidArgumentError(absl::StrCat("no tensor ", t));
  const int i = piece_of_tensor_[t];
  if (i < 0) return absl::FailedPreconditionError(absl::StrCat("rank ", rank_, " holds no part of tensor ", t));
  Piece& p = pieces_[i];
  auto copy = [&](std::span<const float> from, std::vector<float>& to, const char* what) {
    if (from.size() != to.size())
      return absl::InvalidArgumentError(absl::StrCat(plan_.tensors[t].spec.name, ": ", what,
                                                     " has ", from.size(), " values, expected ",
                                                     to.size()));
    std::copy(from.begin(), from.end(), to.begin());
    return absl::OkStatus();
  };
  if (v.begin != p.piece.begin || v.end != p.piece.end)
    return absl::InvalidArgumentError(absl::StrCat(plan_.tensors[t].spec.name,
                                                   ": state covers the wrong element range"));
  for (auto [from, to, what] :
       {std::tuple{v.exp_avg, &p.exp_avg, "exp_avg"}, std::tuple{v.exp_avg_sq, &p.exp_avg_sq, "exp_avg_sq"},
        std::tuple{v.exp_avg_sq_row, &p.sq_row, "exp_avg_sq_row"},
        std::tuple{v.exp_avg_sq_col, &p.sq_col, "exp_avg_sq_col"},
        std::tuple{v.exp_avg_res_row, &p.res_row, "exp_avg_res_row"},
        std::tuple{v.exp_avg_res_col, &p.res_col, "exp_avg_res_col"}})
    if (absl::Status s = copy(from, *to, what); !s.ok()) return s;
  if (!v.master.empty()) {
    if (v.master.size() != static_cast<size_t>(p.piece.end - p.piece.begin))
      return absl::InvalidArgumentError("master has the wrong size");
    const TensorSlice& s = cpu_->slices()[i];
    std::copy(v.master.begin(), v.master.end(), s.master);
    if (s.param != nullptr)
      for (size_t k = 0; k < v.master.size(); ++k) StoreFromFloat(s.param, s.param_dtype, k, v.master[k]);
  }
  return absl::OkStatus();
}

}  // namespace came
