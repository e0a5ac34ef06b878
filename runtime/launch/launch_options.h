// The command line of came-launch, parsed into LaunchOptions (no globals, no absl flags:
// everything after "--" belongs to the trainer and is kept as is).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace came::launch {

struct LaunchOptions {
  int nproc = 0;                     // --nproc N or --nproc-per-node N: ranks on this
                                     // machine, 1 .. kMaxProcs; required unless --backend
                                     // nccl or --gpus (one rank per GPU)
  std::string backend;               // --backend gloo|nccl; "" = nccl when a GPU is visible,
                                     // else gloo (Note [Launch devices] in gpus.h)
  std::vector<int> gpus;             // --gpus 0,1,...: one rank per listed GPU (nccl)
  int metrics_port = -1;             // --metrics-port P: the coordinator's /metrics on P and
                                     // rank r's on P + 1 + r; -1 = not passed
  int threads_per_rank = 0;          // --threads-per-rank T; 0 = cores / N, at least 1
  std::string token_file;            // --token-file F; "" = a fresh random token
  std::string bin_dir;               // --bin-dir DIR; "" = the launcher's own folder
  std::string log_dir;               // --log-dir DIR; "" = no log files
  std::string checkpoint_dir;        // --checkpoint-dir DIR for the coordinator; "" = off
  bool reduce_in_float32 = false;    // --reduce-dtype float32 (bf16/fp16 gradients reduced
                                     // in float32); --reduce-dtype param (the default): in
                                     // their own dtype
  int timeout_seconds = 0;           // --timeout-seconds S; 0 = no job deadline
  int startup_timeout_seconds = 60;  // --startup-timeout-seconds S: for each daemon's
                                     // "listening on" line
  int grace_seconds = 10;            // --grace-seconds S: stop signal to SIGKILL
  // Restarts and preemption (Note [Restarts] in launcher.h).
  int max_restarts = 0;              // --max-restarts K: restart a failed job up to K times
  int64_t checkpoint_every = 0;      // --checkpoint-every N: save after every N-th step
  int keep_checkpoints = 0;          // --keep-checkpoints K: keep the newest K (0: all)
  int grace_period_seconds = 30;     // --grace-period S: after SIGTERM, time to checkpoint
                                     // and exit before the job is killed
  int lease_seconds = 0;             // --lease-seconds S for the coordinator; 0: its default
  // Several machines (Note [Multi-node jobs] in launcher.h).
  int nnodes = 1;                    // --nnodes N
  int node_rank = 0;                 // --node-rank R, 0 .. N-1
  std::string coordinator;           // --coordinator HOST:PORT; "" (one node only) =
                                     // 127.0.0.1 and a free port
  std::string node_address;          // --node-address ADDR this machine's rankd listen on;
                                     // "" = 127.0.0.1 on one node, else the address that
                                     // reaches the coordinator
  std::vector<std::string> command;  // the trainer command, after "--"
  bool help = false;                 // --help
};

inline constexpr int kMaxProcs = 1024;
inline constexpr int kMaxNodes = 1024;
inline constexpr int kMaxWorld = 65536;  // the coordinator's kMaxWorldSize

// Parses the arguments after argv[0]. Flags take "--flag value" or "--flag=value".
// InvalidArgument naming the flag for unknown flags, missing or malformed values, a
// missing --nproc or trainer command (unless --help), and flags that do not fit together
// (a multi-node job without --coordinator or --token-file, --checkpoint-every without
// --checkpoint-dir, ...).
absl::StatusOr<LaunchOptions> ParseLaunchArgs(const std::vector<std::string>& args);

// Returns the usage text printed by --help.
std::string LaunchUsage();

}  // namespace came::launch
