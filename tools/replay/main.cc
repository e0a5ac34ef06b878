// came-replay: runs a golden case (tests/data/golden/README.md) through one implementation
// of CAME and compares the trajectory it produces with the stored one, step by step, by the
// README's criteria. Exit status: 0 all within tolerance (or nothing to compare), 1 a step or
// the final state outside it, 2 a usage error or bad input (one line on stderr).
//
// Every implementation is a Runner: a name, its tolerances and a function from (case,
// options) to a trajectory. A new one (the sharded engine behind --ranks) is one more entry
// in Runners() and, if it takes options, one more field in ReplayOptions.
#include <cstdio>
#include <algorithm>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <new>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cpu_loops.h"
#include "kernels/dtype.h"
#include "kernels/geometry.h"
#include "tools/replay/case_io.h"
#include "tools/replay/cuda_trajectory.h"
#include "tools/replay/sharded_trajectory.h"
#include "tools/replay/trajectory.h"

namespace came {
namespace {

constexpr int kExitFail = 1;
constexpr int kExitBadInput = 2;
constexpr int kMaxThreads = 256;
constexpr int kMaxRanks = 64;

constexpr char kUsage[] =
    "usage: came-replay --case FILE.json [--impl reference|cpu|cuda] [--out OUT.json]\n"
    "                   [--threads N] [--grad-dtype float32|bfloat16|float16] [--ranks W]\n"
    "Runs a golden case through one CAME implementation and compares each step's parameters\n"
    "and the final state with the stored trajectory (tests/data/golden/README.md).\n"
    "  --impl        reference (double, tolerance 1e-10) or cpu (fused float32 kernels,\n"
    "                tolerances 5e-5 parameters / 1e-5 state) or cuda (the CUDA kernels on\n"
    "                device 0, same tolerances); default cpu\n"
    "  --out         write the produced trajectory as a case file; a case without\n"
    "                params/state (inputs only) is accepted then\n"
    "  --threads     CPU threads (cpu only), 1..256; default 2 (1 per rank with --ranks)\n"
    "  --ranks       run the sharded engine over W ranks (threads in this process, Gloo over\n"
    "                127.0.0.1), 1..64; the tensor is split across the ranks (mid-row too)\n"
    "  --grad-dtype  the dtype the cpu or cuda kernels read gradients in; default float32. With a\n"
    "                16-bit dtype the stored trajectory (float64 gradients) no longer applies:\n"
    "                the expected trajectory is the double reference on the rounded gradients\n"
    "Exit status: 0 pass, 1 outside tolerance, 2 usage error or bad input.\n";

struct ReplayOptions {
  std::string case_path;
  std::string out_path;  // empty: do not write
  std::string impl = "cpu";
  int threads = 2;
  std::optional<DType> grad_dtype;  // set by --grad-dtype
  std::optional<int> ranks;         // set by --ranks: the sharded engine
  bool threads_set = false;
};

// One implementation a case can be replayed through.
struct Runner {
  std::string_view name;
  double param_tolerance;
  double state_tolerance;
  bool takes_grad_dtype;
  absl::StatusOr<Trajectory> (*run)(const GoldenCase& c, const ReplayOptions& o);
};

absl::StatusOr<Trajectory> RunReferenceImpl(const GoldenCase& c, const ReplayOptions&) {
  return RunReference(c);
}

absl::StatusOr<Trajectory> RunCpuImpl(const GoldenCase& c, const ReplayOptions& o) {
  if (o.ranks) return RunSharded(c, *o.ranks, o.threads_set ? o.threads : 1);
  return RunCpu(c, o.grad_dtype.value_or(DType::kFloat32), o.threads);
}

absl::StatusOr<Trajectory> RunCudaImpl(const GoldenCase& c, const ReplayOptions& o) {
  return RunCuda(c, o.grad_dtype.value_or(DType::kFloat32));
}

std::span<const Runner> Runners() {
  static const Runner kRunners[] = {
      {"reference", kFloat64Tolerance, kFloat64Tolerance, false, &RunReferenceImpl},
      {"cpu", kFloat32ParamTolerance, kFloat32StateTolerance, true, &RunCpuImpl},
      {"cuda", kFloat32ParamTolerance, kFloat32StateTolerance, true, &RunCudaImpl},
  };
  return kRunners;
}

const Runner* FindRunner(std::string_view name) {
  for (const Runner& r : Runners())
    if (r.name == name) return &r;
  return nullptr;
}

// Runs the case through the implementation the options name.
absl::StatusOr<Trajectory> RunImpl(const GoldenCase& c, const ReplayOptions& o) {
  const Runner* r = FindRunner(o.impl);
  if (r == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown impl ", o.impl));
  return r->run(c, o);
}

std::string RunnerNames() {
  std::vector<std::string> names;
  for (const Runner& r : Runners()) names.emplace_back(r.name);
  return absl::StrJoin(names, "|");
}

// Parses the command line; InvalidArgument names the problem.
absl::StatusOr<ReplayOptions> ParseArgs(std::span<char* const> args, bool& help) {
  ReplayOptions o;
  std::vector<std::string> seen;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "--help" || arg == "-h") {
      help = true;
      return o;
    }
    if (arg.rfind("--", 0) != 0)
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\""));
    std::string value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    static const char* const kOptions[] = {"--case", "--impl", "--out", "--threads",
                                           "--grad-dtype", "--ranks"};
    if (std::find(std::begin(kOptions), std::end(kOptions), arg) == std::end(kOptions))
      return absl::InvalidArgumentError(absl::StrCat("unknown option ", arg));
    if (std::find(seen.begin(), seen.end(), arg) != seen.end())
      return absl::InvalidArgumentError(absl::StrCat(arg, " given twice"));
    seen.push_back(arg);
    if (!has_value) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat(arg, " needs a value"));
      value = args[++i];
    }
    if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(arg, ": empty value"));
    if (arg == "--case") {
      o.case_path = value;
    } else if (arg == "--out") {
      o.out_path = value;
    } else if (arg == "--impl") {
      if (FindRunner(value) == nullptr)
        return absl::InvalidArgumentError(
            absl::StrCat("--impl: unknown implementation \"", value, "\" (", RunnerNames(), ")"));
      o.impl = value;
    } else if (arg == "--ranks") {
      int w = 0;
      if (!absl::SimpleAtoi(value, &w) || w < 1 || w > kMaxRanks)
        return absl::InvalidArgumentError(absl::StrCat(
            "--ranks: expected an integer in 1..", kMaxRanks, ", got \"", value, "\""));
      o.ranks = w;
    } else if (arg == "--threads") {
      o.threads_set = true;
      if (!absl::SimpleAtoi(value, &o.threads) || o.threads < 1 || o.threads > kMaxThreads)
        return absl::InvalidArgumentError(
            absl::StrCat("--threads: expected an integer in 1..", kMaxThreads, ", got \"", value,
                         "\""));
    } else if (arg == "--grad-dtype") {
      o.grad_dtype = ParseDType(value);
      if (!o.grad_dtype)
        return absl::InvalidArgumentError(absl::StrCat(
            "--grad-dtype: unknown dtype \"", value, "\" (float32|bfloat16|float16)"));
    }
  }
  if (o.case_path.empty()) return absl::InvalidArgumentError("--case FILE.json is required");
  if (o.ranks && o.impl != "cpu")
    return absl::InvalidArgumentError("--ranks runs the sharded engine: use it with --impl cpu");
  if (o.ranks && o.grad_dtype)
    return absl::InvalidArgumentError("--grad-dtype does not apply to --ranks (float32 only)");
  if (o.grad_dtype && !FindRunner(o.impl)->takes_grad_dtype)
    return absl::InvalidArgumentError(
        absl::StrCat("--grad-dtype does not apply to --impl ", o.impl));
  return o;
}

