#include "runtime/service/cli_common.h"

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/health_check_service_interface.h"

namespace came::service {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::string> ReadToken(const std::string& token, const std::string& token_file) {
  if (!token.empty() && !token_file.empty())
    return absl::InvalidArgumentError("give --token or --token-file, not both");
  if (!token_file.empty()) {
    absl::StatusOr<std::string> contents = ReadFile(token_file);
    if (!contents.ok()) return contents.status();
    std::string t(absl::StripAsciiWhitespace(*contents));
    if (t.empty()) return absl::InvalidArgumentError(absl::StrCat(token_file, " is empty"));
    return t;
  }
  if (token.empty()) return absl::InvalidArgumentError("--token or --token-file is required");
  return token;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFromFiles(
    const std::string& cert, const std::string& key, const std::string& ca) {
  if (cert.empty() && key.empty() && ca.empty()) return grpc::InsecureServerCredentials();
  if (cert.empty() || key.empty())
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  grpc::SslServerCredentialsOptions options;
  absl::StatusOr<std::string> cert_pem = ReadFile(cert);
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(key);
  if (!key_pem.ok()) return key_pem.status();
  options.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
  if (!ca.empty()) {
    absl::StatusOr<std::string> ca_pem = ReadFile(ca);
    if (!ca_pem.ok()) return ca_pem.status();
    options.pem_root_certs = *ca_pem;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFromFiles(
    const std::string& ca, const std::string& cert, const std::string& key) {
  if (ca.empty() && cert.empty() && key.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  if (!ca.empty()) {
    absl::StatusOr<std::string> pem = ReadFile(ca);
    if (!pem.ok()) return pem.status();
    options.pem_root_certs = *pem;
  }
  if (cert.empty() != key.empty())
    return absl::InvalidArgumentError("a client certificate needs both its cert and key files");
  if (!cert.empty()) {
    absl::StatusOr<std::string> c = ReadFile(cert);
    if (!c.ok()) return c.status();
    absl::StatusOr<std::string> k = ReadFile(key);
    if (!k.ok()) return k.status();
    options.pem_cert_chain = *c;
    options.pem_private_key = *k;
  }
  return grpc::SslCredentials(options);
}

std::string PlaintextListenWarning(const std::string& program, const std::string& listen, bool tls) {
  if (tls) return "";
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0) return "";
  return absl::StrCat(program, ": warning: listening on ", listen,
                      " without TLS: the job's token and data cross the network in the clear; "
                      "use --tls-cert/--tls-key or listen on 127.0.0.1");
}

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

int RunMain(int argc, char** argv, const char* program, const char* usage,
            absl::Status (*run)()) {
  absl::SetProgramUsageMessage(absl::StrCat(
      usage, "\nFlags may be spelled --flag-name or --flag_name."));
  std::vector<std::string> args = NormalizeFlagNames(argc, argv);
  std::vector<char*> ptrs;
  for (std::string& a : args) ptrs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(ptrs.size()), ptrs.data());
  // Before any server is built: every server of the binary answers grpc.health.v1.Health.
  grpc::EnableDefaultHealthCheckService(true);
  const absl::Status status = run();
  if (status.ok()) return 0;
  std::cerr << program << ": " << status.message() << " ["
            << absl::StatusCodeToString(status.code()) << "]" << std::endl;
  return 1;
}

}  // namespace came::service
