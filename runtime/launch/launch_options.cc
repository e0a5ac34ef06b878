#include "runtime/launch/launch_options.h"

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
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

// Accepts HOST:PORT with a non-empty host and a port in [1, 65535].
absl::Status CheckHostPort(absl::string_view flag, absl::string_view value) {
  const size_t colon = value.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(value.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " wants HOST:PORT with a port in [1, 65535], got '", value, "'"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string LaunchUsage() {
  return "usage: came-launch --nproc N [--backend gloo|nccl] [--gpus 0,1,...]\n"
         "                   [--metrics-port P] [--checkpoint-dir DIR]\n"
         "                   [--reduce-dtype param|float32]\n"
         "                   [--threads-per-rank T] [--token-file F] [--bin-dir DIR]\n"
         "                   [--log-dir DIR] [--timeout-seconds S]\n"
         "                   [--startup-timeout-seconds S] [--grace-seconds S]\n"
         "                   [--max-restarts K] [--checkpoint-every N] [--keep-checkpoints K]\n"
         "                   [--grace-period S] [--lease-seconds S]\n"
         "                   [--nnodes N --node-rank R --coordinator HOST:PORT\n"
         "                    --nproc-per-node P [--node-address ADDR]]\n"
         "                   -- <trainer command...>\n"
         "Starts came-coordinator, N came-rankd and N trainers on this machine, prefixes\n"
         "their output with [role rank], and stops them all when one fails or on SIGINT.\n"
         "Trainers get CAME_RANK, CAME_LOCAL_RANK, CAME_DEVICE (cuda:g or cpu),\n"
         "CAME_NODE_RANK, CAME_WORLD_SIZE,\n"
         "CAME_RANKD_ADDRESS, CAME_COORDINATOR_ADDRESS, CAME_TOKEN, CAME_RESTART_COUNT and a\n"
         "PYTHONPATH that finds the came package.\n"
         "--backend nccl (or --gpus; gloo is the default): one rankd (--device g) and one\n"
         "trainer (CAME_DEVICE=g) per GPU of --gpus, else per visible GPU (the first --nproc\n"
         "ones when --nproc is given); CUDA_VISIBLE_DEVICES is passed on unchanged.\n"
         "--max-restarts K: when a process fails, stop the rest and start the job again (from\n"
         "the last committed checkpoint: trainers use ShardedCAME(resume=True)), K times.\n"
         "SIGTERM with --checkpoint-dir: the job checkpoints at its next step, trainers exit\n"
         "(came.Preempted), and came-launch exits 0; after --grace-period S (30) it is killed.\n"
         "Multi-node: node 0 runs the coordinator on --coordinator HOST:PORT; every node runs\n"
         "P rankd and P trainers (global ranks R*P .. R*P+P-1) on --node-address; every node\n"
         "passes the same --token-file (and --checkpoint-dir on a shared file system).\n"
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
    if (flag == "--nproc" || flag == "--nproc-per-node") {
      status = ParseInt(flag, value, 1, kMaxProcs, &options.nproc);
      have_nproc = true;
    } else if (flag == "--nnodes") {
      status = ParseInt(flag, value, 1, kMaxNodes, &options.nnodes);
    } else if (flag == "--node-rank") {
      status = ParseInt(flag, value, 0, kMaxNodes - 1, &options.node_rank);
    } else if (flag == "--coordinator") {
      status = CheckHostPort(flag, value);
      options.coordinator = value;
    } else if (flag == "--node-address") {
      if (value.empty() || value.find_first_of(" :/") != std::string::npos) {
        status = absl::InvalidArgumentError(
            absl::StrCat("--node-address wants an IPv4 address or host name, got '", value, "'"));
      }
      options.node_address = value;
    } else if (flag == "--max-restarts") {
      status = ParseInt(flag, value, 0, 1000, &options.max_restarts);
    } else if (flag == "--checkpoint-every") {
      int every = 0;
      status = ParseInt(flag, value, 1, 1 << 30, &every);
      options.checkpoint_every = every;
    } else if (flag == "--keep-checkpoints") {
      status = ParseInt(flag, value, 1, 1 << 20, &options.keep_checkpoints);
    } else if (flag == "--grace-period") {
      status = ParseInt(flag, value, 1, 1 << 20, &options.grace_period_seconds);
    } else if (flag == "--lease-seconds") {
      status = ParseInt(flag, value, 1, 3600, &options.lease_seconds);
    } else if (flag == "--backend") {
      if (value != "gloo" && value != "nccl") {
        status = absl::InvalidArgumentError(
            absl::StrCat("--backend wants gloo or nccl, got '", value, "'"));
      }
      options.backend = value;
    } else if (flag == "--gpus") {
      options.gpus.clear();
      for (absl::string_view g : absl::StrSplit(value, ',')) {
        int ordinal = 0;
        status = ParseInt("--gpus", g, 0, kMaxProcs - 1, &ordinal);
        if (!status.ok()) break;
        options.gpus.push_back(ordinal);
      }
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
  // Under nccl the GPUs may set the rank count (ResolveDevices, gpus.h).
  if (!have_nproc && options.backend != "nccl" && options.gpus.empty())
    return absl::InvalidArgumentError("--nproc (or --nproc-per-node) is required");
  if (options.command.empty()) {
    return absl::InvalidArgumentError("no trainer command: put it after '--'");
  }
  if (options.node_rank >= options.nnodes) {
    return absl::InvalidArgumentError(absl::StrCat("--node-rank ", options.node_rank,
                                                   " is outside [0, --nnodes ", options.nnodes,
                                                   ")"));
  }
  if (static_cast<int64_t>(options.nnodes) * options.nproc > kMaxWorld) {
    return absl::InvalidArgumentError(
        absl::StrCat("--nnodes x --nproc-per-node is more than ", kMaxWorld, " ranks"));
  }
  if (options.nnodes > 1 && options.coordinator.empty()) {
    return absl::InvalidArgumentError(
        "a multi-node job (--nnodes > 1) needs --coordinator HOST:PORT (node 0 serves it)");
  }
  if (options.nnodes > 1 && options.token_file.empty()) {
    return absl::InvalidArgumentError(
        "a multi-node job (--nnodes > 1) needs --token-file, the same file on every node");
  }
  if ((options.checkpoint_every > 0 || options.keep_checkpoints > 0) &&
      options.checkpoint_dir.empty()) {
    return absl::InvalidArgumentError(
        "--checkpoint-every and --keep-checkpoints need --checkpoint-dir");
  }
  return options;
}

}  // namespace came::launch
