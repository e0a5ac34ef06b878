// RankCore without gRPC: W = 1, 2, 3 cores as threads (Gloo over an in-memory store) and an
// in-process manifest agreement that mimics the coordinator. The full trainer flow against
// LocalCluster, the call-order rules, every manifest validation error, manifests that differ
// across ranks, Abort during a collective, and the lifetime of the shared buffers.
#include "runtime/rankd/rank_core.h"

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/local_cluster.h"
#include "runtime/rankd/shared_buffer.h"
#include "runtime/service/limits.h"
#include "tests/rankd/rankd_test_util.h"
#include "tests/runtime/test_model.h"
#include "tools/replay/case_io.h"

namespace came::rankd {
namespace {

using ::came::rankd_test::ShmExists;
using ::came::rankd_test::StepLr;
using testing::Grad;
using ::testing::HasSubstr;
using testing::InitialParams;
using testing::TestGroups;
using testing::TestModel;

constexpr int64_t kAlignment = 1;  // splits tensors mid-row over 2 and 3 ranks
constexpr absl::Duration kWait = absl::Seconds(30);

// ---- Done callbacks as futures ------------------------------------------------------------

// Returns a Done callback and the future it fulfils.
template <typename T>
std::pair<RankCore::Done<T>, std::future<T>> Callback() {
  std::promise<T> promise;
  std::future<T> future = promise.get_future();
  RankCore::Done<T> done = [p = std::move(promise)](T value) mutable {
    p.set_value(std::move(value));
  };
  return {std::move(done), std::move(future)};
}

// Waits for a call's answer; DeadlineExceeded (a test failure) when none comes.
template <typename T>
T Wait(std::future<T>& f, absl::Duration timeout = kWait) {
  if (f.wait_for(absl::ToChronoNanoseconds(timeout)) != std::future_status::ready)
    return absl::DeadlineExceededError("test: the call did not answer in time");
  return f.get();
}

template <typename T>
bool Ready(std::future<T>& f) {
  return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

std::future<absl::StatusOr<Layout>> AttachAsync(RankCore& c, Manifest m) {
  auto [done, f] = Callback<absl::StatusOr<Layout>>();
  c.Attach(std::move(m), std::move(done));
  return std::move(f);
}
std::future<absl::StatusOr<StateBytes>> SyncAsync(RankCore& c, const std::string& id) {
  auto [done, f] = Callback<absl::StatusOr<StateBytes>>();
  c.SyncParameters(id, std::move(done));
  return std::move(f);
}
std::future<absl::StatusOr<StepOutcome>> StepAsync(RankCore& c, StepCall call) {
  auto [done, f] = Callback<absl::StatusOr<StepOutcome>>();
  c.Step(std::move(call), std::move(done));
  return std::move(f);
}
std::future<absl::Status> DetachAsync(RankCore& c, const std::string& id) {
  auto [done, f] = Callback<absl::Status>();
  c.Detach(id, std::move(done));
  return std::move(f);
}

absl::StatusOr<Layout> AttachSync(RankCore& c, Manifest m) {
  auto f = AttachAsync(c, std::move(m));
  return Wait(f);
}
absl::StatusOr<StateBytes> SyncSync(RankCore& c, const std::string& id) {
  auto f = SyncAsync(c, id);
  return Wait(f);
}
absl::StatusOr<StepOutcome> StepSync(RankCore& c, StepCall call) {
  auto f = StepAsync(c, std::move(call));
  return Wait(f);
}
absl::Status DetachSync(RankCore& c, const std::string& id) {
  auto f = DetachAsync(c, id);
  return Wait(f);
}

// ---- An in-process manifest agreement (the coordinator's SubmitManifest) -----------------

// Rank r's k-th submission belongs to round k (a submission that timed out is repeated in the
// same round, as the coordinator keeps a rank's digest); a round completes when every rank
// submitted to it: OK when every digest equals rank 0's, FailedPrecondition naming the first
// rank whose digest differs otherwise (as Coordinator::CompleteManifestRoundLocked words it).
class FakeAgreement {
 public:
  explicit FakeAgreement(int world) : world_(world), next_round_(world, 0) {}

  RankCore::Agreement For(int rank) {
    return [this, rank](const std::string& digest, int64_t count, absl::Duration timeout) {
      return Submit(rank, digest, count, timeout);
    };
  }

  int submissions() {
    absl::MutexLock lock(&mu_);
    return submissions_;
  }

 private:
  absl::Status Submit(int rank, const std::string& digest, int64_t count, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    ++submissions_;
    const int round = next_round_[rank];
    auto& digests = rounds_[round];
    digests.resize(world_);
    digests[rank] = absl::StrCat(digest, "/", count);
    auto complete = [&digests] {
      for (const auto& d : digests)
        if (!d.has_value()) return false;
      return true;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&complete), timeout)) {
      digests[rank].reset();  // the next submission of this rank repeats this round
      return absl::DeadlineExceededError(absl::StrCat(
          "manifest agreement: not every rank submitted within ", absl::FormatDuration(timeout)));
    }
    ++next_round_[rank];
    for (int r = 1; r < world_; ++r)
      if (*digests[r] != *digests[0])
        return absl::FailedPreconditionError(absl::StrCat("the tensor manifest of rank ", r, " (",
                                                          *digests[r], ") differs from rank 0's (",
                                                          *digests[0], ")"));
    return absl::OkStatus();
  }

