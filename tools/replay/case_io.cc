#include "tools/replay/case_io.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/geometry.h"
#include "nlohmann/json.hpp"

namespace came {
namespace {

using json = nlohmann::json;

absl::Status Bad(const std::string& what) { return absl::InvalidArgumentError(what); }

// Returns nlohmann's parse error message on one line, without its "[json.exception...] "
// prefix: "parse error at line 1, column 9: syntax error ... - invalid literal; last read: ...".
std::string ParseErrorText(std::string_view what) {
  if (!what.empty() && what.front() == '[') {
    const size_t close = what.find("] ");
    if (close != std::string_view::npos) what.remove_prefix(close + 2);
  }
  std::string out(what);
  for (char& ch : out)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return out;
}

absl::StatusOr<double> Number(const json& v, const std::string& where) {
  if (!v.is_number()) return Bad(absl::StrCat(where, ": expected a number"));
  const double d = v.get<double>();
  if (!std::isfinite(d)) return Bad(absl::StrCat(where, ": not finite"));
  return d;
}

absl::StatusOr<std::vector<double>> Numbers(const json& v, const std::string& where,
                                            int64_t expected) {
  if (!v.is_array()) return Bad(absl::StrCat(where, ": expected an array of numbers"));
  if (expected >= 0 && static_cast<int64_t>(v.size()) != expected)
    return Bad(absl::StrCat(where, ": expected ", expected, " numbers, got ", v.size()));
  std::vector<double> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    auto d = Number(v[i], absl::StrCat(where, "[", i, "]"));
    if (!d.ok()) return d.status();
    out.push_back(*d);
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> Shape(const json& v, const std::string& where) {
  if (!v.is_array()) return Bad(absl::StrCat(where, ": expected an array of dims"));
  std::vector<int64_t> shape;
  int64_t numel = 1;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer() || v[i].get<int64_t>() <= 0)
      return Bad(absl::StrCat(where, "[", i, "]: expected a positive integer"));
    const int64_t d = v[i].get<int64_t>();
    if (__builtin_mul_overflow(numel, d, &numel) || numel > (int64_t{1} << 34))
      return Bad(absl::StrCat(where, ": too many elements"));
    shape.push_back(d);
  }
  return shape;
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status ParseHyper(const json& h, CameHyper& out) {
  if (!h.is_object()) return Bad("hyper: expected an object");
  static const std::set<std::string> kKnown = {"lr", "eps", "clip_threshold", "betas",
                                               "weight_decay"};
  for (auto it = h.begin(); it != h.end(); ++it)
    if (!kKnown.count(it.key())) return Bad(absl::StrCat("hyper: unknown key \"", it.key(), "\""));
  if (!h.contains("lr")) return Bad("hyper: \"lr\" is required");
  auto lr = Number(h["lr"], "hyper.lr");
  if (!lr.ok()) return lr.status();
  out.lr = *lr;
  if (h.contains("eps")) {
    auto eps = Numbers(h["eps"], "hyper.eps", 2);
    if (!eps.ok()) return eps.status();
    out.eps1 = (*eps)[0];
    out.eps2 = (*eps)[1];
  }
  if (h.contains("betas")) {
    auto b = Numbers(h["betas"], "hyper.betas", 3);
    if (!b.ok()) return b.status();
    out.beta1 = (*b)[0];
    out.beta2 = (*b)[1];
    out.beta3 = (*b)[2];
  }
  if (h.contains("clip_threshold")) {
    auto d = Number(h["clip_threshold"], "hyper.clip_threshold");
    if (!d.ok()) return d.status();
    out.clip_threshold = *d;
  }
  if (h.contains("weight_decay")) {
    auto d = Number(h["weight_decay"], "hyper.weight_decay");
    if (!d.ok()) return d.status();
    out.weight_decay = *d;
  }
  if (out.lr < 0) return Bad("hyper.lr: must be >= 0");
  if (out.clip_threshold <= 0) return Bad("hyper.clip_threshold: must be > 0");
  if (out.eps1 < 0 || out.eps2 < 0) return Bad("hyper.eps: must be >= 0");
  for (double b : {out.beta1, out.beta2, out.beta3})
    if (b < 0 || b >= 1) return Bad("hyper.betas: each must be in [0, 1)");
  return absl::OkStatus();
}

// Writes a double as its shortest round-trip decimal, the way Python's repr does.
void AppendDouble(std::string& out, double d) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d);
  std::string_view s(buf, end - buf);
  out.append(s);
  if (s.find_first_of(".eEn") == std::string_view::npos) out.append(".0");
}

