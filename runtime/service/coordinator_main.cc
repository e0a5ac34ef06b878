// came-coordinator: the job's coordinator (DESIGN.md, "Processes"). Serves
// came.v1.Coordinator on --listen and, with --metrics-port, Prometheus metrics on the same
// host. Prints one line "came-coordinator listening on HOST:PORT" on stdout once serving,
// so launchers can read the bound port. Stops cleanly on SIGINT or SIGTERM.
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
ABSL_FLAG(int64_t, plan_alignment, 1, "shard-plan alignment in elements");
ABSL_FLAG(std::string, job_id, "", "the job's id (empty: random)");

namespace came::service {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::string> Token() {
  const std::string token = absl::GetFlag(FLAGS_token);
  const std::string file = absl::GetFlag(FLAGS_token_file);
  if (!token.empty() && !file.empty()) {
    return absl::InvalidArgumentError("give --token or --token-file, not both");
  }
  if (!file.empty()) {
    absl::StatusOr<std::string> contents = ReadFile(file);
    if (!contents.ok()) return contents.status();
    return std::string(absl::StripAsciiWhitespace(*contents));
  }
  if (token.empty()) return absl::InvalidArgumentError("--token or --token-file is required");
  return token;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials() {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_tls_key);
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  if (cert.empty() && key.empty() && ca.empty()) return grpc::InsecureServerCredentials();
  if (cert.empty() || key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  grpc::SslServerCredentialsOptions options;
  absl::StatusOr<std::string> cert_pem = ReadFile(cert);
  absl::StatusOr<std::string> key_pem = ReadFile(key);
  if (!cert_pem.ok()) return cert_pem.status();
  if (!key_pem.ok()) return key_pem.status();
  options.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
  if (!ca.empty()) {
    absl::StatusOr<std::string> ca_pem = ReadFile(ca);
    if (!ca_pem.ok()) return ca_pem.status();
    options.pem_root_certs = *ca_pem;
    options.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

// Set by the signal handler (only a sig_atomic_t store is async-signal-safe); the main
// thread polls it.
volatile std::sig_atomic_t g_signalled = 0;

void RecordSignal(int) { g_signalled = 1; }

absl::Status Run() {
  CoordinatorOptions options;
  options.world_size = absl::GetFlag(FLAGS_world_size);
  absl::StatusOr<std::string> token = Token();
  if (!token.ok()) return token.status();
  options.token = *token;
  options.job_id = absl::GetFlag(FLAGS_job_id);
  const double lease = absl::GetFlag(FLAGS_lease_seconds);
  if (!(lease > 0)) return absl::InvalidArgumentError("--lease-seconds must be > 0");
  options.config.lease = absl::Seconds(lease);
  options.config.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  options.config.plan_alignment = absl::GetFlag(FLAGS_plan_alignment);
  absl::StatusOr<Backend> backend = ParseBackend(absl::GetFlag(FLAGS_backend));
  if (!backend.ok()) return backend.status();
  options.config.backend = *backend;
  absl::StatusOr<std::unique_ptr<Coordinator>> core = Coordinator::Create(options);
  if (!core.ok()) return core.status();

  CoordinatorServerOptions server_options;
  server_options.listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = Credentials();
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
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server =
      CoordinatorServer::Create(core->get(), server_options);
  if (!server.ok()) return server.status();
  std::cout << "came-coordinator listening on " << (*server)->address() << std::endl;
  if ((*server)->metrics_port() != 0) {
    std::cerr << "came-coordinator: metrics on port " << (*server)->metrics_port() << "/metrics"
              << std::endl;
  }
  while (g_signalled == 0) absl::SleepFor(absl::Milliseconds(50));
  std::cerr << "came-coordinator: signal received, shutting down" << std::endl;
  (*server)->Shutdown();
  return absl::OkStatus();
}

}  // namespace
}  // namespace came::service

// Returns argv with "--flag-name" spelled "--flag_name" (absl's spelling), so both work.
std::vector<std::string> NormalizeFlagNames(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    const size_t end = std::min(a.find('='), a.size());
    std::replace(a.begin() + 2, a.begin() + end, '-', '_');
  }
  return args;
}

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "came-coordinator --world-size=N --token=SECRET [--listen=HOST:PORT] [flags]\n"
      "Flags may be spelled --world-size or --world_size.");
  std::vector<std::string> args = NormalizeFlagNames(argc, argv);
  std::vector<char*> arg_ptrs;
  for (std::string& a : args) arg_ptrs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(arg_ptrs.size()), arg_ptrs.data());
  absl::Status status = came::service::Run();
  if (!status.ok()) {
    std::cerr << "came-coordinator: " << status << std::endl;
    return 1;
  }
  return 0;
}
