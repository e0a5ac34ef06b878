// The command-line helpers of the job binaries: the plaintext-listening warning.
#include "runtime/service/cli_common.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace came::service {
namespace {

using ::testing::HasSubstr;

TEST(PlaintextListenWarningTest, WarnsOnlyForANetworkAddressWithoutTls) {
  for (const char* loopback : {"127.0.0.1:0", "127.3.2.1:9000", "localhost:80", "[::1]:5"})
    EXPECT_EQ(PlaintextListenWarning("came-rankd", loopback, false), "") << loopback;
  for (const char* network : {"0.0.0.0:50051", "10.1.2.3:7", "[::]:5", "node7:1234"}) {
    const std::string w = PlaintextListenWarning("came-rankd", network, false);
    EXPECT_THAT(w, HasSubstr("came-rankd: warning: listening on")) << network;
    EXPECT_THAT(w, HasSubstr("without TLS")) << network;
    EXPECT_EQ(PlaintextListenWarning("came-rankd", network, true), "") << network;
  }
}

}  // namespace
}  // namespace came::service