// Reads a whole file; NotFound when it cannot be read.
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return absl::NotFoundError("is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot open file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::NotFoundError("cannot read file");
  return ss.str();
}

// Writes a file whole: to a temporary name first, then renamed over `path`.
absl::Status WriteFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      return absl::UnavailableError("cannot write file");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return absl::UnavailableError(absl::StrCat("cannot write file: ", ec.message()));
  }
  return absl::OkStatus();
}

// Prints "came-replay: [where: ]what" on stderr; returns the bad-input exit status.
int Fail(const std::string& where, const std::string& what) {
  if (where.empty())
    std::fprintf(stderr, "came-replay: %s\n", what.c_str());
  else
    std::fprintf(stderr, "came-replay: %s: %s\n", where.c_str(), what.c_str());
  return kExitBadInput;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

const char* Verdict(double err, double tol) { return err <= tol ? "ok" : "FAIL"; }

int Replay(const ReplayOptions& o) {
  const Runner& runner = *FindRunner(o.impl);
  if (o.impl == "cuda") {
    if (const std::string why = CudaUnavailableReason(); !why.empty())
      return Fail("", absl::StrCat(why, " (--impl cuda needs one; --impl cpu runs here)"));
  }
  if (!o.out_path.empty()) {
    std::error_code ec;
    const std::filesystem::path parent =
        std::filesystem::absolute(o.out_path, ec).parent_path();
    if (ec || !std::filesystem::is_directory(parent, ec))
      return Fail(o.out_path, "cannot write file: no such directory");
  }
  auto text = ReadFile(o.case_path);
  if (!text.ok()) return Fail(o.case_path, Message(text.status()));
  auto parsed = ParseGoldenCase(*text, /*require_trajectory=*/o.out_path.empty());
  if (!parsed.ok()) {
    if (o.out_path.empty() && ParseGoldenCase(*text, /*require_trajectory=*/false).ok())
      return Fail(o.case_path,
                  "no stored trajectory (params, state): pass --out to run an inputs-only case");
    return Fail(o.case_path, Message(parsed.status()));
  }
  GoldenCase c = std::move(*parsed);
  if (c.name.empty()) c.name = std::filesystem::path(o.case_path).stem().string();

  // With 16-bit gradients the implementation sees other inputs than the stored trajectory
  // was made from: the expected trajectory is the reference on the rounded gradients.
  const DType grad_dtype = o.grad_dtype.value_or(DType::kFloat32);
  const bool rounded = runner.takes_grad_dtype && grad_dtype != DType::kFloat32;
  GoldenCase inputs = rounded ? RoundGradients(c, grad_dtype) : c;
  std::optional<GoldenCase> expected;
  std::string expected_from = "stored trajectory";
  if (rounded) {
    expected = WithTrajectory(inputs, RunReference(inputs));
    expected_from = absl::StrCat("reference on ", std::string(DTypeName(grad_dtype)), "-rounded gradients");
  } else if (!c.params.empty()) {
    expected = c;
  } else {
    expected_from = "none";
  }

  std::printf("case %s  shape %s  steps %d  impl %s", c.name.c_str(),
              ShapeString(c.shape).c_str(), c.steps, o.impl.c_str());
  if (o.ranks)
    std::printf("  ranks %d (sharded engine)", *o.ranks);
  else if (runner.takes_grad_dtype)
    std::printf("  threads %d  grad-dtype %s", o.threads, DTypeName(grad_dtype).data());
  std::printf("  isa %s  expected: %s\n", cpu::GetCpuLoops().isa, expected_from.c_str());

  auto got = RunImpl(inputs, o);
  if (!got.ok()) return Fail(o.case_path, Message(got.status()));

  bool pass = true;
  if (expected) {
    const TrajectoryErrors e = CompareTrajectory(*expected, *got);
    for (size_t k = 0; k < e.param.size(); ++k) {
      const bool skipped = k < got->skipped.size() && got->skipped[k];
      std::printf("step %zu  param error %.3e  tol %.0e  %s%s\n", k + 1, e.param[k],
                  runner.param_tolerance, Verdict(e.param[k], runner.param_tolerance),
                  skipped ? "  (skipped: non-finite gradient)" : "");
      pass = pass && e.param[k] <= runner.param_tolerance;
    }
    if (e.param.size() != expected->params.size()) {
      std::printf("steps: expected %zu parameter vectors, produced %zu  FAIL\n",
                  expected->params.size(), got->params.size());
      pass = false;
    }
    if (e.state.empty()) std::printf("state: none stored\n");
    for (const auto& [name, err] : e.state) {
      std::printf("state %s  error %.3e  tol %.0e  %s\n", name.c_str(), err,
                  runner.state_tolerance, Verdict(err, runner.state_tolerance));
      pass = pass && err <= runner.state_tolerance;
    }
    std::printf("%s  max param error %.3e  max state error %.3e\n", pass ? "PASS" : "FAIL",
                e.max_param(), e.max_state());
  } else {
    std::printf("nothing to compare: the case has no stored trajectory\n");
  }

  if (!o.out_path.empty()) {
    if (!got->finite()) {
      std::fflush(stdout);
      Fail(o.out_path, "the produced trajectory is not finite; not written");
      return kExitFail;
    }
    if (absl::Status s = WriteFile(o.out_path, GoldenCaseToJson(WithTrajectory(inputs, *got)));
        !s.ok())
      return Fail(o.out_path, Message(s));
    std::printf("wrote %s\n", o.out_path.c_str());
  }
  return pass ? 0 : kExitFail;
}

int Main(int argc, char** argv) {
  bool help = false;
  auto options = ParseArgs(std::span<char* const>(argv + 1, argc - 1), help);
  if (help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!options.ok()) return Fail("", absl::StrCat(Message(options.status()), " (see --help)"));
  try {
    return Replay(*options);
  } catch (const std::bad_alloc&) {
    return Fail(options->case_path, "out of memory");
  } catch (const std::exception& e) {
    return Fail(options->case_path, absl::StrCat("internal error: ", e.what()));
  }
}

}  // namespace
}  // namespace came

int main(int argc, char** argv) { return came::Main(argc, argv); }
