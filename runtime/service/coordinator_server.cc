#include "runtime/service/coordinator_server.h"

#include <chrono>
#include <exception>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "prometheus/exposer.h"
#include "runtime/service/limits.h"

namespace came::service {
namespace {

// Splits "host:port" (or "[v6]:port") at the last colon.
absl::Status SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), port) ||
      *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "' is not host:port (port 0 picks a free one)"));
  }
  *host = address.substr(0, colon);
  return absl::OkStatus();
}

}  // namespace

CoordinatorServer::CoordinatorServer(Coordinator* core, absl::Duration poll_interval)
    : core_(core), poll_interval_(poll_interval), service_(core, &metrics_) {}

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Create(
    Coordinator* core, CoordinatorServerOptions options) {
  std::string host;
  int requested_port = 0;
  if (absl::Status s = SplitHostPort(options.listen, &host, &requested_port); !s.ok()) {
    return s;
  }
  auto server = std::unique_ptr<CoordinatorServer>(
      new CoordinatorServer(core, options.poll_interval));

  grpc::ServerBuilder builder;
  auto credentials =
      options.credentials ? options.credentials : grpc::InsecureServerCredentials();
  builder.AddListeningPort(options.listen, credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxCoordinatorRequestBytes));
  builder.SetMaxSendMessageSize(static_cast<int>(kMaxMessageBytes));
  builder.RegisterService(&server->service_);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  server->address_ = absl::StrCat(host, ":", server->port_);

  if (!options.metrics_listen.empty()) {
    std::string metrics_host;
    int metrics_port = 0;
    absl::Status s = SplitHostPort(options.metrics_listen, &metrics_host, &metrics_port);
    if (!s.ok()) {
      server->Shutdown(absl::ZeroDuration());
      return s;
    }
    try {
      server->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen);
      server->exposer_->RegisterCollectable(server->metrics_.registry());
      auto ports = server->exposer_->GetListeningPorts();
      server->metrics_port_ = ports.empty() ? metrics_port : ports.front();
    } catch (const std::exception& e) {
      server->Shutdown(absl::ZeroDuration());
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", options.metrics_listen, ": ", e.what()));
    }
  }
  server->poller_ = std::thread([s = server.get()] { s->PollLoop(); });
  return server;
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

void CoordinatorServer::PollLoop() {
  absl::Time next_metrics = absl::InfinitePast();
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.Unlock();
    core_->Poll();
    if (absl::Now() >= next_metrics) {
      metrics_.Update(core_->Status(), core_->lease());
      next_metrics = absl::Now() + absl::Seconds(1);
    }
    mu_.Lock();
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), poll_interval_);
  }
}

void CoordinatorServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    stopping_ = true;
  }
  if (poller_.joinable()) poller_.join();
  core_->Shutdown();
  if (server_ != nullptr) {
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    server_->Wait();
  }
  exposer_.reset();
}

}  // namespace came::service
