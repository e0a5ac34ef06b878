// RunLaunch: one came-launch job on this machine. Starts the coordinator, waits for its
// "came-coordinator listening on 127.0.0.1:PORT" line, starts N came-rankd and waits for
// each "came-rankd rank R listening on 127.0.0.1:PORT", then starts N trainers with the
// CAME_* environment, and hands the job to a Supervisor (supervisor.h) until it ends.
// Every child's stdin is /dev/null; children run in process groups of their own, so a
// terminal's Ctrl-C reaches only the launcher, which forwards it.
//
// Note [Restarts]
// With --max-restarts K, a job that fails (a process exits non-zero or dies, or does not
// get ready) is stopped as a whole (Note [Stopping the job] in supervisor.h) and started
// again, every process fresh, at most K times: attempt k runs its coordinator and rankd
// with --generation k (Note [Restart generations] in runtime/service/coordinator.h) and
// its trainers with CAME_RESTART_COUNT=k. The restarted coordinator finds the latest
// committed checkpoint in --checkpoint-dir, and a trainer built with
// ShardedCAME(resume=True) continues from it (from scratch when there is none). A job
// ended by a signal, by --timeout-seconds or by bad usage is not restarted. The job's
// timeout covers all attempts.
//
// Note [Preemption]
// With --checkpoint-dir, the first SIGTERM does not stop the job (Note [Stopping on
// request] in supervisor.h): node 0's launcher sends SIGUSR1 to its coordinator, which
// asks every rank to checkpoint after its next step and stop (Note [Stop requests] in
// coordinator.h); every trainer's next step raises came.Preempted (SystemExit 0), the
// trainers exit 0, and came-launch exits 0 once they all have, or 143 after
// --grace-period. Other nodes' launchers wait for their trainers the same way (a cluster
// signals every node; node 0 must be among them).
//
// Note [Multi-node jobs]
// --nnodes N --node-rank R --coordinator HOST:PORT --nproc-per-node P: node 0 runs the
// coordinator on HOST:PORT (world size N*P); every node runs P rankd, ranks R*P .. R*P+P-1
// (asked for explicitly: two nodes with one --node-rank get AlreadyExists), serving and
// connecting Gloo on --node-address, and their P trainers. The token comes from
// --token-file, the same file everywhere. Ranks retry Join until the coordinator of their
// generation answers, so nodes may start in any order. A failure on one node ends the job
// everywhere: the node's launcher stops its processes and the other ranks' next collective
// with them fails at once (the Gloo connections close); a node that dies outright (its
// launcher SIGKILLed: the guard takes its processes) also loses its ranks' leases, which
// fails the job at the coordinator within a lease. Each launcher reports the failure with
// its node and the rank. With --max-restarts every node restarts
// on its own, as attempt k + 1: node 0's new coordinator listens on the same HOST:PORT and
// admits only ranks of generation k + 1. Limits: every node must see every failure (a node
// whose trainers all finished does not restart), and a restart needs node 0 alive.
#pragma once

#include <string>
#include <vector>

#include "runtime/launch/launch_options.h"

namespace came::launch {

// Where the launcher runs: resolved by main from /proc/self/exe and the build's paths.
struct LaunchContext {
  std::string bin_dir;                   // holds came-coordinator and came-rankd
  std::vector<std::string> python_path;  // prepended to the trainers' PYTHONPATH
  int out_fd = 1;
  int err_fd = 2;
  int interrupt_fd = -1;  // SignalPipe::read_fd()
};

// Runs the job and returns the launcher's exit status (see LaunchUsage). Errors go to
// err_fd as one line "came-launch: ...".
int RunLaunch(const LaunchOptions& options, const LaunchContext& context);

}  // namespace came::launch
