// What the binaries of the job (came-coordinator, came-rankd) share on their command lines:
// the token, TLS credentials from PEM files, and "--flag-name" spellings of absl flags.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace came::service {

// Returns a file's contents; NotFound when it cannot be read.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Returns the job's token from exactly one of `token` and `token_file` (whitespace stripped).
absl::StatusOr<std::string> ReadToken(const std::string& token, const std::string& token_file);

// Returns insecure credentials when all paths are empty, else TLS from the PEM files: a
// certificate and its key, and optionally a CA that client certificates must chain to.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFromFiles(
    const std::string& cert, const std::string& key, const std::string& ca);

// Returns insecure credentials when all paths are empty, else TLS trusting `ca` (empty: the
// system roots), with an optional client certificate and key.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFromFiles(
    const std::string& ca, const std::string& cert, const std::string& key);

// Returns the warning to print when a server listens on `listen` (host:port) without TLS on
// an address other than loopback (anyone on that network can then read the job's token and
// data), or "" when there is nothing to warn about.
std::string PlaintextListenWarning(const std::string& program, const std::string& listen, bool tls);

// Returns argv with "--flag-name" spelled "--flag_name" (absl's spelling), so both work;
// arguments after "--" are left alone.
std::vector<std::string> NormalizeFlagNames(int argc, char** argv);

// The main() of a job binary: sets the usage text, parses the absl flags (either spelling),
// turns on the standard gRPC health service (grpc.health.v1.Health answers SERVING once a
// server of the binary has started: what Kubernetes' grpc probes ask), runs `run`, and on
// failure prints "<program>: <message> [<CODE>]" on stderr and returns 1.
int RunMain(int argc, char** argv, const char* program, const char* usage,
            absl::Status (*run)());

}  // namespace came::service
