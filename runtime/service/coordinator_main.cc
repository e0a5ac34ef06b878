// came-coordinator: the job's coordinator (docs/design.md, "Processes"). Serves
// came.v1.Coordinator on --listen and, with --metrics-port, Prometheus metrics on the same
// host. Prints one line "came-coordinator listening on HOST:PORT" on stdout once serving,
// so launchers can read the bound port. Stops cleanly on SIGINT or SIGTERM. SIGUSR1 asks
// the job to checkpoint at its next step and stop (Note [Stop requests] in coordinator.h):
// came-launch sends it when it is itself asked to stop with SIGTERM.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/server_credentials.h"
#include "runtime/service/cli_common.h"
#include "runtime/service/coordinator.h"
#include "runtime/service/coordinator_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "host:port to serve on (port 0: a free port)");
ABSL_FLAG(int, world_size, 0, "number of ranks in the job (required)");
ABSL_FLAG(std::string, token, "", "the job's shared secret (or --token-file)");
ABSL_FLAG(std::string, token_file, "", "a file holding the shared secret");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (TLS on when set)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA: when set, clients must present a certificate it signed");
ABSL_FLAG(double, lease_seconds, 10.0, "heartbeat lease; a rank silent this long fails the job");
ABSL_FLAG(int, metrics_port, 0, "port of /metrics on the --listen host (0: off)");
ABSL_FLAG(std::string, checkpoint_dir, "", "root folder of checkpoints (empty: off)");
ABSL_FLAG(std::string, backend, "gloo", "collective backend of the ranks: gloo or nccl");
ABSL_FLAG(int64_t, plan_alignment, 16, "shard-plan alignment in elements (every rank follows it)");
ABSL_FLAG(std::string, job_id, "", "the job's id (empty: random)");
ABSL_FLAG(int64_t, generation, 0,
          "the job's restart count; only ranks of this generation may join");
ABSL_FLAG(int64_t, checkpoint_every, 0,
          "every rank saves a checkpoint after every N-th step by itself (0: off)");
ABSL_FLAG(int, keep_checkpoints, 0,
          "keep only the newest K committed checkpoints (0: keep all)");

namespace came::service {
namespace {

// Set by the signal handler (only a sig_atomic_t store is async-signal-safe); the main
// thread polls it.
volatile std::sig_atomic_t g_signalled = 0;
volatile std::sig_atomic_t g_stop_requested = 0;

void RecordSignal(int) { g_signalled = 1; }
void RecordStopRequest(int) { g_stop_requested = 1; }

absl::Status Run() {
  CoordinatorOptions options;
  options.world_size = absl::GetFlag(FLAGS_world_size);
  absl::StatusOr<std::string> token =
      ReadToken(absl::GetFlag(FLAGS_token), absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) return token.status();
  options.token = *token;
  options.job_id = absl::GetFlag(FLAGS_job_id);
  const double lease = absl::GetFlag(FLAGS_lease_seconds);
  if (!(lease > 0)) return absl::InvalidArgumentError("--lease-seconds must be > 0");
  options.config.lease = absl::Seconds(lease);
  options.config.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  options.config.plan_alignment = absl::GetFlag(FLAGS_plan_alignment);
  options.generation = absl::GetFlag(FLAGS_generation);
  options.config.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
  options.keep_checkpoints = absl::GetFlag(FLAGS_keep_checkpoints);
  if ((options.config.checkpoint_every > 0 || options.keep_checkpoints > 0) &&
      options.config.checkpoint_dir.empty()) {
    return absl::InvalidArgumentError(
        "--checkpoint-every and --keep-checkpoints need --checkpoint-dir");
  }
  absl::StatusOr<Backend> backend = ParseBackend(absl::GetFlag(FLAGS_backend));
  if (!backend.ok()) return backend.status();
  options.config.backend = *backend;
  absl::StatusOr<std::unique_ptr<Coordinator>> core = Coordinator::Create(options);
  if (!core.ok()) return core.status();

  CoordinatorServerOptions server_options;
  server_options.listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = ServerCredentialsFromFiles(
      absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_ca));
  if (!credentials.ok()) return credentials.status();
  server_options.credentials = *credentials;
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port < 0 || metrics_port > 65535) {
    return absl::InvalidArgumentError("--metrics-port must be in [0, 65535]");
  }
  if (metrics_port != 0) {
    const std::string& listen = server_options.listen;
    server_options.metrics_listen =
        absl::StrCat(listen.substr(0, listen.rfind(':')), ":", metrics_port);
  }

  std::signal(SIGINT, RecordSignal);
  std::signal(SIGTERM, RecordSignal);
  std::signal(SIGUSR1, RecordStopRequest);
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server =
      CoordinatorServer::Create(core->get(), server_options);
  if (!server.ok()) return server.status();
  if (const std::string w = PlaintextListenWarning("came-coordinator", server_options.listen,
                                                   !absl::GetFlag(FLAGS_tls_cert).empty());
      !w.empty())
    std::cerr << w << std::endl;
  std::cout << "came-coordinator listening on " << (*server)->address() << std::endl;
  if ((*server)->metrics_port() != 0) {
    std::cerr << "came-coordinator: metrics on port " << (*server)->metrics_port() << "/metrics"
              << std::endl;
  }
  while (g_signalled == 0) {
    absl::SleepFor(absl::Milliseconds(50));
    if (g_stop_requested != 0) {
      g_stop_requested = 0;
      const absl::Status s = (*core)->RequestStop();
      std::cerr << "came-coordinator: asked to stop at the next step: "
                << (s.ok() ? "every rank will checkpoint and stop" : s.ToString()) << std::endl;
    }
  }
  std::cerr << "came-coordinator: signal received, shutting down" << std::endl;
  (*server)->Shutdown();
  return absl::OkStatus();
}

}  // namespace
}  // namespace came::service

int main(int argc, char** argv) {
  return came::service::RunMain(
      argc, argv, "came-coordinator",
      "came-coordinator --world-size=N --token=SECRET [--listen=HOST:PORT] [flags]",
      &came::service::Run);
}
