// came-replay as a user runs it: the built binary in a subprocess, on every golden case, on
// its own --out files, on a corrupted case and on bad inputs (exit 0 / 1 / 2).
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tools/replay/case_io.h"
#include "tools/replay/trajectory.h"

#ifndef CAME_REPLAY_BIN
#error "CAME_REPLAY_BIN must name the came-replay binary"
#endif

namespace came {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

// A fresh temporary directory per test, removed at the end.
class ReplayCliTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "came_replay_cli_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  fs::path Path(const std::string& name) const { return dir_ / name; }

  // Runs came-replay with `args`; stdout and stderr go to files in the temp dir.
  RunResult Replay(const std::vector<std::string>& args) const {
    const fs::path out = dir_ / "stdout.txt", err = dir_ / "stderr.txt";
    std::vector<std::string> argv_s = {CAME_REPLAY_BIN};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
      const int fo = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int fe = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fo < 0 || fe < 0) _exit(127);
      dup2(fo, 1);
      dup2(fe, 2);
      execv(argv[0], argv.data());
      _exit(127);
    }
    RunResult r;
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = ReadAll(out);
    r.err = ReadAll(err);
    return r;
  }

  // Expects exit status 2 and exactly one stderr line "came-replay: <where>: ..." that
  // contains `what`.
  void ExpectBadInput(const std::vector<std::string>& args, const std::string& where,
                      const std::string& what) const {
    const RunResult r = Replay(args);
    EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("came-replay: " + where, 0), 0u) << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << "want \"" << what << "\" in: " << r.err;
    EXPECT_EQ(r.out.find("PASS"), std::string::npos) << r.out;
  }

  fs::path dir_;
};

constexpr char kBase[] = "tests/data/golden/2d_4x6_base.json";
constexpr char k1d[] = "tests/data/golden/1d_7_base.json";

json LoadJson(const std::string& path) { return json::parse(ReadAll(path)); }

TEST_F(ReplayCliTest, EveryGoldenCasePassesWithBothImpls) {
  const auto files = ListGoldenCases();
  ASSERT_FALSE(files.empty());
  for (const std::string& f : files)
    for (const char* impl : {"reference", "cpu"}) {
      const RunResult r = Replay({"--case", f, "--impl", impl});
      EXPECT_EQ(r.exit_code, 0) << f << " " << impl << "\n" << r.out << r.err;
      EXPECT_TRUE(r.err.empty()) << r.err;
      EXPECT_NE(r.out.find("\nPASS"), std::string::npos) << r.out;
      EXPECT_NE(r.out.find(std::string("impl ") + impl), std::string::npos) << r.out;
      EXPECT_NE(r.out.find(" isa "), std::string::npos) << r.out;
    }
}

TEST_F(ReplayCliTest, PrintsOneLinePerStepAndPerStateTensor) {
  const RunResult r = Replay({"--case", kBase, "--threads", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  std::istringstream lines(r.out);
  std::string line;
  int steps = 0, states = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("step ", 0) == 0) {
      ++steps;
      EXPECT_NE(line.find("tol 5e-05"), std::string::npos) << line;
    }
    if (line.rfind("state ", 0) == 0) {
      ++states;
      EXPECT_NE(line.find("tol 1e-05"), std::string::npos) << line;
    }
  }
  EXPECT_EQ(steps, 5);
  EXPECT_EQ(states, 5);
  EXPECT_NE(r.out.find("case 2d_4x6_base  shape [4, 6]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("threads 3"), std::string::npos) << r.out;
}

TEST_F(ReplayCliTest, SixteenBitGradientsCompareWithTheReferenceOnRoundedGradients) {
  for (const char* f : {kBase, k1d, "tests/data/golden/3d_2x3x5_base.json"})
    for (const char* dt : {"bfloat16", "float16"}) {
      const RunResult r = Replay({"--case", f, "--grad-dtype", dt});
      EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
      EXPECT_NE(r.out.find(std::string("reference on ") + dt + "-rounded"), std::string::npos)
          << r.out;
    }
}

TEST_F(ReplayCliTest, OutRoundTripReproduces) {
  auto c = LoadGoldenCase(kBase);
  ASSERT_TRUE(c.ok()) << c.status();
  for (const char* impl : {"reference", "cpu"}) {
    const std::string out = Path(std::string(impl) + ".json").string();
    const RunResult r = Replay({"--case", kBase, "--impl", impl, "--out", out});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    auto written = LoadGoldenCase(out);
    ASSERT_TRUE(written.ok()) << written.status();
    EXPECT_EQ(written->shape, c->shape);
    EXPECT_EQ(written->grads, c->grads);
    EXPECT_EQ(written->param0, c->param0);
    EXPECT_EQ(written->state_shapes, c->state_shapes);
    // The written trajectory is what the implementation produces, bit for bit...
    const Trajectory again = std::string(impl) == "cpu" ? RunCpu(*c) : RunReference(*c);
    EXPECT_EQ(written->params, again.params);
    EXPECT_EQ(written->state, again.state);
    // ...within tolerance of the stored one, and replaying it with the same impl passes.
    const TrajectoryErrors e = CompareTrajectory(*c, Trajectory{written->params, written->state, {}});
    EXPECT_LE(e.max_param(), std::string(impl) == "cpu" ? kFloat32ParamTolerance : kFloat64Tolerance);
    const RunResult again_r = Replay({"--case", out, "--impl", impl});
    EXPECT_EQ(again_r.exit_code, 0) << again_r.out << again_r.err;
    EXPECT_NE(again_r.out.find("max param error 0.000e+00"), std::string::npos) << again_r.out;
  }
}

TEST_F(ReplayCliTest, InputsOnlyCaseNeedsOut) {
  json j = LoadJson(kBase);
  j.erase("params");
  j.erase("state");
  const std::string in = Path("inputs.json").string(), out = Path("out.json").string();
  WriteAll(in, j.dump());
  ExpectBadInput({"--case", in}, in, "--out");
  const RunResult r = Replay({"--case", in, "--out", out});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("nothing to compare"), std::string::npos) << r.out;
  auto written = LoadGoldenCase(out);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->params.size(), 5u);
  // The produced file agrees with the stored trajectory of the full case.
  EXPECT_EQ(Replay({"--case", out, "--impl", "cpu"}).exit_code, 0);
}

