// came-rankd: one rank of a job (docs/design.md, "Processes"). Joins the coordinator, connects to
// the other ranks (Gloo, or NCCL on --device, through the coordinator's store), hosts the
// ShardedCame engine and
// serves came.v1.Rank to its trainer. Prints one line "came-rankd rank R listening on
// HOST:PORT" on stdout once serving. Stops on SIGINT/SIGTERM (exit 0) or when the job fails
// (the coordinator reports another rank's death, or a collective fails): then it aborts its
// collectives, answers every pending call with the reason and exits 1 naming it. Exits 2
// for a --device this build or machine cannot serve (no CUDA support, no device).
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/server_builder.h"
#include "prometheus/exposer.h"
#include "runtime/comm/backend.h"
#include "runtime/comm/prefix_store.h"
#include "runtime/rankd/rank_core.h"
#include "runtime/rankd/rank_metrics.h"
#include "runtime/rankd/rank_service.h"
#include "runtime/service/cli_common.h"
#include "runtime/service/coordinator_client.h"
#include "runtime/service/coordinator_store.h"
#include "runtime/service/limits.h"
#include "runtime/service/stop_request.h"

ABSL_FLAG(std::string, coordinator, "", "host:port of came-coordinator (required)");
ABSL_FLAG(std::string, token, "", "the job's shared secret (or --token-file)");
ABSL_FLAG(std::string, token_file, "", "a file holding the shared secret");
ABSL_FLAG(int, rank, -1, "the rank to take (-1: the lowest free one)");
ABSL_FLAG(int, world_size, 0, "the job's world size (0: the coordinator's)");
ABSL_FLAG(std::string, listen, "127.0.0.1:0", "host:port to serve the trainer on (port 0: free)");
ABSL_FLAG(std::string, gloo_host, "127.0.0.1", "address Gloo binds and advertises to peers");
ABSL_FLAG(int, threads, 1, "CPU kernel threads");
ABSL_FLAG(int, device, -1,
          "CUDA device for the parameter and gradient buffers, handed to the trainer as CUDA "
          "IPC handles; needs a job of backend nccl (-1: host shared memory, backend gloo)");
ABSL_FLAG(bool, reduce_in_float32, false,
          "reduce-scatter bf16/fp16 gradients in float32 (exact mean at any world size; twice "
          "the wire bytes and a float32 copy of the gradients)");
ABSL_FLAG(double, collective_timeout_seconds, 300, "deadline of every collective");
ABSL_FLAG(int, metrics_port, 0, "port of /metrics on the --listen host (0: off)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate to serve the trainer with (TLS on)");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA trainers' client certificates must chain to");
ABSL_FLAG(std::string, coordinator_ca, "", "PEM CA of the coordinator's certificate (TLS on)");
ABSL_FLAG(std::string, coordinator_cert, "",
          "PEM client certificate presented to a coordinator that requires one (mTLS)");
ABSL_FLAG(std::string, coordinator_key, "", "PEM key of --coordinator-cert");
ABSL_FLAG(int64_t, generation, 0,
          "the job's restart count (Note [Restart generations] in coordinator.h)");
ABSL_FLAG(double, join_timeout_seconds, 60,
          "how long to retry Join while the coordinator is unreachable or of another generation");
ABSL_FLAG(std::string, shm_tag, "",
          "names the shared memory /came-<tag>-r<rank>-... (empty: the job id)");

namespace came::rankd {
namespace {

using service::CoordinatorClient;

bool usage_error = false;  // Run's failure is bad usage: exit 2

absl::Status Run() {
  const int device = absl::GetFlag(FLAGS_device);
  if (device >= 0) {
    if (absl::Status s = CheckDevice(device); !s.ok()) {
      usage_error = true;
      return absl::Status(s.code(), absl::StrCat("--device ", device, ": ", s.message()));
    }
  } else if (device != -1) {
    usage_error = true;
    return absl::InvalidArgumentError("--device must be a CUDA device ordinal >= 0, or -1");
  }
  absl::StatusOr<std::string> token =
      service::ReadToken(absl::GetFlag(FLAGS_token), absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) return token.status();
  if (absl::GetFlag(FLAGS_coordinator).empty())
    return absl::InvalidArgumentError("--coordinator is required");
  const int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 1 || threads > 1024) return absl::InvalidArgumentError("--threads must be in [1, 1024]");

