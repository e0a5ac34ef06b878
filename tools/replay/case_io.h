// Golden cases: a parameter tensor's CAME trajectory in the JSON format of
// tests/data/golden/README.md (reading, validating, writing), and the README's error
// criteria for comparing a produced trajectory with a stored one.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/came_math.h"

namespace came {

struct GoldenCase {
  std::string name;
  std::vector<int64_t> shape;
  CameHyper hyper;
  int steps = 0;
  std::vector<double> param0;
  std::vector<std::vector<double>> grads;   // steps x numel
  std::vector<std::vector<double>> params;  // steps x numel: after each step
  std::map<std::string, std::vector<double>> state;          // after the last step
  std::map<std::string, std::vector<int64_t>> state_shapes;
};

// Parses and validates a case: every key known and of the right type, lengths consistent
// with the shape, every number finite. `require_trajectory` = false accepts a case without
// `params` and `state` (inputs only). Errors are InvalidArgument with a one-line message.
absl::StatusOr<GoldenCase> ParseGoldenCase(std::string_view json_text,
                                           bool require_trajectory = true);

// Reads and parses a case file (NotFound when it cannot be read).
// Returns the paths of the golden cases (*.json) in `dir`, sorted; throws
// std::filesystem::filesystem_error if `dir` does not exist, so a test run from the wrong
// folder fails instead of finding no case.
std::vector<std::string> ListGoldenCases(const std::string& dir = "tests/data/golden");

absl::StatusOr<GoldenCase> LoadGoldenCase(const std::string& path, bool require_trajectory = true);

// Returns the case as JSON, every double written as its shortest round-trip decimal.
std::string GoldenCaseToJson(const GoldenCase& c);

// Returns the state tensor names and shapes CAME keeps for a parameter of this shape.
std::map<std::string, std::vector<int64_t>> StateShapes(const std::vector<int64_t>& shape);

// The README's parameter criterion: max over elements of
// |p - p_ref| / max(|p_ref|, 0.01 * max|p_ref|).
double ParamError(const std::vector<double>& got, const std::vector<double>& ref);

// The README's state criterion: max|s - s_ref| / max|s_ref|.
double StateError(const std::vector<double>& got, const std::vector<double>& ref);

// The README's tolerances.
inline constexpr double kFloat32ParamTolerance = 5e-5;
inline constexpr double kFloat32StateTolerance = 1e-5;
inline constexpr double kFloat64Tolerance = 1e-10;

}  // namespace came