TEST_F(ReplayCliTest, CorruptedTrajectoryFails) {
  json j = LoadJson(kBase);
  j["params"][2][5] = j["params"][2][5].get<double>() * (1 + 1e-3);
  const std::string p = Path("bad_param.json").string();
  WriteAll(p, j.dump(-1, ' ', false, json::error_handler_t::strict));
  RunResult r = Replay({"--case", p});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("step 3"), std::string::npos);
  EXPECT_NE(r.out.find("FAIL"), std::string::npos) << r.out;
  r = Replay({"--case", p, "--impl", "reference"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;

  j = LoadJson(kBase);
  j["state"]["exp_avg_sq_col"][1] = j["state"]["exp_avg_sq_col"][1].get<double>() * 1.01;
  const std::string s = Path("bad_state.json").string();
  WriteAll(s, j.dump());
  r = Replay({"--case", s});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("state exp_avg_sq_col"), std::string::npos);
}

// A scalar (shape []) is a 1-element unfactored tensor, as in the reference (factored only
// for ndim >= 2): state exp_avg and exp_avg_sq of shape [].
TEST_F(ReplayCliTest, ScalarIsAnUnfactoredOneElementTensor) {
  const std::string in = Path("scalar.json").string(), ref = Path("scalar_ref.json").string();
  WriteAll(in, R"({"name": "scalar", "shape": [], "hyper": {"lr": 0.01}, "steps": 3,
                   "param0": [0.5], "grads": [[0.1], [-2.0], [0.0]]})");
  RunResult r = Replay({"--case", in, "--impl", "reference", "--out", ref});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto c = LoadGoldenCase(ref);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->shape.empty());
  EXPECT_EQ(c->state.size(), 2u);
  EXPECT_EQ(c->state.count("exp_avg_sq"), 1u);
  EXPECT_EQ(c->state_shapes.at("exp_avg_sq"), std::vector<int64_t>{});
  r = Replay({"--case", ref, "--impl", "cpu"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

// One bad input: a name, how to break the base case, and what the message must say.
struct BadCase {
  std::string name;
  std::string text;
  std::string what;
};

std::vector<BadCase> BadCases() {
  const std::string base = ReadAll(kBase);
  const json j0 = json::parse(base);
  std::vector<BadCase> out;
  auto edit = [&](const std::string& name, const std::string& what, auto fn) {
    json j = j0;
    fn(j);
    out.push_back({name, j.dump(), what});
  };
  // A literal the JSON grammar rejects, in place of the first number of param0.
  auto literal = [&](const std::string& name, const std::string& lit) {
    json j = j0;
    j["param0"][0] = 7777.25;
    std::string t = j.dump();
    t.replace(t.find("7777.25"), 7, lit);
    out.push_back({name, t, "malformed JSON"});
  };
  out.push_back({"malformed", "{\"name\": \"x\", \"shape\": [4, 6],, }", "malformed JSON"});
  out.push_back({"truncated", base.substr(0, base.size() / 2), "malformed JSON"});
  out.push_back({"empty_file", "", "malformed JSON"});
  out.push_back({"top_level_array", "[1, 2, 3]", "expected a JSON object"});
  literal("nan_literal", "NaN");
  literal("infinity_literal", "Infinity");
  literal("neg_infinity_literal", "-Infinity");
  literal("overflow_literal", "1e999");
  edit("param0_length", "param0: expected 24 numbers, got 23",
       [](json& j) { j["param0"].erase(j["param0"].size() - 1); });
  edit("grads_length", "grads[1]: expected 24 numbers, got 25",
       [](json& j) { j["grads"][1].push_back(0.5); });
  edit("grads_count", "grads: expected 5 gradients",
       [](json& j) { j["grads"].erase(j["grads"].size() - 1); });
  edit("state_length", "state.exp_avg_res_row: expected 4 numbers, got 5",
       [](json& j) { j["state"]["exp_avg_res_row"].push_back(1.0); });
  edit("state_unknown_tensor", "state: unknown tensor \"exp_avg_sq\"",
       [](json& j) { j["state"]["exp_avg_sq"] = j["param0"]; });
  edit("state_missing_tensor", "state: missing tensor \"exp_avg_res_col\"",
       [](json& j) { j["state"].erase("exp_avg_res_col"); });
  edit("params_length", "params[4]: expected 24 numbers",
       [](json& j) { j["params"][4] = json::array({1.0}); });
  edit("hyper_unknown_key", "hyper: unknown key \"momentum\"",
       [](json& j) { j["hyper"]["momentum"] = 0.9; });
  edit("top_unknown_key", "unknown key \"comment\"", [](json& j) { j["comment"] = "hi"; });
  edit("hyper_lr_missing", "hyper: \"lr\" is required", [](json& j) { j["hyper"].erase("lr"); });
  edit("hyper_betas_length", "hyper.betas: expected 3 numbers",
       [](json& j) { j["hyper"]["betas"] = json::array({0.9, 0.999}); });
  edit("hyper_beta_out_of_range", "hyper.betas", [](json& j) { j["hyper"]["betas"][1] = 1.0; });
  edit("hyper_string", "hyper.lr: expected a number", [](json& j) { j["hyper"]["lr"] = "0.01"; });
  edit("negative_dim", "shape[0]: expected a positive integer",
       [](json& j) { j["shape"] = json::array({-4, -6}); });
  edit("zero_dim", "shape[1]: expected a positive integer",
       [](json& j) { j["shape"] = json::array({4, 0}); });
  edit("fractional_dim", "shape[0]: expected a positive integer",
       [](json& j) { j["shape"] = json::array({4.5, 6}); });
  edit("shape_mismatch", "param0: expected 25 numbers, got 24",
       [](json& j) { j["shape"] = json::array({5, 5}); });
  edit("steps_zero", "steps: expected a positive integer", [](json& j) { j["steps"] = 0; });
  edit("missing_grads", "missing key \"grads\"", [](json& j) { j.erase("grads"); });
  edit("grad_not_number", "grads[0][3]: expected a number",
       [](json& j) { j["grads"][0][3] = nullptr; });
  edit("state_shapes_wrong", "state_shapes.exp_avg_sq_row: expected [4], got [6]",
       [](json& j) { j["state_shapes"]["exp_avg_sq_row"] = json::array({6}); });
  return out;
}

TEST_F(ReplayCliTest, BadInputsExitTwoWithOneLineNamingTheProblem) {
  for (const BadCase& b : BadCases()) {
    SCOPED_TRACE(b.name);
    const std::string p = Path(b.name + ".json").string();
    WriteAll(p, b.text);
    for (const char* impl : {"cpu", "reference"})
      ExpectBadInput({"--case", p, "--impl", impl}, p + ": ", b.what);
    // --out does not relax validation of what is there.
    ExpectBadInput({"--case", p, "--out", Path("never.json").string()}, p + ": ", b.what);
    EXPECT_FALSE(fs::exists(Path("never.json")));
  }
}

TEST_F(ReplayCliTest, UsageErrorsExitTwo) {
  ExpectBadInput({}, "--case", "required");
  ExpectBadInput({"--impl", "cpu"}, "--case", "required");
  ExpectBadInput({"--case"}, "--case", "needs a value");
  ExpectBadInput({"--case", kBase, "--impl", "gpu"}, "--impl", "unknown implementation \"gpu\"");
  ExpectBadInput({"--case", kBase, "--threads", "0"}, "--threads", "1..256");
  ExpectBadInput({"--case", kBase, "--threads", "two"}, "--threads", "\"two\"");
  ExpectBadInput({"--case", kBase, "--grad-dtype", "int8"}, "--grad-dtype", "\"int8\"");
  ExpectBadInput({"--case", kBase, "--impl", "reference", "--grad-dtype", "bfloat16"},
                 "--grad-dtype", "does not apply");
  ExpectBadInput({"--case", kBase, "--frobnicate"}, "unknown option --frobnicate", "");
  ExpectBadInput({"--case", kBase, "--case", kBase}, "--case given twice", "");
  ExpectBadInput({kBase}, "unexpected argument", kBase);
  const std::string missing = Path("no_such_case.json").string();
  ExpectBadInput({"--case", missing}, missing + ": ", "cannot open");
  ExpectBadInput({"--case", dir_.string()}, dir_.string() + ": ", "directory");
  const std::string unwritable = Path("no_dir/out.json").string();
  ExpectBadInput({"--case", kBase, "--out", unwritable}, unwritable + ": ", "cannot write");
}

TEST_F(ReplayCliTest, HelpExitsZero) {
  const RunResult r = Replay({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("usage: came-replay"), std::string::npos);
}

}  // namespace
}  // namespace came
