#include "runtime/launch/launcher.h"

#include <fcntl.h>
#include <sys/random.h>
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

// Checks that `rest` of a "listening on" line is 127.0.0.1:PORT and returns it.
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

class Job {
 public:
  Job(const LaunchOptions& options, const LaunchContext& context)
      : options_(options), context_(context) {}

  int Run();

 private:
  // Prints "came-launch: <message>" and returns `code`.
  int Fail(int code, absl::string_view message) {
    WriteAll(context_.err_fd, absl::StrCat("came-launch: ", message, "\n"));
    return code;
  }
  // Stops the job after a failed start and returns the exit status for `status`.
  int Abort(const absl::Status& status);
  absl::StatusOr<std::string> StartDaemon(std::string name, std::string path,
                                          std::vector<std::string> args, std::string ready);

  const LaunchOptions& options_;
  const LaunchContext& context_;
  std::unique_ptr<Supervisor> supervisor_;
  absl::Time startup_deadline_;
};

int Job::Abort(const absl::Status& status) {
  int code = supervisor_->result().exit_code;
  if (code == 0) {
    // Not a failure the supervisor saw and reported: a command that cannot be executed
    // (FailedPrecondition) is a usage error, anything else a failed job.
    code = absl::IsFailedPrecondition(status) ? kExitUsage : kExitFailed;
    Fail(code, absl::StrCat(status.message(), "; stopping the job"));
  }
  supervisor_->Stop();
  return code;
}

absl::StatusOr<std::string> Job::StartDaemon(std::string name, std::string path,
                                             std::vector<std::string> args, std::string ready) {
  args.insert(args.begin(), path);
  absl::StatusOr<int> index = supervisor_->Spawn(ChildSpec{.name = name,
                                                           .kind = ChildKind::kDaemon,
                                                           .path = path,
                                                           .argv = std::move(args),
                                                           .env = EnvironmentWith({}),
                                                           .ready_prefix = std::move(ready)});
  if (!index.ok()) return index.status();
  absl::StatusOr<std::string> rest = supervisor_->WaitReady(*index, startup_deadline_);
  if (!rest.ok()) return rest.status();
  return ParseAddress(name, *rest);
}

