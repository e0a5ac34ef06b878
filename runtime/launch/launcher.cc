#include "runtime/launch/launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "runtime/launch/errno_error.h"
#include "runtime/launch/gpus.h"
#include "runtime/launch/output_pump.h"
#include "runtime/launch/spawn.h"
#include "runtime/launch/supervisor.h"

namespace came::launch {
namespace {

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

// A private folder for the generated token file, removed with this object.
class TokenFolder {
 public:
  ~TokenFolder() {
    if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }
  // Writes `token` to <new 0700 folder>/token with mode 0600 and returns its path.
  absl::StatusOr<std::string> Write(const std::string& token) {
    std::error_code ec;
    std::string pattern =
        (std::filesystem::temp_directory_path(ec) / "came-launch.XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      return ErrnoError(absl::StrCat("mkdtemp ", pattern));
    }
    dir_ = pattern;
    const std::string path = dir_ + "/token";
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return ErrnoError(absl::StrCat("open ", path));
    WriteAll(fd, token);
    close(fd);
    return path;
  }

 private:
  std::string dir_;
};

// Removes the job's shared-memory segments at the end of the job: came-rankd names them
// /came-<job id>-r<rank>-..., and a daemon killed without a clean exit leaves them behind.
class ShmSweeper {
 public:
  explicit ShmSweeper(std::string job_id) : prefix_("came-" + std::move(job_id) + "-") {}
  ~ShmSweeper() {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
      if (e.path().filename().string().rfind(prefix_, 0) == 0) {
        std::error_code ignored;
        std::filesystem::remove(e.path(), ignored);
      }
    }
  }

 private:
  std::string prefix_;
};

absl::StatusOr<std::string> RandomToken() {
  unsigned char bytes[32];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("getrandom");
    got += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

absl::StatusOr<std::string> ReadToken(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read --token-file ", path));
  std::stringstream text;
  text << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(text.str()));
  if (token.empty())
    return absl::InvalidArgumentError(absl::StrCat("--token-file ", path, " is empty"));
  return token;
}

// Checks that `rest` of a "listening on" line is HOST:PORT and returns it.
absl::StatusOr<std::string> ParseAddress(absl::string_view who, absl::string_view rest) {
  rest = absl::StripAsciiWhitespace(rest);
  const size_t colon = rest.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, " announced an address without a port: '", rest, "'"));
  }
  return std::string(rest);
}

// The address this machine uses to reach host:port (a UDP socket "connected" there sends
// nothing; getsockname then names the local interface the route goes through).
absl::StatusOr<std::string> LocalAddressTowards(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  const std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve --coordinator host '", host, "': ", gai_strerror(rc),
                     " (or pass --node-address)"));
  }
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  const bool ok = fd >= 0 && connect(fd, found->ai_addr, found->ai_addrlen) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  const int saved_errno = errno;
  if (fd >= 0) close(fd);
  freeaddrinfo(found);
  if (!ok) {
    errno = saved_errno;
    return ErrnoError(absl::StrCat("finding the local address towards ", host_port,
                                   " (pass --node-address)"));
  }
  char text[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &local.sin_addr, text, sizeof(text));
  return std::string(text);
}

// What one attempt of the job ended with (Note [Restarts] in launcher.h).
struct Attempt {
  int exit_code = 0;
  bool restartable = false;  // a process failed: another attempt may succeed
};

class Job {
 public:
  Job(const LaunchOptions& options, const LaunchContext& context)
      : options_(options),
        context_(context),
        name_(options.nnodes > 1 ? absl::StrCat("came-launch (node ", options.node_rank, ")")
                                 : std::string("came-launch")) {}

  int Run();

 private:
  // Prints "came-launch: <message>".
  void Say(absl::string_view message) {
    WriteAll(context_.err_fd, absl::StrCat(name_, ": ", message, "\n"));
  }
  // Says `message` and returns `code`.
  int Fail(int code, absl::string_view message) {
    Say(message);
    return code;
  }
  // Runs attempt `generation` of the job until it ends.
  Attempt RunAttempt(int generation);
  // Stops the job after a failed start and returns how the attempt ended.
  Attempt Abort(const absl::Status& status);
  // Note [Preemption]: returns true when the job was asked to stop by itself.
  bool OnTerminate();
  // Starts the coordinator and returns the address it announced.
  absl::StatusOr<std::string> StartCoordinator(std::vector<std::string> args);

