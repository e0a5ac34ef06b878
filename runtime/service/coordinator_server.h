// CoordinatorServer: serves a Coordinator over gRPC (CoordinatorService) and, optionally,
// its Prometheus metrics over HTTP; drives the core's Poll from its own thread (Note
// [Waits without threads] in coordinator.h). The core is not owned and must outlive the
// server. Shutdown is thread-safe and idempotent; the destructor shuts down.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "runtime/service/coordinator.h"
#include "runtime/service/coordinator_metrics.h"
#include "runtime/service/coordinator_service.h"

namespace prometheus {
class Exposer;
}

namespace came::service {

struct CoordinatorServerOptions {
  std::string listen = "127.0.0.1:0";  // host:port; port 0 picks a free port
  std::shared_ptr<grpc::ServerCredentials> credentials;  // null: insecure
  std::string metrics_listen;  // host:port of /metrics ("" = off; port 0 picks one)
  absl::Duration poll_interval = absl::Milliseconds(5);  // how often deadlines are checked
};

class CoordinatorServer {
 public:
  // Binds and starts serving. InvalidArgument or Unavailable when an address cannot be bound.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Create(
      Coordinator* core, CoordinatorServerOptions options);
  ~CoordinatorServer();

  int port() const { return port_; }
  // Returns "host:port" as bound.
  const std::string& address() const { return address_; }
  // Returns the bound metrics port, or 0 when metrics are off.
  int metrics_port() const { return metrics_port_; }
  CoordinatorMetrics& metrics() { return metrics_; }

  // Completes every wait (Unavailable), then stops accepting calls and waits up to `grace`
  // for calls in flight.
  void Shutdown(absl::Duration grace = absl::Seconds(2));

 private:
  CoordinatorServer(Coordinator* core, absl::Duration poll_interval);
  void PollLoop();

  Coordinator* const core_;
  const absl::Duration poll_interval_;
  CoordinatorMetrics metrics_;
  CoordinatorService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  std::string address_;
  int metrics_port_ = 0;
  std::thread poller_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace came::service
