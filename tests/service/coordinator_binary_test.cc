// Tests of the came-coordinator binary as a separate process: it prints its bound port,
// serves (plaintext or TLS from its flags) and exits 0 on SIGTERM.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "runtime/service/coordinator_client.h"

namespace came::service {
namespace {

std::unique_ptr<CoordinatorClient> Client(
    const std::string& target, const std::string& token,
    std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
    absl::Duration rpc_timeout = absl::Seconds(10)) {
  CoordinatorClientOptions options;
  options.target = target;
  options.token = token;
  options.credentials = std::move(credentials);
  options.rpc_timeout = rpc_timeout;
  auto client = CoordinatorClient::Create(options);
  return client.ok() ? std::move(*client) : nullptr;
}

constexpr char kListening[] = "came-coordinator listening on ";

// A came-coordinator child process; killed (SIGKILL) if still running at destruction.
class CoordinatorProcess {
 public:
  // Starts the binary with args; returns the "host:port" it printed, or "" on failure.
  std::string Start(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe(fds) != 0) return "";
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::close(fds[0]);
      std::vector<char*> argv;
      std::string bin = CAME_COORDINATOR_BIN;
      argv.push_back(bin.data());
      std::vector<std::string> copy = args;
      for (std::string& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    FILE* out = ::fdopen(fds[0], "r");
    char line[256] = {0};
    std::string address;
    if (std::fgets(line, sizeof(line), out) != nullptr) {
      absl::string_view l = absl::StripTrailingAsciiWhitespace(line);
      if (absl::ConsumePrefix(&l, kListening)) address = std::string(l);
    }
    std::fclose(out);
    return address;
  }
  // Sends SIGTERM and returns the exit status (-1 if it did not exit normally).
  int Terminate() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  ~CoordinatorProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

 private:
  pid_t pid_ = -1;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(CoordinatorBinaryTest, PrintsPortServesAndStopsOnSigterm) {
  CoordinatorProcess process;
  const std::string address =
      process.Start({"--world-size=1", "--token=bin-token", "--listen=127.0.0.1:0"});
  ASSERT_FALSE(address.empty());
  auto client = Client(address, "bin-token");
  ASSERT_NE(client, nullptr);
  auto joined = client->Join(JoinRequest());
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->world_size, 1);
  EXPECT_EQ(client->GetJobStatus()->state, JobState::kRunning);
  EXPECT_EQ(process.Terminate(), 0);
}

TEST(CoordinatorBinaryTest, TlsFromFlags) {
  if (std::system("openssl version > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "the openssl CLI is not installed: cannot make a test certificate";
  }
  const std::string dir = absl::StrCat(::testing::TempDir(), "/came_tls_", ::getpid());
  std::filesystem::create_directories(dir);
  const std::string cert = dir + "/cert.pem", key = dir + "/key.pem";
  const std::string cmd = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      key, " -out ", cert, " > /dev/null 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  CoordinatorProcess process;
  const std::string address =
      process.Start({"--world-size=2", "--token=tls-token", "--listen=127.0.0.1:0",
                     "--tls-cert=" + cert, "--tls-key=" + key});
  ASSERT_FALSE(address.empty());

  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(cert);
  auto secure = Client(address, "tls-token", grpc::SslCredentials(ssl));
  auto joined = secure->Join(JoinRequest());
  ASSERT_TRUE(joined.ok()) << joined.status();

  auto wrong_token = Client(address, "nope", grpc::SslCredentials(ssl));
  EXPECT_EQ(wrong_token->Join(JoinRequest()).status().code(),
            absl::StatusCode::kUnauthenticated);

  auto plaintext = Client(address, "tls-token", nullptr, absl::Seconds(2));
  EXPECT_EQ(plaintext->Join(JoinRequest()).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(process.Terminate(), 0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace came::service