int Job::Run() {
  const int n = options_.nproc;
  // Everything that can be checked before a process starts.
  const std::string coordinator_bin = context_.bin_dir + "/came-coordinator";
  const std::string rankd_bin = context_.bin_dir + "/came-rankd";
  for (const std::string& bin : {coordinator_bin, rankd_bin}) {
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
  absl::StatusOr<std::string> token_file =
      options_.token_file.empty() ? token_folder.Write(*token) : options_.token_file;
  if (!token_file.ok()) return Fail(kExitFailed, token_file.status().message());

  // The job id names the coordinator's job and so every rank's shared memory.
  absl::StatusOr<std::string> job_id = RandomToken();
  if (!job_id.ok()) return Fail(kExitFailed, job_id.status().message());
  job_id->resize(16);
  ShmSweeper sweeper(*job_id);

  std::string backend = options_.backend;
  if (backend.empty()) {
    // came-rankd serves host buffers only for now (no CUDA IPC yet), so Gloo is the default
    // even on a GPU machine; --backend nccl is passed through and refused by rankd clearly.
    backend = "gloo";
  }
  const int threads = options_.threads_per_rank > 0
                          ? options_.threads_per_rank
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / n);

  absl::StatusOr<std::unique_ptr<Supervisor>> supervisor = Supervisor::Create(SupervisorOptions{
      .out_fd = context_.out_fd,
      .err_fd = context_.err_fd,
      .log_dir = options_.log_dir,
      .interrupt_fd = context_.interrupt_fd,
      .job_timeout = options_.timeout_seconds > 0 ? absl::Seconds(options_.timeout_seconds)
                                                  : absl::InfiniteDuration(),
      .grace = absl::Seconds(options_.grace_seconds),
      .adopt_orphans = true,
      .guard_groups = true});
  if (!supervisor.ok()) return Fail(kExitFailed, supervisor.status().message());
  supervisor_ = *std::move(supervisor);
  startup_deadline_ = absl::Now() + absl::Seconds(options_.startup_timeout_seconds);

  std::vector<std::string> coordinator_args = {"--listen",      "127.0.0.1:0",  "--world-size",
                                               absl::StrCat(n), "--token-file", *token_file,
                                               "--backend",     backend};
  coordinator_args.push_back("--job-id");
  coordinator_args.push_back(*job_id);
  if (!options_.checkpoint_dir.empty()) {
    coordinator_args.push_back("--checkpoint-dir");
    coordinator_args.push_back(options_.checkpoint_dir);
  }
  if (options_.metrics_port >= 0) {
    coordinator_args.push_back("--metrics-port");
    coordinator_args.push_back(absl::StrCat(options_.metrics_port));
  }
  absl::StatusOr<std::string> coordinator_address =
      StartDaemon("coordinator", coordinator_bin, std::move(coordinator_args),
                  "came-coordinator listening on ");
  if (!coordinator_address.ok()) return Abort(coordinator_address.status());

  // Start every rankd before waiting for any: they come up in parallel.
  std::vector<int> rankd;
  for (int r = 0; r < n; ++r) {
    std::vector<std::string> argv = {
        rankd_bin, "--coordinator", *coordinator_address, "--token-file", *token_file,
        "--rank", absl::StrCat(r), "--world-size", absl::StrCat(n), "--listen",
        "127.0.0.1:0", "--threads", absl::StrCat(threads)};
    if (options_.reduce_in_float32) argv.push_back("--reduce-in-float32");
    if (options_.metrics_port > 0) {  // rank r serves /metrics on P + 1 + r
      argv.push_back("--metrics-port");
      argv.push_back(absl::StrCat(options_.metrics_port + 1 + r));
    }
    absl::StatusOr<int> index = supervisor_->Spawn(ChildSpec{
        .name = absl::StrCat("rankd ", r),
        .kind = ChildKind::kDaemon,
        .path = rankd_bin,
        .argv = std::move(argv),
        .env = EnvironmentWith({}),
        .ready_prefix = absl::StrCat("came-rankd rank ", r, " listening on ")});
    if (!index.ok()) return Abort(index.status());
    rankd.push_back(*index);
  }
  std::vector<std::string> rankd_address;
  for (int r = 0; r < n; ++r) {
    absl::StatusOr<std::string> rest = supervisor_->WaitReady(rankd[r], startup_deadline_);
    if (rest.ok()) rest = ParseAddress(absl::StrCat("rankd ", r), *rest);
    if (!rest.ok()) return Abort(rest.status());
    rankd_address.push_back(*rest);
  }

  std::vector<std::string> python_path = context_.python_path;
  if (const char* existing = std::getenv("PYTHONPATH"); existing != nullptr && *existing) {
    python_path.emplace_back(existing);
  }
  for (int r = 0; r < n; ++r) {
    std::vector<std::string> argv = options_.command;
    absl::StatusOr<int> index = supervisor_->Spawn(
        ChildSpec{.name = absl::StrCat("trainer ", r),
                  .kind = ChildKind::kWorker,
                  .path = *trainer_bin,
                  .argv = std::move(argv),
                  .env = EnvironmentWith({{"CAME_RANK", absl::StrCat(r)},
                                          {"CAME_WORLD_SIZE", absl::StrCat(n)},
                                          {"CAME_RANKD_ADDRESS", rankd_address[r]},
                                          {"CAME_COORDINATOR_ADDRESS", *coordinator_address},
                                          {"CAME_TOKEN", *token},
                                          {"PYTHONPATH", absl::StrJoin(python_path, ":")}}),
                  .ready_prefix = ""});
    if (!index.ok()) return Abort(index.status());
  }

  const JobResult result = supervisor_->Supervise();
  supervisor_->Stop();
  return result.exit_code;
}

}  // namespace

int RunLaunch(const LaunchOptions& options, const LaunchContext& context) {
  return Job(options, context).Run();
}

}  // namespace came::launch
