// Failure handling across real processes (docs/design.md, "Failures"): a coordinator and two
// came-rankd, the two trainers being RankClients in this process. When rank 1's daemon is
// SIGKILLed mid-training, rank 0's next step fails promptly instead of hanging, and rank 0's
// daemon exits non-zero with an error that names rank 1 once its lease has expired.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "grpcpp/security/credentials.h"
#include "runtime/rankd/rank_client.h"

extern char** environ;

namespace came {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// A child process whose stdout and stderr go to files.
struct Child {
  pid_t pid = -1;
  fs::path out, err;

  // Returns the first stdout line containing `marker`, waiting up to `timeout`.
  std::string WaitForLine(const std::string& marker, std::chrono::seconds timeout) const {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      std::ifstream f(out);
      std::string line;
      while (std::getline(f, line))
        if (line.find(marker) != std::string::npos) return line;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "";
  }
  std::string Stderr() const {
    std::ifstream f(err);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }
  // Waits up to `timeout` for the exit; returns the wait status, or -1 when still running.
  int WaitExit(std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

std::unique_ptr<Child> Spawn(const fs::path& dir, const std::string& name,
                             std::vector<std::string> args) {
  auto c = std::make_unique<Child>();
  c->out = dir / (name + ".out");
  c->err = dir / (name + ".err");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, c->out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, c->err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  EXPECT_EQ(posix_spawn(&c->pid, argv[0], &fa, nullptr, argv.data(), environ), 0) << args[0];
  posix_spawn_file_actions_destroy(&fa);
  return c;
}

std::string PortOf(const std::string& line) { return line.substr(line.rfind(':') + 1); }

TEST(FaultTest, KilledRankdFailsTheOtherRankPromptlyNamingIt) {
  std::string tmpl = (fs::temp_directory_path() / "came-fault-XXXXXX").string();
  const fs::path dir = mkdtemp(tmpl.data());
  {
    std::ofstream(dir / "token") << "fault-test-token\n";
  }
  const std::string bin = BIN_DIR;
  auto coordinator = Spawn(dir, "coordinator",
                           {bin + "/came-coordinator", "--world-size", "2", "--token-file",
                            (dir / "token").string(), "--lease-seconds", "2"});
  const std::string cline = coordinator->WaitForLine("listening on", std::chrono::seconds(30));
  ASSERT_FALSE(cline.empty()) << coordinator->Stderr();
  std::vector<std::unique_ptr<Child>> rankd;
  for (int r = 0; r < 2; ++r)
    rankd.push_back(Spawn(dir, "rankd" + std::to_string(r),
                          {bin + "/came-rankd", "--coordinator", "127.0.0.1:" + PortOf(cline),
                           "--token-file", (dir / "token").string(), "--rank", std::to_string(r),
                           "--world-size", "2", "--collective-timeout-seconds", "60"}));
  std::vector<std::unique_ptr<rankd::RankClient>> trainers;
  for (int r = 0; r < 2; ++r) {
    const std::string line = rankd[r]->WaitForLine("listening on", std::chrono::seconds(30));
    ASSERT_FALSE(line.empty()) << rankd[r]->Stderr();
    rankd::RankClientOptions o;
    o.address = "127.0.0.1:" + PortOf(line);
    o.token = "fault-test-token";
    o.timeout = absl::Seconds(60);
    auto c = rankd::RankClient::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    trainers.push_back(*std::move(c));
  }
  rankd::Manifest m;
  m.tensors = {{"w", {64, 32}, DType::kFloat32, 0}, {"b", {32}, DType::kFloat32, 0}};
  CameHyper h;
  h.lr = 0.01;
  m.groups = {h};
  auto both = [&](auto&& call) {
    auto f = std::async(std::launch::async, [&] { return call(*trainers[1]); });
    absl::Status s0 = call(*trainers[0]);
    absl::Status s1 = f.get();
    return s0.ok() ? s1 : s0;
  };
  ASSERT_TRUE(both([&](rankd::RankClient& c) { return c.Attach(m); }).ok());
  ASSERT_TRUE(both([](rankd::RankClient& c) { return c.SyncParameters(); }).ok());
  for (int step = 1; step <= 3; ++step) {
    ASSERT_TRUE(both([&](rankd::RankClient& c) {
                  for (float& g : c.grad("w")) g = 0.01f * step;
                  return c.Step(step, {h.lr}).status();
                }).ok());
  }

  // Rank 1's daemon dies; rank 0's trainer steps on alone.
  kill(rankd[1]->pid, SIGKILL);
  ASSERT_NE(rankd[1]->WaitExit(std::chrono::seconds(10)), -1);
  const auto t0 = Clock::now();
  auto r = trainers[0]->Step(4, {h.lr});
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  ASSERT_FALSE(r.ok()) << "a step with a dead peer must fail";
  EXPECT_LT(seconds, 20.0) << "the step should fail promptly, not wait for the 60 s timeout";

  // rank 0's daemon learns from the coordinator that rank 1 lost its lease, and exits 1.
  const int status = rankd[0]->WaitExit(std::chrono::seconds(30));
  ASSERT_NE(status, -1) << "rankd 0 did not exit after its peer died\n" << rankd[0]->Stderr();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_NE(rankd[0]->Stderr().find("rank 1"), std::string::npos) << rankd[0]->Stderr();
  std::printf("step 4 on rank 0 failed after %.2f s with: %s\nrankd 0 said:\n%s", seconds,
              r.status().ToString().c_str(), rankd[0]->Stderr().c_str());
  // The SIGKILLed daemon could not unlink its shared memory (came-launch sweeps it; this test
  // runs the daemons by hand, so it does).
  const std::string err = rankd[0]->Stderr();
  const size_t at = err.find("joined job ");
  ASSERT_NE(at, std::string::npos) << err;
  const std::string prefix = "came-" + err.substr(at + 11, err.find(' ', at + 11) - at - 11) + "-";
  trainers.clear();
  for (const auto& e : fs::directory_iterator("/dev/shm"))
    if (e.path().filename().string().rfind(prefix, 0) == 0) fs::remove(e.path());
  fs::remove_all(dir);
}

// Writes a self-signed certificate for localhost and 127.0.0.1 (it serves as CA, server and
// client certificate) to `cert` and its key to `key`; returns "" or the command that failed.
std::string MakeTestCertificate(const std::string& cert, const std::string& key) {
  const std::string cmd =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " + key + " -out " + cert +
      " > /dev/null 2>&1";
  return std::system(cmd.c_str()) == 0 ? "" : cmd;
}

// came-rankd serves its trainer over TLS with --tls-cert/--tls-key: a client that trusts the
// certificate attaches and steps; a plaintext client does not get through.
TEST(RankdTlsTest, TrainerReachesRankdOverTlsOnly) {
  if (std::system("openssl version > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "the openssl CLI is not installed: cannot make a test certificate";
  std::string tmpl = (fs::temp_directory_path() / "came-tls-XXXXXX").string();
  const fs::path dir = mkdtemp(tmpl.data());
  const std::string cert = (dir / "cert.pem").string(), key = (dir / "key.pem").string();
  ASSERT_EQ(MakeTestCertificate(cert, key), "");
  std::ofstream(dir / "token") << "tls-test-token\n";
  const std::string bin = BIN_DIR;
  auto coordinator = Spawn(dir, "coordinator",
                           {bin + "/came-coordinator", "--world-size", "1", "--token-file",
                            (dir / "token").string()});
  const std::string cline = coordinator->WaitForLine("listening on", std::chrono::seconds(30));
  ASSERT_FALSE(cline.empty()) << coordinator->Stderr();
  auto rankd = Spawn(dir, "rankd",
                     {bin + "/came-rankd", "--coordinator", "127.0.0.1:" + PortOf(cline),
                      "--token-file", (dir / "token").string(), "--tls-cert", cert, "--tls-key",
                      key});
  const std::string line = rankd->WaitForLine("listening on", std::chrono::seconds(30));
  ASSERT_FALSE(line.empty()) << rankd->Stderr();

  rankd::Manifest m;
  m.tensors = {{"w", {4, 3}, DType::kFloat32, 0}};
  CameHyper h;
  h.lr = 0.01;
  m.groups = {h};
  rankd::RankClientOptions o;
  o.address = "127.0.0.1:" + PortOf(line);
  o.token = "tls-test-token";
  o.timeout = absl::Seconds(5);
  {  // plaintext: refused
    auto plain = rankd::RankClient::Connect(o);
    ASSERT_TRUE(plain.ok());
    EXPECT_EQ((*plain)->Attach(m).code(), absl::StatusCode::kUnavailable);
  }
  grpc::SslCredentialsOptions ssl;
  std::ifstream f(cert);
  ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  o.credentials = grpc::SslCredentials(ssl);
  auto client = rankd::RankClient::Connect(o);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Attach(m).ok());
  ASSERT_TRUE((*client)->SyncParameters().ok());
  for (float& g : (*client)->grad("w")) g = 0.5f;
  auto r = (*client)->Step(1, {h.lr});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->skipped);
  EXPECT_NEAR(r->grad_norm, std::sqrt(12 * 0.25), 1e-6);
  fs::remove_all(dir);
}

// A coordinator that requires client certificates (--tls-ca) admits a came-rankd that presents
// one (--coordinator-cert/--coordinator-key) and refuses one that does not. The admitted rankd
// listens for its trainer on 0.0.0.0 without TLS and says so on stderr.
TEST(RankdTlsTest, RankdPresentsAClientCertificateToACoordinatorThatRequiresOne) {
  if (std::system("openssl version > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "the openssl CLI is not installed: cannot make a test certificate";
  std::string tmpl = (fs::temp_directory_path() / "came-mtls-XXXXXX").string();
  const fs::path dir = mkdtemp(tmpl.data());
  // One self-signed certificate serves as CA, server and client certificate.
  const std::string cert = (dir / "cert.pem").string(), key = (dir / "key.pem").string();
  ASSERT_EQ(MakeTestCertificate(cert, key), "");
  std::ofstream(dir / "token") << "mtls-test-token\n";
  const std::string bin = BIN_DIR, token = (dir / "token").string();
  auto coordinator = Spawn(dir, "coordinator",
                           {bin + "/came-coordinator", "--world-size", "1", "--token-file", token,
                            "--tls-cert", cert, "--tls-key", key, "--tls-ca", cert});
  const std::string cline = coordinator->WaitForLine("listening on", std::chrono::seconds(30));
  ASSERT_FALSE(cline.empty()) << coordinator->Stderr();
  const std::string address = "127.0.0.1:" + PortOf(cline);
  auto anonymous = Spawn(dir, "anonymous",
                         {bin + "/came-rankd", "--coordinator", address, "--token-file", token,
                          "--coordinator-ca", cert, "--join-timeout-seconds", "1"});
  const int status = anonymous->WaitExit(std::chrono::seconds(60));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << status << anonymous->Stderr();
  auto rankd = Spawn(dir, "rankd",
                     {bin + "/came-rankd", "--coordinator", address, "--token-file", token,
                      "--coordinator-ca", cert, "--coordinator-cert", cert, "--coordinator-key",
                      key, "--listen", "0.0.0.0:0"});
  EXPECT_FALSE(rankd->WaitForLine("listening on", std::chrono::seconds(30)).empty()) << rankd->Stderr();
  EXPECT_NE(rankd->Stderr().find("without TLS"), std::string::npos) << rankd->Stderr();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace came