void AppendArray(std::string& out, const std::vector<double>& v) {
  out.push_back('[');
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out.append(", ");
    AppendDouble(out, v[i]);
  }
  out.push_back(']');
}

void AppendShape(std::string& out, const std::vector<int64_t>& v) {
  out.push_back('[');
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out.append(", ");
    out.append(std::to_string(v[i]));
  }
  out.push_back(']');
}

}  // namespace

std::map<std::string, std::vector<int64_t>> StateShapes(const std::vector<int64_t>& shape) {
  std::map<std::string, std::vector<int64_t>> s;
  s["exp_avg"] = shape;
  if (shape.size() >= 2) {
    std::vector<int64_t> row(shape.begin(), shape.end() - 1);
    std::vector<int64_t> col(shape.begin(), shape.end());
    col.erase(col.end() - 2);
    s["exp_avg_sq_row"] = row;
    s["exp_avg_res_row"] = row;
    s["exp_avg_sq_col"] = col;
    s["exp_avg_res_col"] = col;
  } else {
    s["exp_avg_sq"] = shape;
  }
  return s;
}

absl::StatusOr<GoldenCase> ParseGoldenCase(std::string_view text, bool require_trajectory) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return Bad(absl::StrCat("malformed JSON: ", ParseErrorText(e.what())));
  }
  if (!j.is_object()) return Bad("expected a JSON object at the top level");
  static const std::set<std::string> kKnown = {"name",   "shape", "hyper", "steps", "param0",
                                               "grads",  "params", "state", "state_shapes"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!kKnown.count(it.key())) return Bad(absl::StrCat("unknown key \"", it.key(), "\""));
  std::vector<std::string> required = {"shape", "hyper", "steps", "param0", "grads"};
  if (require_trajectory) {
    required.push_back("params");
    required.push_back("state");
  }
  for (const auto& k : required)
    if (!j.contains(k)) return Bad(absl::StrCat("missing key \"", k, "\""));

  GoldenCase c;
  if (j.contains("name")) {
    if (!j["name"].is_string()) return Bad("name: expected a string");
    c.name = j["name"].get<std::string>();
  }
  auto shape = Shape(j["shape"], "shape");
  if (!shape.ok()) return shape.status();
  c.shape = *shape;
  const int64_t numel = Numel(c.shape);
  if (absl::Status s = ParseHyper(j["hyper"], c.hyper); !s.ok()) return s;
  if (!j["steps"].is_number_integer() || j["steps"].get<int64_t>() < 1 ||
      j["steps"].get<int64_t>() > 1000000)
    return Bad("steps: expected a positive integer");
  c.steps = static_cast<int>(j["steps"].get<int64_t>());
  auto p0 = Numbers(j["param0"], "param0", numel);
  if (!p0.ok()) return p0.status();
  c.param0 = std::move(*p0);
  if (!j["grads"].is_array() || static_cast<int>(j["grads"].size()) != c.steps)
    return Bad(absl::StrCat("grads: expected ", c.steps, " gradients (one per step)"));
  for (int k = 0; k < c.steps; ++k) {
    auto g = Numbers(j["grads"][k], absl::StrCat("grads[", k, "]"), numel);
    if (!g.ok()) return g.status();
    c.grads.push_back(std::move(*g));
  }
  if (j.contains("params")) {
    if (!j["params"].is_array() || static_cast<int>(j["params"].size()) != c.steps)
      return Bad(absl::StrCat("params: expected ", c.steps, " parameter vectors (one per step)"));
    for (int k = 0; k < c.steps; ++k) {
      auto p = Numbers(j["params"][k], absl::StrCat("params[", k, "]"), numel);
      if (!p.ok()) return p.status();
      c.params.push_back(std::move(*p));
    }
  }
  const auto expected_shapes = StateShapes(c.shape);
  if (j.contains("state")) {
    const json& st = j["state"];
    if (!st.is_object()) return Bad("state: expected an object");
    for (auto it = st.begin(); it != st.end(); ++it) {
      auto e = expected_shapes.find(it.key());
      if (e == expected_shapes.end())
        return Bad(absl::StrCat("state: unknown tensor \"", it.key(), "\" for shape ",
                                ShapeString(c.shape)));
      auto v = Numbers(it.value(), absl::StrCat("state.", it.key()), Numel(e->second));
      if (!v.ok()) return v.status();
      c.state[it.key()] = std::move(*v);
    }
    for (const auto& [name, s] : expected_shapes)
      if (!c.state.count(name)) return Bad(absl::StrCat("state: missing tensor \"", name, "\""));
  }
  if (j.contains("state_shapes")) {
    const json& ss = j["state_shapes"];
    if (!ss.is_object()) return Bad("state_shapes: expected an object");
    for (auto it = ss.begin(); it != ss.end(); ++it) {
      auto e = expected_shapes.find(it.key());
      if (e == expected_shapes.end())
        return Bad(absl::StrCat("state_shapes: unknown tensor \"", it.key(), "\""));
      auto s = Shape(it.value(), absl::StrCat("state_shapes.", it.key()));
      if (!s.ok()) return s.status();
      if (*s != e->second)
        return Bad(absl::StrCat("state_shapes.", it.key(), ": expected ", ShapeString(e->second),
                                ", got ", ShapeString(*s)));
    }
  }
  c.state_shapes = expected_shapes;
  return c;
}