  const int world_;
  absl::Mutex mu_;
  std::vector<int> next_round_ ABSL_GUARDED_BY(mu_);
  std::map<int, std::vector<std::optional<std::string>>> rounds_ ABSL_GUARDED_BY(mu_);
  int submissions_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---- W cores as threads ---------------------------------------------------------------------

std::string UniquePrefix() {
  static std::atomic<int> counter{0};
  return absl::StrCat("/came-rct-", getpid(), "-", counter++);
}

struct Cores {
  std::unique_ptr<FakeAgreement> agreement;
  std::vector<std::unique_ptr<RankCore>> cores;
  RankCore& operator[](int r) { return *cores[r]; }
  int size() const { return static_cast<int>(cores.size()); }
};

std::unique_ptr<Cores> MakeCores(int world, absl::Duration collective_timeout = absl::Seconds(60),
                                 absl::Duration agreement_timeout = absl::Seconds(20)) {
  auto store = comm::InMemoryStore::Create();
  std::vector<absl::StatusOr<std::unique_ptr<comm::Communicator>>> comms(world);
  {
    // Each Create waits for its peers: connect all ranks at once.
    std::vector<std::thread> threads;
    comm::GlooOptions gloo;
    gloo.connect_timeout = absl::Seconds(30);
    for (int r = 0; r < world; ++r)
      threads.emplace_back(
          [&, r] { comms[r] = comm::GlooCommunicator::Create(*store, r, world, gloo); });
    for (auto& t : threads) t.join();
  }
  auto out = std::make_unique<Cores>();
  out->agreement = std::make_unique<FakeAgreement>(world);
  const std::string prefix = UniquePrefix();
  for (int r = 0; r < world; ++r) {
    EXPECT_TRUE(comms[r].ok()) << comms[r].status();
    if (!comms[r].ok()) return nullptr;
    RankCoreOptions o;
    o.rank = r;
    o.world_size = world;
    o.num_threads = 1;
    o.alignment = kAlignment;
    o.shm_prefix = absl::StrCat(prefix, "-r", r);
    o.collective_timeout = collective_timeout;
    o.agreement_timeout = agreement_timeout;
    auto core = RankCore::Create(o, *std::move(comms[r]), out->agreement->For(r));
    EXPECT_TRUE(core.ok()) << core.status();
    if (!core.ok()) return nullptr;
    out->cores.push_back(*std::move(core));
  }
  return out;
}

Manifest TestManifest() { return Manifest{TestModel(), TestGroups()}; }

StepCall MakeStep(const std::string& id, int64_t step) {
  StepCall c;
  c.attachment_id = id;
  c.step = step;
  c.lr = StepLr(step);
  return c;
}

// A trainer's view of one rank: its layout and the two mapped buffers.
struct Trainer {
  Layout layout;
  std::unique_ptr<SharedBuffer> params, grads;