  const LaunchOptions& options_;
  const LaunchContext& context_;
  const std::string name_;
  // Checked and resolved once, before the first attempt.
  std::string coordinator_bin_, rankd_bin_, trainer_bin_;
  std::string token_, token_file_;
  std::string node_address_;
  DevicePlan devices_;  // the backend, the local rank count and their GPUs
  int threads_ = 1;
  absl::Time job_deadline_ = absl::InfiniteFuture();
  // This attempt's.
  std::unique_ptr<Supervisor> supervisor_;
  int coordinator_index_ = -1;  // in supervisor_; -1: not started (or not on this node)
  absl::Time startup_deadline_;
};

Attempt Job::Abort(const absl::Status& status) {
  int code = supervisor_->result().exit_code;
  if (code == 0) {
    // Not a failure the supervisor saw and reported: a command that cannot be executed
    // (FailedPrecondition) is a usage error, anything else a failed job.
    code = absl::IsFailedPrecondition(status) ? kExitUsage : kExitFailed;
    Fail(code, absl::StrCat(status.message(), "; stopping the job"));
  }
  const bool stopped_on_request = supervisor_->result().stopped_on_request;
  supervisor_->Stop();
  return Attempt{code, code == kExitFailed && !stopped_on_request};
}

bool Job::OnTerminate() {
  if (options_.checkpoint_dir.empty()) return false;
  if (options_.node_rank != 0) return true;  // node 0 asks the coordinator
  if (coordinator_index_ < 0) return false;  // not started yet: nothing to save
  return kill(supervisor_->pid(coordinator_index_), SIGUSR1) == 0;
}

absl::StatusOr<std::string> Job::StartCoordinator(std::vector<std::string> args) {
  args.insert(args.begin(), coordinator_bin_);
  absl::StatusOr<int> index =
      supervisor_->Spawn(ChildSpec{.name = "coordinator",
                                   .kind = ChildKind::kDaemon,
                                   .path = coordinator_bin_,
                                   .argv = std::move(args),
                                   .env = EnvironmentWith({}),
                                   .ready_prefix = "came-coordinator listening on "});
  if (!index.ok()) return index.status();
  coordinator_index_ = *index;
  absl::StatusOr<std::string> rest = supervisor_->WaitReady(*index, startup_deadline_);
  if (!rest.ok()) return rest.status();
  return ParseAddress("coordinator", *rest);
}

int Job::Run() {
  // Everything that can be checked before a process starts.
  coordinator_bin_ = context_.bin_dir + "/came-coordinator";
  rankd_bin_ = context_.bin_dir + "/came-rankd";
  for (const std::string& bin : {coordinator_bin_, rankd_bin_}) {
    if (access(bin.c_str(), X_OK) != 0) {
      return Fail(kExitUsage,
                  absl::StrCat("cannot run ", bin, ": ", std::strerror(errno), " (see --bin-dir)"));
    }
  }
  const char* path_env = std::getenv("PATH");
  absl::StatusOr<std::string> trainer_bin =
      FindExecutable(options_.command[0], path_env != nullptr ? path_env : "/usr/bin:/bin");
  if (!trainer_bin.ok()) {
    return Fail(kExitUsage, absl::StrCat("trainer command: ", trainer_bin.status().message()));
  }
  trainer_bin_ = *trainer_bin;
  if (!options_.log_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options_.log_dir, ec);
    if (ec)
      return Fail(kExitUsage, absl::StrCat("--log-dir ", options_.log_dir, ": ", ec.message()));
  }
  TokenFolder token_folder;
  absl::StatusOr<std::string> token =
      options_.token_file.empty() ? RandomToken() : ReadToken(options_.token_file);
  if (!token.ok()) return Fail(kExitUsage, token.status().message());
  token_ = *token;
  absl::StatusOr<std::string> token_file =
      options_.token_file.empty() ? token_folder.Write(token_) : options_.token_file;
  if (!token_file.ok()) return Fail(kExitFailed, token_file.status().message());
  token_file_ = *token_file;
  node_address_ = options_.node_address;
  if (node_address_.empty()) {
    if (options_.nnodes == 1) {
      node_address_ = "127.0.0.1";
    } else {
      absl::StatusOr<std::string> local = LocalAddressTowards(options_.coordinator);
      if (!local.ok()) return Fail(kExitUsage, local.status().message());
      node_address_ = *local;
    }
  }
  absl::StatusOr<DevicePlan> devices = ResolveDevices(
      options_, VisibleGpuCount("/proc/driver/nvidia/gpus", std::getenv("CUDA_VISIBLE_DEVICES")));
  if (!devices.ok()) return Fail(kExitUsage, devices.status().message());
  devices_ = *std::move(devices);
  threads_ = options_.threads_per_rank > 0
                 ? options_.threads_per_rank
                 : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                   devices_.nproc);
  if (options_.timeout_seconds > 0) {
    job_deadline_ = absl::Now() + absl::Seconds(options_.timeout_seconds);
  }
  for (int generation = 0;; ++generation) {
    const Attempt attempt = RunAttempt(generation);
    if (!attempt.restartable || generation >= options_.max_restarts) return attempt.exit_code;
    Say(absl::StrCat("restarting the job (restart ", generation + 1, " of ",
                     options_.max_restarts, ") from the last committed checkpoint"));
  }
}