  // Signals are taken by one thread (sigwait), so every other thread starts with them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  service::CoordinatorClientOptions co;
  co.target = absl::GetFlag(FLAGS_coordinator);
  co.token = *token;
  auto creds = service::ChannelCredentialsFromFiles(absl::GetFlag(FLAGS_coordinator_ca),
                                                    absl::GetFlag(FLAGS_coordinator_cert),
                                                    absl::GetFlag(FLAGS_coordinator_key));
  if (!creds.ok()) return creds.status();
  co.credentials = *creds;
  auto client_or = CoordinatorClient::Create(co);
  if (!client_or.ok()) return client_or.status();
  std::shared_ptr<CoordinatorClient> client = *std::move(client_or);

  service::JoinRequest join;
  join.requested_rank = absl::GetFlag(FLAGS_rank);
  join.world_size = absl::GetFlag(FLAGS_world_size);
  join.host = absl::GetFlag(FLAGS_gloo_host);
  join.generation = absl::GetFlag(FLAGS_generation);
  // The coordinator may not listen yet (another node starts it), or may still be the one of
  // the previous generation (Unavailable): retried until the join deadline.
  const absl::Time join_deadline =
      absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_join_timeout_seconds));
  // A coordinator shutting down cancels the call: retried as well.
  auto retry = [](const absl::Status& s) {
    return absl::IsUnavailable(s) || absl::IsCancelled(s) || absl::IsDeadlineExceeded(s);
  };
  auto joined = client->Join(join);
  while (!joined.ok() && retry(joined.status()) && absl::Now() < join_deadline) {
    absl::SleepFor(absl::Milliseconds(200));
    joined = client->Join(join);
  }
  if (!joined.ok()) return joined.status();
  const int rank = joined->rank, world = joined->world_size;
  std::cerr << "came-rankd: joined job " << joined->job_id << " as rank " << rank << " of "
            << world << std::endl;
  // The job's configuration comes from the coordinator alone (one configuration).
  // Gloo moves host memory and NCCL device memory: the buffers' place decides.
  const bool nccl = joined->config.backend == service::Backend::kNccl;
  if (nccl && device < 0)
    return absl::FailedPreconditionError(
        "the job's backend is nccl, which needs the buffers on a GPU: start came-rankd with "
        "--device N (or the coordinator with --backend gloo)");
  if (!nccl && device >= 0)
    return absl::FailedPreconditionError(absl::StrCat(
        "--device ", device, " puts the buffers on a GPU, but the job's backend is ",
        std::string(service::BackendName(joined->config.backend)),
        ", which moves host memory: start the coordinator with --backend nccl"));

  // Heartbeats start at once: the lease runs from Join, and the Gloo rendezvous below may
  // wait for ranks of other nodes for longer than a lease. Until the engine exists, a job
  // failure only records the stop (the rendezvous's store waits fail with the job).
  service::StopRequest stop;  // a job failure (heartbeat thread) or a signal: the first wins
  std::atomic<RankCore*> live_core{nullptr};
  std::atomic<bool> asked_to_stop{false};
  std::unique_ptr<service::HeartbeatThread> heartbeat = std::make_unique<service::HeartbeatThread>(
      client.get(), rank, joined->config.lease / 3, joined->config.lease,
      [&](absl::Status reason) {
        if (RankCore* c = live_core.load()) c->Abort(reason);
        stop.Request(reason);
      },
      [&] {
        std::cerr << "came-rankd rank " << rank
                  << ": the job was asked to stop; checkpointing after the next step" << std::endl;
        asked_to_stop = true;
        if (RankCore* c = live_core.load()) c->RequestStop();
      });

  // Connect to the other ranks through the coordinator's store.
  service::CoordinatorStore coordinator_store(client);
  auto store = comm::PrefixStore::Create(absl::StrCat("job/", joined->job_id, "/"), coordinator_store);
  if (!store.ok()) return store.status();
  comm::CommunicatorOptions comm_options;
  comm_options.gloo.hostname = absl::GetFlag(FLAGS_gloo_host);
  comm_options.gloo.connect_timeout = absl::Minutes(5);
  comm_options.cuda_device = std::max(device, 0);
  comm_options.nccl_timeout = absl::Minutes(5);
  auto comm = comm::CreateCommunicator(nccl ? comm::Backend::kNccl : comm::Backend::kGloo,
                                       **store, rank, world, comm_options);
  if (!comm.ok()) return comm.status();

  RankMetrics metrics(rank);
  RankCoreOptions ro;
  ro.rank = rank;
  ro.world_size = world;
  ro.num_threads = threads;
  ro.device = device;
  ro.alignment = joined->config.plan_alignment;
  ro.reduce_in_float32 = absl::GetFlag(FLAGS_reduce_in_float32);
  const std::string shm_tag = absl::GetFlag(FLAGS_shm_tag);
  if (shm_tag.size() > 64 || !std::all_of(shm_tag.begin(), shm_tag.end(), [](char c) {
        return absl::ascii_isalnum(c) || c == '-' || c == '_';
      }))
    return absl::InvalidArgumentError("--shm-tag wants at most 64 letters, digits, '-' or '_'");
  ro.shm_prefix = absl::StrCat("/came-", shm_tag.empty() ? joined->job_id : shm_tag, "-r", rank);
  ro.checkpoint_every = joined->config.checkpoint_every;
  ro.collective_timeout = absl::Seconds(absl::GetFlag(FLAGS_collective_timeout_seconds));
  CheckpointHooks checkpoints;
  if (!joined->config.checkpoint_dir.empty()) {
    checkpoints.begin = [client, rank](int64_t step)
        -> absl::StatusOr<std::pair<std::string, std::string>> {
      auto info = client->BeginCheckpoint(rank, step);
      if (!info.ok()) return info.status();
      return std::pair{info->id, info->directory};
    };
    checkpoints.report = [client, rank](const std::string& id, const std::string& file,
                                        int64_t bytes, const std::string& sha256) {
      return client->ReportShard(service::ShardReport{id, rank, file, bytes, sha256});
    };
    checkpoints.commit = [client, rank](const std::string& id) -> absl::StatusOr<std::string> {
      auto info = client->CommitCheckpoint(id, rank);
      if (!info.ok()) return info.status();
      return info->manifest_path;
    };
    checkpoints.latest = [client]() -> absl::StatusOr<std::string> {
      auto info = client->LatestCheckpoint();
      if (!info.ok()) return info.status();
      if (!info->has_value()) return absl::NotFoundError("the job has no committed checkpoint");
      return (*info)->manifest_path;
    };
  }
  auto core = RankCore::Create(
      ro, *std::move(comm),
      [client, rank](const std::string& digest, int64_t count, absl::Duration timeout) {
        return client->SubmitManifest(rank, service::ManifestDigest{digest, count}, timeout);
      },
      [&metrics, &heartbeat](int64_t step, const EngineStepStats& stats, const StateBytes& bytes) {
        metrics.Observe(stats, bytes);
        if (heartbeat) heartbeat->SetStep(step);
      },
      metrics.Instrument(std::move(checkpoints)));
  if (!core.ok()) return core.status();
  live_core = core->get();  // a failure before this point is in `stop` already
  if (asked_to_stop) (*core)->RequestStop();

  auto server_creds = service::ServerCredentialsFromFiles(
      absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_client_ca));
  if (!server_creds.ok()) return server_creds.status();
  RankService service(core->get(), *token);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), *server_creds, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(service::kMaxMessageBytes));
  builder.SetMaxSendMessageSize(static_cast<int>(service::kMaxMessageBytes));
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0)
    return absl::UnavailableError(absl::StrCat("cannot serve on ", absl::GetFlag(FLAGS_listen)));
  const std::string listen = absl::GetFlag(FLAGS_listen);
  const std::string host = listen.substr(0, listen.rfind(':'));
  std::unique_ptr<prometheus::Exposer> exposer;
  if (const int mp = absl::GetFlag(FLAGS_metrics_port); mp != 0) {
    exposer = std::make_unique<prometheus::Exposer>(absl::StrCat(host, ":", mp));
    exposer->RegisterCollectable(metrics.registry());
  }
  if (const std::string w = service::PlaintextListenWarning(
          "came-rankd", listen, !absl::GetFlag(FLAGS_tls_cert).empty());
      !w.empty())
    std::cerr << w << std::endl;
  std::cout << "came-rankd rank " << rank << " listening on " << host << ":" << port << std::endl;

  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    stop.Request(absl::OkStatus());
  });
  const absl::Status failure = stop.Wait();
  if (failure.ok()) {
    std::cerr << "came-rankd rank " << rank << ": stopping" << std::endl;
    (*core)->Abort(absl::CancelledError("came-rankd is shutting down"));
  }
  heartbeat->Stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  core->reset();
  // Wake the signal thread if it is still waiting, then join it.
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  if (failure.ok()) (void)client->Finish(rank);
  return failure;
}

}  // namespace
}  // namespace came::rankd

int main(int argc, char** argv) {
  const int rc = came::service::RunMain(
      argc, argv, "came-rankd",
      "came-rankd --coordinator=HOST:PORT --token-file=F [--rank=R] [--world-size=N] "
      "[--listen=HOST:PORT] [--device=N] [flags]",
      &came::rankd::Run);
  return came::rankd::usage_error ? 2 : rc;
}