  float* p() const { return static_cast<float*>(params->data()); }
  float* g() const { return static_cast<float*>(grads->data()); }
  std::vector<double> Param(int t) const {
    const auto& tensor = layout.plan.tensors[t];
    return std::vector<double>(p() + tensor.offset, p() + tensor.offset + tensor.geom.numel);
  }
  // Writes tensor t's values `value(i)` into the parameter buffer.
  template <typename Fn>
  void WriteParams(Fn&& value) const {
    for (size_t t = 0; t < layout.plan.tensors.size(); ++t) {
      const auto& tensor = layout.plan.tensors[t];
      for (int64_t i = 0; i < tensor.geom.numel; ++i)
        p()[tensor.offset + i] = static_cast<float>(value(static_cast<int>(t), i));
    }
  }
  void WriteGrads(int rank, int step) const {
    for (size_t t = 0; t < layout.plan.tensors.size(); ++t) {
      const auto& tensor = layout.plan.tensors[t];
      for (int64_t i = 0; i < tensor.geom.numel; ++i)
        g()[tensor.offset + i] = static_cast<float>(Grad(rank, step, static_cast<int>(t), i));
    }
  }
};

std::optional<Trainer> Open(Layout layout) {
  Trainer tr;
  auto params = SharedBuffer::Open(layout.params_name, layout.buffer_bytes);
  EXPECT_TRUE(params.ok()) << params.status();
  auto grads = SharedBuffer::Open(layout.grads_name, layout.buffer_bytes);
  EXPECT_TRUE(grads.ok()) << grads.status();
  if (!params.ok() || !grads.ok()) return std::nullopt;
  tr.layout = std::move(layout);
  tr.params = *std::move(params);
  tr.grads = *std::move(grads);
  return tr;
}

// Attaches every rank with the same manifest (concurrently: each waits for the agreement).
std::vector<Layout> AttachAll(Cores& c, const Manifest& m) {
  std::vector<std::future<absl::StatusOr<Layout>>> fs;
  for (int r = 0; r < c.size(); ++r) fs.push_back(AttachAsync(c[r], m));
  std::vector<Layout> out;
  for (int r = 0; r < c.size(); ++r) {
    auto l = Wait(fs[r]);
    EXPECT_TRUE(l.ok()) << "rank " << r << ": " << l.status();
    if (!l.ok()) return {};
    out.push_back(*std::move(l));
  }
  return out;
}

std::vector<absl::StatusOr<StateBytes>> SyncAll(Cores& c, const std::vector<Trainer>& tr) {
  std::vector<std::future<absl::StatusOr<StateBytes>>> fs;
  for (int r = 0; r < c.size(); ++r) fs.push_back(SyncAsync(c[r], tr[r].layout.attachment_id));
  std::vector<absl::StatusOr<StateBytes>> out;
  for (auto& f : fs) out.push_back(Wait(f));
  return out;
}

std::vector<absl::StatusOr<StepOutcome>> StepAll(Cores& c, const std::vector<Trainer>& tr,
                                                 int step) {
  std::vector<std::future<absl::StatusOr<StepOutcome>>> fs;
  for (int r = 0; r < c.size(); ++r) {
    tr[r].WriteGrads(r, step);
    fs.push_back(StepAsync(c[r], MakeStep(tr[r].layout.attachment_id, step)));
  }
  std::vector<absl::StatusOr<StepOutcome>> out;
  for (auto& f : fs) out.push_back(Wait(f));
  return out;
}

// Attach + open the buffers + rank 0's initial values on every rank + SyncParameters.
// Detaches every rank at once (a detach is a round, Note [Step rounds]).
std::vector<absl::Status> DetachAll(Cores& c, const std::vector<Trainer>& tr) {
  std::vector<std::future<absl::Status>> f;
  for (int r = 0; r < c.size(); ++r) f.push_back(DetachAsync(c[r], tr[r].layout.attachment_id));
  std::vector<absl::Status> out;
  for (auto& x : f) out.push_back(Wait(x));
  return out;
}

std::vector<Trainer> StartAll(Cores& c) {
  std::vector<Trainer> tr;
  for (Layout& l : AttachAll(c, TestManifest())) {
    auto t = Open(std::move(l));
    if (!t.has_value()) return {};
    tr.push_back(*std::move(t));
  }
  if (static_cast<int>(tr.size()) != c.size()) return {};
  const auto initial = InitialParams(TestModel());
  for (auto& t : tr) t.WriteParams([&](int k, int64_t i) { return initial[k][i]; });
  for (auto& s : SyncAll(c, tr)) {
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return {};
  }
  return tr;
}

// The rank's LocalCluster twin: same tensors, world size, alignment, groups and initial values.
std::unique_ptr<LocalCluster> Twin(int world) {
  EngineOptions eo;
  eo.groups = TestGroups();
  eo.num_threads = 1;
  eo.collective_timeout = absl::Seconds(60);
  auto c = LocalCluster::Create(TestModel(), world, kAlignment, InitialParams(TestModel()), eo);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

absl::Status TwinStep(LocalCluster& twin, int step) {
  StepInputs in;
  in.step = step;
  in.lr = StepLr(step);
  return twin
      .Step(
          [step](int rank, int t, std::span<float> g) {
            for (size_t i = 0; i < g.size(); ++i)
              g[i] = static_cast<float>(Grad(rank, step, t, static_cast<int64_t>(i)));
          },
          in)
      .status();
}

void ExpectStatus(const absl::Status& s, absl::StatusCode code, const std::string& substr) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(substr)) << s;
}

// ---- The full flow ---------------------------------------------------------------------

class RankCoreFlowTest : public ::testing::TestWithParam<int> {};

TEST_P(RankCoreFlowTest, SyncThenTenStepsEqualLocalClusterOnEveryRank) {
  const int world = GetParam();
  auto cores = MakeCores(world);
  ASSERT_NE(cores, nullptr);
  const std::vector<Layout> layouts = AttachAll(*cores, TestManifest());
  ASSERT_EQ(static_cast<int>(layouts.size()), world);
  for (int r = 0; r < world; ++r) {
    const Layout& l = layouts[r];
    EXPECT_EQ(l.rank, r);
    EXPECT_EQ(l.world_size, world);
    EXPECT_EQ(l.digest, layouts[0].digest);
    EXPECT_EQ(l.digest, ManifestDigestOf(TestManifest()));
    EXPECT_EQ(l.plan.padded_size, layouts[0].plan.padded_size);
    EXPECT_EQ(l.buffer_bytes, static_cast<size_t>(l.plan.padded_size) * sizeof(float));
    EXPECT_NE(l.params_name, l.grads_name);
    EXPECT_FALSE(l.attachment_id.empty());
    for (int q = 0; q < r; ++q) EXPECT_NE(l.params_name, layouts[q].params_name);
  }
  if (world >= 2) {
    EXPECT_FALSE(layouts[0].plan.split_tensors.empty());
  }

  std::vector<Trainer> tr;
  for (const Layout& l : layouts) {
    auto t = Open(l);
    ASSERT_TRUE(t.has_value());
    tr.push_back(*std::move(t));
  }
  // Every rank writes different initial values; rank 0's must win everywhere.
  const auto initial = InitialParams(TestModel());
  for (int r = 0; r < world; ++r)
    tr[r].WriteParams([&](int t, int64_t i) { return initial[t][i] + 10.0 * r; });
  auto synced = SyncAll(*cores, tr);
  auto twin = Twin(world);
  ASSERT_NE(twin, nullptr);
  for (int r = 0; r < world; ++r) {
    ASSERT_TRUE(synced[r].ok()) << "rank " << r << ": " << synced[r].status();
    const StateBytes want = twin->engine(r).state_bytes();
    EXPECT_EQ(synced[r]->momentum, want.momentum) << "rank " << r;
    EXPECT_EQ(synced[r]->second_moment, want.second_moment) << "rank " << r;
    EXPECT_EQ(synced[r]->factored, want.factored) << "rank " << r;
    EXPECT_EQ(synced[r]->master, 0) << "fp32 parameters have no master copy";
    for (size_t t = 0; t < initial.size(); ++t) {
      std::vector<double> want_values(initial[t].size());
      for (size_t i = 0; i < initial[t].size(); ++i)
        want_values[i] = static_cast<float>(initial[t][i]);
      EXPECT_EQ(tr[r].Param(static_cast<int>(t)), want_values)
          << "rank " << r << " tensor " << t << ": rank 0's initial parameters must win";
    }
  }

  for (int step = 1; step <= 10; ++step) {
    auto out = StepAll(*cores, tr, step);
    ASSERT_TRUE(TwinStep(*twin, step).ok());
    for (int r = 0; r < world; ++r) {
      ASSERT_TRUE(out[r].ok()) << "step " << step << " rank " << r << ": " << out[r].status();
      EXPECT_FALSE(out[r]->stats.skipped);
      EXPECT_GT(out[r]->stats.grad_norm, 0.0);
      EXPECT_EQ(out[r]->stats.grad_norm, out[0]->stats.grad_norm) << "rank " << r;
      EXPECT_EQ(out[r]->state_bytes.total(), twin->engine(r).state_bytes().total());
    }
  }

  for (size_t t = 0; t < twin->plan().tensors.size(); ++t) {
    const std::string& name = twin->plan().tensors[t].spec.name;
    EXPECT_LE(ParamError(tr[0].Param(static_cast<int>(t)), twin->Param(static_cast<int>(t))),
              kFloat32ParamTolerance)
        << name;
  }
  for (int r = 1; r < world; ++r)
    EXPECT_EQ(std::memcmp(tr[r].params->data(), tr[0].params->data(), tr[0].layout.buffer_bytes), 0)
        << "rank " << r << "'s parameter buffer differs from rank 0's";

  for (const absl::Status& s : DetachAll(*cores, tr)) EXPECT_TRUE(s.ok()) << s;
  for (int r = 0; r < world; ++r) {
    EXPECT_FALSE(ShmExists(tr[r].layout.params_name));
    EXPECT_FALSE(ShmExists(tr[r].layout.grads_name));
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, RankCoreFlowTest, ::testing::Values(1, 2, 3));

// ---- Call order ------------------------------------------------------------------------------

TEST(RankCoreTest, StepBeforeAttachIsFailedPrecondition) {
  auto cores = MakeCores(1);
  ASSERT_NE(cores, nullptr);
  ExpectStatus(StepSync((*cores)[0], MakeStep("nobody", 1)).status(),
               absl::StatusCode::kFailedPrecondition, "call Attach first");
  ExpectStatus(SyncSync((*cores)[0], "nobody").status(), absl::StatusCode::kFailedPrecondition,
               "call Attach first");
  ExpectStatus(DetachSync((*cores)[0], "nobody"), absl::StatusCode::kFailedPrecondition,
               "call Attach first");
}

TEST(RankCoreTest, StepBeforeSyncParametersIsFailedPreconditionAndChangesNothing) {
  auto cores = MakeCores(1);
  ASSERT_NE(cores, nullptr);
  auto layouts = AttachAll(*cores, TestManifest());
  ASSERT_EQ(layouts.size(), 1u);
  auto tr = Open(layouts[0]);
  ASSERT_TRUE(tr.has_value());
  const auto initial = InitialParams(TestModel());
  tr->WriteParams([&](int t, int64_t i) { return initial[t][i]; });
  tr->WriteGrads(0, 1);
  ExpectStatus(StepSync((*cores)[0], MakeStep(tr->layout.attachment_id, 1)).status(),
               absl::StatusCode::kFailedPrecondition, "Step before SyncParameters");
  std::vector<Trainer> trs;
  trs.push_back(*std::move(tr));
  ASSERT_TRUE(SyncAll(*cores, trs)[0].ok());
  // Step 1 was not consumed by the refused call.
  auto twin = Twin(1);
  ASSERT_NE(twin, nullptr);
  auto out = StepAll(*cores, trs, 1);
  ASSERT_TRUE(out[0].ok()) << out[0].status();
  ASSERT_TRUE(TwinStep(*twin, 1).ok());
  for (int t = 0; t < static_cast<int>(twin->plan().tensors.size()); ++t)
    EXPECT_LE(ParamError(trs[0].Param(t), twin->Param(t)), kFloat32ParamTolerance);
  ExpectStatus(SyncSync((*cores)[0], trs[0].layout.attachment_id).status(),
               absl::StatusCode::kFailedPrecondition, "already synchronized");
}

TEST(RankCoreTest, RepeatedOrLowerStepIsFailedPreconditionAndChangesNothing) {
  for (int world : {1, 2}) {
    SCOPED_TRACE(absl::StrCat("world ", world));
    auto cores = MakeCores(world);
    ASSERT_NE(cores, nullptr);
    auto tr = StartAll(*cores);
    ASSERT_EQ(static_cast<int>(tr.size()), world);
    auto twin = Twin(world);
    ASSERT_NE(twin, nullptr);
    for (int step : {1, 2}) {
      for (auto& o : StepAll(*cores, tr, step)) ASSERT_TRUE(o.ok()) << o.status();
      ASSERT_TRUE(TwinStep(*twin, step).ok());
    }
    std::vector<std::vector<uint8_t>> before;
    for (auto& t : tr) {
      const uint8_t* p = static_cast<const uint8_t*>(t.params->data());
      before.emplace_back(p, p + t.layout.buffer_bytes);
    }
    for (int bad : {2, 1}) {
      for (auto& o : StepAll(*cores, tr, bad))
        ExpectStatus(o.status(), absl::StatusCode::kFailedPrecondition,
                     absl::StrCat("step ", bad, " is out of order: step 2 was already taken"));
    }
    for (int bad : {0, -5}) {
      for (auto& o : StepAll(*cores, tr, bad))
        ExpectStatus(o.status(), absl::StatusCode::kInvalidArgument, absl::StrCat("got ", bad));
    }
    for (int r = 0; r < world; ++r)
      EXPECT_EQ(std::memcmp(before[r].data(), tr[r].params->data(), before[r].size()), 0)
          << "a refused step changed rank " << r << "'s parameters";
    // The next correct step works, and the optimizer state was not touched by the refused
    // ones: step 3 lands exactly where the twin's does.
    for (auto& o : StepAll(*cores, tr, 3)) ASSERT_TRUE(o.ok()) << o.status();
    ASSERT_TRUE(TwinStep(*twin, 3).ok());
    for (int t = 0; t < static_cast<int>(twin->plan().tensors.size()); ++t)
      EXPECT_LE(ParamError(tr[0].Param(t), twin->Param(t)), kFloat32ParamTolerance);
  }
}

TEST(RankCoreTest, WrongAttachmentIdIsFailedPrecondition) {
  auto cores = MakeCores(1);
  ASSERT_NE(cores, nullptr);
  auto tr = StartAll(*cores);
  ASSERT_EQ(tr.size(), 1u);
  const std::string wrong = tr[0].layout.attachment_id + "x";
  ExpectStatus(StepSync((*cores)[0], MakeStep(wrong, 1)).status(),
               absl::StatusCode::kFailedPrecondition, "unknown attachment id");
  ExpectStatus(SyncSync((*cores)[0], wrong).status(), absl::StatusCode::kFailedPrecondition,
               "unknown attachment id");
  ExpectStatus(DetachSync((*cores)[0], wrong), absl::StatusCode::kFailedPrecondition,
               "unknown attachment id");
  ExpectStatus(DetachSync((*cores)[0], ""), absl::StatusCode::kFailedPrecondition,
               "unknown attachment id");
  // The real attachment is untouched.
  auto out = StepAll(*cores, tr, 1);
  EXPECT_TRUE(out[0].ok()) << out[0].status();
  EXPECT_TRUE(ShmExists(tr[0].layout.params_name));
}

TEST(RankCoreTest, SecondAttachWhileAttachedIsFailedPrecondition) {
  auto cores = MakeCores(1);
  ASSERT_NE(cores, nullptr);
  auto tr = StartAll(*cores);
  ASSERT_EQ(tr.size(), 1u);
  const int submitted = cores->agreement->submissions();
  ExpectStatus(AttachSync((*cores)[0], TestManifest()).status(),
               absl::StatusCode::kFailedPrecondition, "already attached");
  EXPECT_EQ(cores->agreement->submissions(), submitted);
  auto out = StepAll(*cores, tr, 1);
  EXPECT_TRUE(out[0].ok()) << out[0].status();
}

// A manifest within the limits but far beyond /dev/shm (2^39 float32 = 2 TiB per buffer) is
// refused at once with ResourceExhausted, instead of a segment that would SIGBUS the trainer
// on first touch; the rank stays usable.
TEST(RankCoreTest, BuffersLargerThanDevShmAreResourceExhausted) {
  auto cores = MakeCores(1);
  ASSERT_NE(cores, nullptr);
  Manifest huge = TestManifest();
  huge.tensors = {{"huge", {int64_t{1} << 20, int64_t{1} << 19}, DType::kFloat32, 0}};
  ExpectStatus(AttachSync((*cores)[0], huge).status(), absl::StatusCode::kResourceExhausted,
               "/dev/shm");
  EXPECT_TRUE(AttachSync((*cores)[0], TestManifest()).ok());
}

TEST(RankCoreTest, DetachThenAttachAgain) {
  auto cores = MakeCores(2);
  ASSERT_NE(cores, nullptr);
  auto first = StartAll(*cores);
  ASSERT_EQ(first.size(), 2u);
  for (auto& o : StepAll(*cores, first, 1)) ASSERT_TRUE(o.ok()) << o.status();
  for (const absl::Status& s : DetachAll(*cores, first)) ASSERT_TRUE(s.ok()) << s;
  for (int r = 0; r < 2; ++r) {
    EXPECT_FALSE(ShmExists(first[r].layout.params_name));
    EXPECT_FALSE(ShmExists(first[r].layout.grads_name));
    ExpectStatus(StepSync((*cores)[r], MakeStep(first[r].layout.attachment_id, 2)).status(),
                 absl::StatusCode::kFailedPrecondition, "call Attach first");
  }
  // A fresh attachment starts from step 1 with fresh state: it equals a fresh twin.
  auto second = StartAll(*cores);
  ASSERT_EQ(second.size(), 2u);
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(second[r].layout.attachment_id, first[r].layout.attachment_id);
    EXPECT_NE(second[r].layout.params_name, first[r].layout.params_name);
  }
  auto twin = Twin(2);
  ASSERT_NE(twin, nullptr);
  for (int step = 1; step <= 2; ++step) {
    for (auto& o : StepAll(*cores, second, step)) ASSERT_TRUE(o.ok()) << o.status();
    ASSERT_TRUE(TwinStep(*twin, step).ok());
  }
  for (int t = 0; t < static_cast<int>(twin->plan().tensors.size()); ++t)
    EXPECT_LE(ParamError(second[1].Param(t), twin->Param(t)), kFloat32ParamTolerance);
}

// ---- Manifest validation ---------------------------------------------------------------------

struct BadManifest {
  std::string what;
  Manifest manifest;
  std::string message;  // a substring naming the problem and the tensor or group
};

std::vector<BadManifest> BadManifests() {
  using service::kMaxDims;
  using service::kMaxNameLength;
  const Manifest good = TestManifest();  // 9 tensors, 2 groups
  std::vector<BadManifest> v;
  auto with = [&](std::string what, std::string message, auto edit) {
    Manifest m = good;
    edit(m);
    v.push_back({std::move(what), std::move(m), std::move(message)});
  };
  with("empty manifest", "no tensors", [](Manifest& m) { m.tensors.clear(); });
  with("no groups", "at least one parameter group", [](Manifest& m) { m.groups.clear(); });
  with("too many tensors", "the limit is 100000", [](Manifest& m) {
    m.tensors.clear();
    for (int i = 0; i <= service::kMaxTensors; ++i)
      m.tensors.push_back({absl::StrCat("t", i), {1}, DType::kFloat32, 0});
  });
  with("too many groups", "too many parameter groups",
       [](Manifest& m) { m.groups.assign(service::kMaxParamGroups + 1, m.groups[0]); });
  with("empty name", "tensor 2 has an empty name", [](Manifest& m) { m.tensors[2].name = ""; });
  with("duplicate name", "tensor 3 'embed': duplicate name",
       [](Manifest& m) { m.tensors[3].name = "embed"; });
  with("name over kMaxNameLength", "name longer than 512 bytes",
       [](Manifest& m) { m.tensors[1].name = std::string(kMaxNameLength + 1, 'n'); });
  with("more than kMaxDims dims", "tensor 2 'conv': 9 dims; the limit is 8",
       [](Manifest& m) { m.tensors[2].shape.assign(kMaxDims + 1, 1); });
  with("dim 0", "tensor 5 'wide': dims must be >= 1, got 0", [](Manifest& m) {
    m.tensors[5].shape = {5, 0};
  });
  with("negative dim", "tensor 0 'embed': dims must be >= 1, got -16", [](Manifest& m) {
    m.tensors[0].shape = {150, -16};
  });
  with("element count overflows int64", "tensor 0 'embed': element count overflows",
       [](Manifest& m) {
         m.tensors[0].shape = {int64_t{1} << 40, int64_t{1} << 40};
       });
  with("element count overflows int64 (one huge dim)", "tensor 0 'embed': element count overflows",
       [](Manifest& m) {
         m.tensors[0].shape = {std::numeric_limits<int64_t>::max(), 2};
       });
  with("element count over 2^40", "tensor 5 'wide': element count overflows the limit of 2^40",
       [](Manifest& m) {
         m.tensors[5].shape = {int64_t{1} << 21, int64_t{1} << 20};
       });
  with("total elements over 2^40", "more than 2^40 elements in all", [](Manifest& m) {
    m.tensors[0].shape = {(int64_t{1} << 39) + 1};
    m.tensors[1].shape = {(int64_t{1} << 39) + 1};
  });
  with("mixed dtypes", "tensor 4 'one_by_one': dtype bfloat16 differs from float32",
       [](Manifest& m) { m.tensors[4].dtype = DType::kBFloat16; });
  with("group out of range", "tensor 6 'ln': group 2 does not exist (2 groups)",
       [](Manifest& m) { m.tensors[6].group = 2; });
  with("negative group", "tensor 7 'block': group -1 does not exist",
       [](Manifest& m) { m.tensors[7].group = -1; });
  with("beta1 1.0", "group 0: betas must be in [0, 1)",
       [](Manifest& m) { m.groups[0].beta1 = 1.0; });
  with("beta3 1.0", "group 1: betas must be in [0, 1)",
       [](Manifest& m) { m.groups[1].beta3 = 1.0; });
  with("negative beta2", "group 1: betas must be in [0, 1)",
       [](Manifest& m) { m.groups[1].beta2 = -0.1; });
  with("negative lr", "group 1: lr must be >= 0", [](Manifest& m) { m.groups[1].lr = -0.01; });
  with("clip 0", "group 0: clip_threshold must be > 0",
       [](Manifest& m) { m.groups[0].clip_threshold = 0.0; });
  with("negative eps", "group 1: eps must be > 0", [](Manifest& m) { m.groups[1].eps2 = -1e-16; });
  with("negative weight decay", "group 0: weight_decay must be >= 0",
       [](Manifest& m) { m.groups[0].weight_decay = -0.01; });
  with("NaN lr", "group 1: hyperparameters must be finite",
       [](Manifest& m) { m.groups[1].lr = std::nan(""); });
  with("NaN beta2", "group 0: hyperparameters must be finite",
       [](Manifest& m) { m.groups[0].beta2 = std::nan(""); });
  with("infinite weight decay", "group 0: hyperparameters must be finite",
       [](Manifest& m) { m.groups[0].weight_decay = std::numeric_limits<double>::infinity(); });
  return v;
}

TEST(RankCoreTest, EveryManifestErrorIsInvalidArgumentNamingItAndNothingIsQueued) {
  auto cores = MakeCores(1);
  ASSERT_NE(cores, nullptr);
  for (const BadManifest& bad : BadManifests()) {
    SCOPED_TRACE(bad.what);
    EXPECT_THAT(std::string(ValidateManifest(bad.manifest).message()), HasSubstr(bad.message));
    std::thread::id answered_on;
    std::promise<absl::StatusOr<Layout>> promise;
    auto f = promise.get_future();
    (*cores)[0].Attach(bad.manifest, [&](absl::StatusOr<Layout> l) {
      answered_on = std::this_thread::get_id();
      promise.set_value(std::move(l));
    });
    // Refused on the caller's thread before anything is queued.
    ASSERT_TRUE(Ready(f)) << "a bad manifest must be answered at once, not queued";
    EXPECT_EQ(answered_on, std::this_thread::get_id());
    ExpectStatus(f.get().status(), absl::StatusCode::kInvalidArgument, bad.message);
  }
  EXPECT_EQ(cores->agreement->submissions(), 0) << "a bad manifest reached the agreement";
  // Nothing changed: a good manifest attaches and runs.
  auto tr = StartAll(*cores);
  ASSERT_EQ(tr.size(), 1u);
  auto out = StepAll(*cores, tr, 1);
  EXPECT_TRUE(out[0].ok()) << out[0].status();
}

TEST(RankCoreTest, ScalarTensorsAndOneGroupAreValid) {
  Manifest m;
  m.tensors = {{"scale", {}, DType::kFloat32, 0}, {"w", {3, 4}, DType::kFloat32, 0}};
  m.groups = {CameHyper{}};
  EXPECT_TRUE(ValidateManifest(m).ok()) << ValidateManifest(m);
  m.groups[0].beta1 = 0.0;  // no momentum is a valid, explicit value
  m.groups[0].lr = 0.0;
  EXPECT_TRUE(ValidateManifest(m).ok()) << ValidateManifest(m);
}

// ---- Manifests that differ across ranks ------------------------------------------------------

void ExpectDisagreement(const std::string& what, const std::function<void(Manifest&)>& edit) {
  SCOPED_TRACE(what);
  auto cores = MakeCores(2);
  ASSERT_NE(cores, nullptr);
  Manifest m0 = TestManifest(), m1 = TestManifest();
  edit(m1);
  auto f0 = AttachAsync((*cores)[0], m0);
  auto f1 = AttachAsync((*cores)[1], m1);
  const auto l0 = Wait(f0), l1 = Wait(f1);
  if (l0.ok() || l1.ok()) {
    ADD_FAILURE() << "ranks whose manifests differ (" << what << ") agreed: digest "
                  << ManifestDigestOf(m0) << " on both";
    return;
  }
  ExpectStatus(l0.status(), absl::StatusCode::kFailedPrecondition, "rank 1");
  ExpectStatus(l1.status(), absl::StatusCode::kFailedPrecondition, "rank 1");
  // Neither rank is attached; an agreed manifest then attaches both.
  for (int r = 0; r < 2; ++r)
    ExpectStatus(StepSync((*cores)[r], MakeStep("x", 1)).status(),
                 absl::StatusCode::kFailedPrecondition, "call Attach first");
  EXPECT_EQ(AttachAll(*cores, TestManifest()).size(), 2u);
}

TEST(RankCoreTest, ManifestsThatDifferAcrossRanksAreFailedPreconditionNamingTheRank) {
  ExpectDisagreement("shape", [](Manifest& m) { m.tensors[2].shape = {3, 7, 5}; });
  ExpectDisagreement("name", [](Manifest& m) { m.tensors[8].name = "column2"; });
  ExpectDisagreement("group", [](Manifest& m) { m.tensors[6].group = 0; });
  ExpectDisagreement("dtype", [](Manifest& m) {
    for (auto& t : m.tensors) t.dtype = DType::kBFloat16;
  });
  ExpectDisagreement("order", [](Manifest& m) { std::swap(m.tensors[0], m.tensors[1]); });
  ExpectDisagreement("beta2", [](Manifest& m) { m.groups[1].beta2 = 0.99; });
  ExpectDisagreement("clip", [](Manifest& m) { m.groups[0].clip_threshold = 2.0; });
  ExpectDisagreement("one more tensor", [](Manifest& m) {
    m.tensors.push_back({"extra", {2}, DType::kFloat32, 0});
  });
}

TEST(RankCoreTest, ManifestsDifferingOnlyInWeightDecayAreDetected) {
  ExpectDisagreement("weight_decay", [](Manifest& m) { m.groups[0].weight_decay = 0.1; });
}

TEST(RankCoreTest, HyperparametersDifferingAfterSixDigitsAreDetected) {
  ExpectDisagreement("beta2 in the 7th digit", [](Manifest& m) { m.groups[0].beta2 = 0.9990001; });
}

// ---- Abort -----------------------------------------------------------------------------------

TEST(RankCoreTest, AbortWhileAStepWaitsInACollectiveAnswersPromptlyWithTheReason) {
  auto cores = MakeCores(2, /*collective_timeout=*/absl::Seconds(60));
  ASSERT_NE(cores, nullptr);
  auto tr = StartAll(*cores);
  ASSERT_EQ(tr.size(), 2u);
  tr[0].WriteGrads(0, 1);
  // Rank 1 never calls Step: rank 0's step waits in its first collective, step 2 is queued.
  auto waiting = StepAsync((*cores)[0], MakeStep(tr[0].layout.attachment_id, 1));
  auto queued = StepAsync((*cores)[0], MakeStep(tr[0].layout.attachment_id, 2));
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_FALSE(Ready(waiting)) << Wait(waiting).status();
  const absl::Status reason = absl::UnavailableError("job failed: rank 1 stopped heartbeating");
  const absl::Time start = absl::Now();
  (*cores)[0].Abort(reason);
  auto in_flight = Wait(waiting, absl::Seconds(10));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "the waiting call did not return promptly";
  ASSERT_FALSE(in_flight.ok());
  EXPECT_NE(in_flight.status().code(), absl::StatusCode::kDeadlineExceeded) << in_flight.status();
  auto queued_status = Wait(queued, absl::Seconds(10)).status();
  EXPECT_EQ(queued_status, reason);
  EXPECT_EQ((*cores)[0].aborted(), reason);
  // A second Abort does not replace the first reason.
  (*cores)[0].Abort(absl::InternalError("later"));
  EXPECT_EQ((*cores)[0].aborted(), reason);
  // Later calls fail with it.
  EXPECT_EQ(StepSync((*cores)[0], MakeStep(tr[0].layout.attachment_id, 3)).status(), reason);
  EXPECT_EQ(SyncSync((*cores)[0], tr[0].layout.attachment_id).status(), reason);
  EXPECT_EQ(AttachSync((*cores)[0], TestManifest()).status(), reason);
  // Detach still releases the buffers.
  EXPECT_TRUE(DetachSync((*cores)[0], tr[0].layout.attachment_id).ok());
  EXPECT_FALSE(ShmExists(tr[0].layout.params_name));
}

// Starts a call on rank 0 of two that waits for rank 1 (which never makes it), aborts rank 0
// with a reason and expects the waiting call to answer at once with that reason.
// `setup` prepares both ranks (0: nothing, 1: attached, 2: attached and synchronized);
// `start` makes the waiting call.
template <typename T>
void ExpectWaitingCallAnswersWithTheAbortReason(
    int setup, absl::Duration agreement_timeout,
    const std::function<std::future<T>(RankCore&, const std::vector<Trainer>&)>& start) {
  auto cores = MakeCores(2, /*collective_timeout=*/absl::Seconds(60), agreement_timeout);
  ASSERT_NE(cores, nullptr);
  std::vector<Trainer> tr;
  if (setup == 1) {
    for (Layout& l : AttachAll(*cores, TestManifest()))
      tr.push_back(Trainer{std::move(l), nullptr, nullptr});
  } else if (setup == 2) {
    tr = StartAll(*cores);
  }
  ASSERT_EQ(static_cast<int>(tr.size()), setup == 0 ? 0 : 2);
  auto waiting = start((*cores)[0], tr);
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_FALSE(Ready(waiting));
  const absl::Status reason = absl::UnavailableError("job failed: rank 1 stopped heartbeating");
  const absl::Time aborted = absl::Now();
  (*cores)[0].Abort(reason);
  EXPECT_EQ(Wait(waiting, absl::Seconds(2)).status(), reason);
  EXPECT_LT(absl::Now() - aborted, absl::Seconds(2));
}

TEST(RankCoreTest, AStepInFlightDuringAbortAnswersWithTheAbortReason) {
  ExpectWaitingCallAnswersWithTheAbortReason<absl::StatusOr<StepOutcome>>(
      2, absl::Seconds(20), [](RankCore& core, const std::vector<Trainer>& tr) {
        tr[0].WriteGrads(0, 1);
        return StepAsync(core, MakeStep(tr[0].layout.attachment_id, 1));
      });
}

TEST(RankCoreTest, ASyncParametersInFlightDuringAbortAnswersWithTheAbortReason) {
  ExpectWaitingCallAnswersWithTheAbortReason<absl::StatusOr<StateBytes>>(
      1, absl::Seconds(20), [](RankCore& core, const std::vector<Trainer>& tr) {
        return SyncAsync(core, tr[0].layout.attachment_id);
      });
}

TEST(RankCoreTest, AbortWhileAttachWaitsForTheAgreementAnswersPromptly) {
  ExpectWaitingCallAnswersWithTheAbortReason<absl::StatusOr<Layout>>(
      0, /*agreement_timeout=*/absl::Seconds(6), [](RankCore& core, const std::vector<Trainer>&) {
        return AttachAsync(core, TestManifest());
      });
}

// ---- Shared-buffer lifetime --------------------------------------------------------------------

TEST(RankCoreTest, BuffersAreUnlinkedWhenTheCoreIsDestroyed) {
  auto cores = MakeCores(1);
  ASSERT_NE(cores, nullptr);
  auto layouts = AttachAll(*cores, TestManifest());
  ASSERT_EQ(layouts.size(), 1u);
  EXPECT_TRUE(ShmExists(layouts[0].params_name));
  EXPECT_TRUE(ShmExists(layouts[0].grads_name));
  cores->cores[0].reset();
  EXPECT_FALSE(ShmExists(layouts[0].params_name));
  EXPECT_FALSE(ShmExists(layouts[0].grads_name));
}

TEST(RankCoreTest, DestroyingTheCoreAnswersQueuedCalls) {
  auto cores = MakeCores(2, /*collective_timeout=*/absl::Seconds(60));
  ASSERT_NE(cores, nullptr);
  auto tr = StartAll(*cores);
  ASSERT_EQ(tr.size(), 2u);
  auto waiting = StepAsync((*cores)[0], MakeStep(tr[0].layout.attachment_id, 1));
  auto queued = StepAsync((*cores)[0], MakeStep(tr[0].layout.attachment_id, 2));
  absl::SleepFor(absl::Milliseconds(200));
  const std::string params = tr[0].layout.params_name;
  tr.clear();  // the trainer unmaps
  const absl::Time start = absl::Now();
  cores->cores[0].reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_FALSE(Wait(waiting, absl::Seconds(5)).ok());
  EXPECT_EQ(Wait(queued, absl::Seconds(5)).status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(ShmExists(params));
}

TEST(RankCoreTest, CreateRejectsBadOptions) {
  auto store = comm::InMemoryStore::Create();
  auto make = [&] {
    comm::GlooOptions gloo;
    gloo.key_prefix = UniquePrefix();
    auto c = comm::GlooCommunicator::Create(*store, 0, 1, gloo);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  };
  RankCoreOptions o;
  o.shm_prefix = UniquePrefix();
  EXPECT_EQ(RankCore::Create(o, nullptr, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  RankCoreOptions wrong_rank = o;
  wrong_rank.world_size = 2;
  EXPECT_EQ(RankCore::Create(wrong_rank, make(), nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  RankCoreOptions bad_prefix = o;
  bad_prefix.shm_prefix = "came-no-slash";
  EXPECT_EQ(RankCore::Create(bad_prefix, make(), nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  RankCoreOptions bad_alignment = o;
  bad_alignment.alignment = 0;
  EXPECT_EQ(RankCore::Create(bad_alignment, make(), nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}


// ---- Whole-state transfer (ExportState, ReserveStateBuffer, ImportState) -----------------

std::future<absl::StatusOr<StateTransfer>> ExportAsync(RankCore& c, const std::string& id) {
  auto [done, f] = Callback<absl::StatusOr<StateTransfer>>();
  c.ExportState(id, std::move(done));
  return std::move(f);
}
absl::StatusOr<StateTransfer> ReserveSync(RankCore& c, const std::string& id) {
  auto [done, f] = Callback<absl::StatusOr<StateTransfer>>();
  c.ReserveStateBuffer(id, std::move(done));
  return Wait(f);
}
absl::Status ImportSync(RankCore& c, const std::string& id, int64_t step) {
  auto [done, f] = Callback<absl::Status>();
  c.ImportState(id, step, std::move(done));
  return Wait(f);
}

// Returns a state buffer's floats (mapped as a trainer does).
std::vector<float> ReadState(const StateTransfer& t) {
  auto buffer = SharedBuffer::Open(t.buffer_name, t.buffer_bytes);
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!buffer.ok()) return {};
  const float* f = static_cast<const float*>((*buffer)->data());
  return std::vector<float>(f, f + t.layout.size);
}

TEST(RankCoreTest, OneRankExportsTheWholeStateWhileTheOtherSteps) {
  auto cores = MakeCores(2);
  ASSERT_NE(cores, nullptr);
  auto tr = StartAll(*cores);
  ASSERT_EQ(tr.size(), 2u);
  auto twin = Twin(2);
  ASSERT_NE(twin, nullptr);
  for (int step = 1; step <= 2; ++step) {
    for (auto& out : StepAll(*cores, tr, step)) ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_TRUE(TwinStep(*twin, step).ok());
  }
  // Rank 1's trainer goes on to step 3; rank 0's saves first: rank 1 serves the export.
  tr[1].WriteGrads(1, 3);
  auto stepping = StepAsync((*cores)[1], MakeStep(tr[1].layout.attachment_id, 3));
  auto exported_f = ExportAsync((*cores)[0], tr[0].layout.attachment_id);
  absl::StatusOr<StateTransfer> exported = Wait(exported_f);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->step, 2);
  EXPECT_FALSE(Ready(stepping)) << "rank 1's step ran without rank 0";
  const std::vector<float> state = ReadState(*exported);
  ASSERT_EQ(static_cast<int64_t>(state.size()), exported->layout.size);
  for (size_t t = 0; t < twin->plan().tensors.size(); ++t) {
    const auto& tensor = twin->plan().tensors[t];
    const auto expected = twin->State(static_cast<int>(t));
    ASSERT_TRUE(expected.ok()) << expected.status();
    const std::vector<double> exp_avg(state.begin() + tensor.offset,
                                      state.begin() + tensor.offset + tensor.geom.numel);
    EXPECT_EQ(exp_avg, expected->at("exp_avg")) << tensor.spec.name;
  }
  tr[0].WriteGrads(0, 3);
  ASSERT_TRUE(StepSync((*cores)[0], MakeStep(tr[0].layout.attachment_id, 3)).ok());
  ASSERT_TRUE(Wait(stepping).ok());
  ASSERT_TRUE(TwinStep(*twin, 3).ok());
  for (int t = 0; t < static_cast<int>(twin->plan().tensors.size()); ++t)
    EXPECT_EQ(tr[1].Param(t), twin->Param(t));
  EXPECT_FALSE(ShmExists(exported->buffer_name)) << "the export buffer outlived the next step";
}

TEST(RankCoreTest, ImportNeedsAReservedBufferAndRefusesBadStateUnchanged) {
  auto cores = MakeCores(1);
  ASSERT_NE(cores, nullptr);
  auto tr = StartAll(*cores);
  ASSERT_EQ(tr.size(), 1u);
  const std::string id = tr[0].layout.attachment_id;
  ASSERT_TRUE(StepAll(*cores, tr, 1)[0].ok());
  ExpectStatus(ImportSync((*cores)[0], id, 1), absl::StatusCode::kFailedPrecondition,
               "call ReserveStateBuffer");
  auto before_f = ExportAsync((*cores)[0], id);
  auto before = Wait(before_f);
  ASSERT_TRUE(before.ok()) << before.status();
  const std::vector<float> good = ReadState(*before);

  auto reserved = ReserveSync((*cores)[0], id);
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  {
    auto buffer = SharedBuffer::Open(reserved->buffer_name, reserved->buffer_bytes);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    float* f = static_cast<float*>((*buffer)->data());
    std::copy(good.begin(), good.end(), f);
    f[reserved->layout.exp_avg_sq + tr[0].layout.plan.tensors[1].offset] = -2.0f;
  }
  ExpectStatus(ImportSync((*cores)[0], id, 7), absl::StatusCode::kInvalidArgument,
               "tensor 'embed_bias': exp_avg_sq[0] is -2");
  auto after_f = ExportAsync((*cores)[0], id);
  auto after = Wait(after_f);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(ReadState(*after), good);
  EXPECT_EQ(after->step, 1);
  // A good import sets the step: the next step is numbered after it.
  reserved = ReserveSync((*cores)[0], id);
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  ASSERT_TRUE(ImportSync((*cores)[0], id, 5).ok());
  ExpectStatus(StepSync((*cores)[0], MakeStep(id, 5)).status(),
               absl::StatusCode::kFailedPrecondition, "step 5 is out of order");
  tr[0].WriteGrads(0, 6);
  EXPECT_TRUE(StepSync((*cores)[0], MakeStep(id, 6)).ok());
}

}  // namespace
}  // namespace came::rankd
