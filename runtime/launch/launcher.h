// RunLaunch: one came-launch job on this machine. Starts the coordinator, waits for its
// "came-coordinator listening on 127.0.0.1:PORT" line, starts N came-rankd and waits for
// each "came-rankd rank R listening on 127.0.0.1:PORT", then starts N trainers with the
// CAME_* environment, and hands the job to a Supervisor (supervisor.h) until it ends.
// Every child's stdin is /dev/null; children run in process groups of their own, so a
// terminal's Ctrl-C reaches only the launcher, which forwards it.
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