Attempt Job::RunAttempt(int generation) {
  const int local = devices_.nproc;
  const int world = options_.nnodes * local;
  const int first_rank = options_.node_rank * local;
  supervisor_.reset();  // the previous attempt's: its children are gone
  coordinator_index_ = -1;

  // The job id names the coordinator's job and this node's shared memory.
  absl::StatusOr<std::string> job_id = RandomToken();
  if (!job_id.ok()) return Attempt{Fail(kExitFailed, job_id.status().message()), false};
  job_id->resize(16);
  ShmSweeper sweeper(*job_id);

  absl::StatusOr<std::unique_ptr<Supervisor>> supervisor = Supervisor::Create(SupervisorOptions{
      .out_fd = context_.out_fd,
      .err_fd = context_.err_fd,
      .log_dir = options_.log_dir,
      .interrupt_fd = context_.interrupt_fd,
      .job_timeout = options_.timeout_seconds > 0 ? absl::Seconds(options_.timeout_seconds)
                                                  : absl::InfiniteDuration(),
      .job_deadline = job_deadline_,
      .grace = absl::Seconds(options_.grace_seconds),
      .adopt_orphans = true,
      .guard_groups = true,
      .name = name_,
      .on_terminate = [this] { return OnTerminate(); },
      .stop_grace = absl::Seconds(options_.grace_period_seconds)});
  if (!supervisor.ok()) return Attempt{Fail(kExitFailed, supervisor.status().message()), false};
  supervisor_ = *std::move(supervisor);
  startup_deadline_ = absl::Now() + absl::Seconds(options_.startup_timeout_seconds);

  std::string coordinator_address = options_.coordinator;
  if (options_.node_rank == 0) {
    std::vector<std::string> args = {
        "--listen",       coordinator_address.empty() ? "127.0.0.1:0" : coordinator_address,
        "--world-size",   absl::StrCat(world),
        "--token-file",   token_file_,
        "--backend",      devices_.backend,
        "--job-id",       *job_id,
        "--generation",   absl::StrCat(generation)};
    if (!options_.checkpoint_dir.empty()) {
      args.insert(args.end(), {"--checkpoint-dir", options_.checkpoint_dir});
    }
    if (options_.checkpoint_every > 0) {
      args.insert(args.end(), {"--checkpoint-every", absl::StrCat(options_.checkpoint_every)});
    }
    if (options_.keep_checkpoints > 0) {
      args.insert(args.end(), {"--keep-checkpoints", absl::StrCat(options_.keep_checkpoints)});
    }
    if (options_.lease_seconds > 0) {
      args.insert(args.end(), {"--lease-seconds", absl::StrCat(options_.lease_seconds)});
    }
    if (options_.metrics_port >= 0) {
      args.insert(args.end(), {"--metrics-port", absl::StrCat(options_.metrics_port)});
    }
    absl::StatusOr<std::string> address = StartCoordinator(std::move(args));
    if (!address.ok()) return Abort(address.status());
    coordinator_address = *address;
  }

  // Start every rankd before waiting for any: they come up in parallel.
  std::vector<int> rankd;
  for (int i = 0; i < local; ++i) {
    const int r = first_rank + i;
    std::vector<std::string> argv = {
        rankd_bin_, "--coordinator", coordinator_address, "--token-file", token_file_,
        "--rank", absl::StrCat(r), "--world-size", absl::StrCat(world), "--listen",
        absl::StrCat(node_address_, ":0"), "--gloo-host", node_address_,
        "--threads", absl::StrCat(threads_), "--generation", absl::StrCat(generation),
        "--shm-tag", *job_id, "--join-timeout-seconds",
        absl::StrCat(options_.startup_timeout_seconds)};
    if (options_.reduce_in_float32) argv.push_back("--reduce-in-float32");
    if (!devices_.devices.empty()) {
      argv.push_back("--device");
      argv.push_back(absl::StrCat(devices_.devices[i]));
    }
    if (options_.metrics_port > 0) {  // rank r serves /metrics on P + 1 + r
      argv.push_back("--metrics-port");
      argv.push_back(absl::StrCat(options_.metrics_port + 1 + r));
    }
    absl::StatusOr<int> index = supervisor_->Spawn(ChildSpec{
        .name = absl::StrCat("rankd ", r),
        .kind = ChildKind::kDaemon,
        .path = rankd_bin_,
        .argv = std::move(argv),
        .env = EnvironmentWith({}),
        .ready_prefix = absl::StrCat("came-rankd rank ", r, " listening on ")});
    if (!index.ok()) return Abort(index.status());
    rankd.push_back(*index);
  }
  std::vector<std::string> rankd_address;
  for (int i = 0; i < local; ++i) {
    absl::StatusOr<std::string> rest = supervisor_->WaitReady(rankd[i], startup_deadline_);
    if (rest.ok()) rest = ParseAddress(absl::StrCat("rankd ", first_rank + i), *rest);
    if (!rest.ok()) return Abort(rest.status());
    rankd_address.push_back(*rest);
  }

  std::vector<std::string> python_path = context_.python_path;
  if (const char* existing = std::getenv("PYTHONPATH"); existing != nullptr && *existing) {
    python_path.emplace_back(existing);
  }
  for (int i = 0; i < local; ++i) {
    const int r = first_rank + i;
    absl::StatusOr<int> index = supervisor_->Spawn(
        ChildSpec{.name = absl::StrCat("trainer ", r),
                  .kind = ChildKind::kWorker,
                  .path = trainer_bin_,
                  .argv = options_.command,
                  .env = EnvironmentWith({{"CAME_RANK", absl::StrCat(r)},
                                          {"CAME_LOCAL_RANK", absl::StrCat(i)},
                                          {"CAME_DEVICE", devices_.devices.empty()
                                                              ? std::string("cpu")
                                                              : absl::StrCat("cuda:", devices_.devices[i])},
                                          {"CAME_NODE_RANK", absl::StrCat(options_.node_rank)},
                                          {"CAME_WORLD_SIZE", absl::StrCat(world)},
                                          {"CAME_RANKD_ADDRESS", rankd_address[i]},
                                          {"CAME_COORDINATOR_ADDRESS", coordinator_address},
                                          {"CAME_TOKEN", token_},
                                          {"CAME_RESTART_COUNT", absl::StrCat(generation)},
                                          {"PYTHONPATH", absl::StrJoin(python_path, ":")}}),
                  .ready_prefix = ""});
    if (!index.ok()) return Abort(index.status());
  }

  const JobResult result = supervisor_->Supervise();
  supervisor_->Stop();
  if (result.stopped_on_request && result.exit_code == 0) {
    Say("the job stopped at a checkpoint after SIGTERM; run it again to resume");
  }
  return Attempt{result.exit_code, result.exit_code == kExitFailed && !result.stopped_on_request};
}

}  // namespace

int RunLaunch(const LaunchOptions& options, const LaunchContext& context) {
  return Job(options, context).Run();
}

}  // namespace came::launch
