#include "runtime/launch/launch_options.h"

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace came::launch {
namespace {

absl::Status ParseInt(absl::string_view flag, absl::string_view value, int min, int max, int* out) {
  int parsed = 0;
  if (!absl::SimpleAtoi(value, &parsed) || parsed < min || parsed > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " wants an integer in [", min, ", ", max, "], got '", value, "'"));
  }
  *out = parsed;
  return absl::OkStatus();
}

}  // namespace

std::string LaunchUsage() {
  return "usage: came-launch --nproc N [--backend gloo|nccl] [--metrics-port P] [--checkpoint-dir DIR]\n"
         "                   [--reduce-dtype param|float32]\n"
         "                   [--threads-per-rank T] [--token-file F] [--bin-dir DIR]\n"
         "                   [--log-dir DIR] [--timeout-seconds S]\n"
         "                   [--startup-timeout-seconds S] [--grace-seconds S]\n"
         "                   -- <trainer command...>\n"
         "Starts came-coordinator, N came-rankd and N trainers on this machine, prefixes\n"
         "their output with [role rank], and stops them all when one fails or on\n"
         "SIGINT/SIGTERM. Trainers get CAME_RANK, CAME_WORLD_SIZE, CAME_RANKD_ADDRESS,\n"
         "CAME_COORDINATOR_ADDRESS, CAME_TOKEN and a PYTHONPATH that finds the came package.\n"
         "Exit status: 0 when every trainer exits 0; 1 when a process fails; 2 for bad\n"
         "arguments or a command that cannot run; 124 on --timeout-seconds; 128+n on\n"
         "signal n.\n";
}

absl::StatusOr<LaunchOptions> ParseLaunchArgs(const std::vector<std::string>& args) {
  LaunchOptions options;
  bool have_nproc = false;
  size_t i = 0;
  for (; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "--help" || arg == "-h") {
      options.help = true;
      continue;
    }
    if (arg.substr(0, 2) != "--") {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "'; the trainer command goes after '--'"));
    }
    absl::string_view flag = arg;
    std::string value;
    if (const size_t eq = arg.find('='); eq != absl::string_view::npos) {
      flag = arg.substr(0, eq);
      value = std::string(arg.substr(eq + 1));
    } else {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(flag, " needs a value"));
      }
      value = args[++i];
    }
    absl::Status status;
    if (flag == "--nproc") {
      status = ParseInt(flag, value, 1, kMaxProcs, &options.nproc);
      have_nproc = true;
    } else if (flag == "--backend") {
      if (value != "gloo" && value != "nccl") {
        status = absl::InvalidArgumentError(
            absl::StrCat("--backend wants gloo or nccl, got '", value, "'"));
      }
      options.backend = value;
    } else if (flag == "--checkpoint-dir") {
      options.checkpoint_dir = value;
    } else if (flag == "--reduce-dtype") {
      if (value != "param" && value != "float32") {
        status = absl::InvalidArgumentError(
            absl::StrCat("--reduce-dtype wants param or float32, got '", value, "'"));
      }
      options.reduce_in_float32 = value == "float32";
    } else if (flag == "--metrics-port") {
      status = ParseInt(flag, value, 0, 65535 - kMaxProcs - 1, &options.metrics_port);
    } else if (flag == "--threads-per-rank") {
      status = ParseInt(flag, value, 1, 4096, &options.threads_per_rank);
    } else if (flag == "--timeout-seconds") {
      status = ParseInt(flag, value, 1, 1 << 30, &options.timeout_seconds);
    } else if (flag == "--startup-timeout-seconds") {
      status = ParseInt(flag, value, 1, 1 << 30, &options.startup_timeout_seconds);
    } else if (flag == "--grace-seconds") {
      status = ParseInt(flag, value, 0, 1 << 30, &options.grace_seconds);
    } else if (flag == "--token-file" || flag == "--bin-dir" || flag == "--log-dir") {
      if (value.empty()) status = absl::InvalidArgumentError(absl::StrCat(flag, " is empty"));
      (flag == "--token-file" ? options.token_file
       : flag == "--bin-dir"  ? options.bin_dir
                              : options.log_dir) = value;
    } else {
      status = absl::InvalidArgumentError(absl::StrCat("unknown flag ", flag));
    }
    if (!status.ok()) return status;
  }
  options.command.assign(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
  if (options.help) return options;
  if (!have_nproc) return absl::InvalidArgumentError("--nproc is required");
  if (options.command.empty()) {
    return absl::InvalidArgumentError("no trainer command: put it after '--'");
  }
  return options;
}

}  // namespace came::launch