std::vector<std::string> ListGoldenCases(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))  // throws if `dir` is missing
    if (e.path().extension() == ".json") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

absl::StatusOr<GoldenCase> LoadGoldenCase(const std::string& path, bool require_trajectory) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto c = ParseGoldenCase(ss.str(), require_trajectory);
  if (!c.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", c.status().message()));
  return c;
}

std::string GoldenCaseToJson(const GoldenCase& c) {
  std::string out = "{\"name\": ";
  out += json(c.name).dump();
  out += ", \"shape\": ";
  AppendShape(out, c.shape);
  out += ", \"hyper\": {\"lr\": ";
  AppendDouble(out, c.hyper.lr);
  out += ", \"eps\": ";
  AppendArray(out, {c.hyper.eps1, c.hyper.eps2});
  out += ", \"clip_threshold\": ";
  AppendDouble(out, c.hyper.clip_threshold);
  out += ", \"betas\": ";
  AppendArray(out, {c.hyper.beta1, c.hyper.beta2, c.hyper.beta3});
  out += ", \"weight_decay\": ";
  AppendDouble(out, c.hyper.weight_decay);
  out += "}, \"steps\": " + std::to_string(c.steps) + ", \"param0\": ";
  AppendArray(out, c.param0);
  out += ", \"grads\": [";
  for (size_t k = 0; k < c.grads.size(); ++k) {
    if (k) out += ", ";
    AppendArray(out, c.grads[k]);
  }
  out += "], \"params\": [";
  for (size_t k = 0; k < c.params.size(); ++k) {
    if (k) out += ", ";
    AppendArray(out, c.params[k]);
  }
  out += "], \"state\": {";
  bool first = true;
  for (const auto& [name, v] : c.state) {
    if (!first) out += ", ";
    first = false;
    out += json(name).dump() + ": ";
    AppendArray(out, v);
  }
  out += "}, \"state_shapes\": {";
  first = true;
  for (const auto& [name, s] : c.state_shapes) {
    if (!first) out += ", ";
    first = false;
    out += json(name).dump() + ": ";
    AppendShape(out, s);
  }
  out += "}}\n";
  return out;
}

double ParamError(const std::vector<double>& got, const std::vector<double>& ref) {
  double max_ref = 0.0;
  for (double r : ref) max_ref = std::max(max_ref, std::fabs(r));
  double err = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double denom = std::max(std::fabs(ref[i]), 0.01 * max_ref);
    const double e = std::fabs(got[i] - ref[i]);
    const double rel = denom > 0 ? e / denom : (e == 0 ? 0.0 : INFINITY);
    if (!(rel <= err)) err = rel;  // NaN propagates
  }
  return err;
}

double StateError(const std::vector<double>& got, const std::vector<double>& ref) {
  double max_ref = 0.0, max_diff = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(ref[i]));
    const double d = std::fabs(got[i] - ref[i]);
    if (!(d <= max_diff)) max_diff = d;
  }
  if (max_ref == 0) return max_diff == 0 ? 0.0 : INFINITY;
  return max_diff / max_ref;
}

}  // namespace came
