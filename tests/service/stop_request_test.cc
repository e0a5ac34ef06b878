// StopRequest: many threads requesting at once (what a signal and a job failure do together in
// came-rankd) leave exactly one winner, whose reason Wait returns.
#include "runtime/service/stop_request.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace came::service {
namespace {

TEST(StopRequestTest, ConcurrentRequestsHaveOneWinnerWhoseReasonIsKept) {
  for (int round = 0; round < 200; ++round) {
    StopRequest stop;
    std::atomic<int> winners{0}, winner{-1};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&, t] {
        if (stop.Request(absl::AbortedError(absl::StrCat("thread ", t)))) {
          winners.fetch_add(1);
          winner = t;
        }
      });
    const absl::Status reason = stop.Wait();
    for (auto& th : threads) th.join();
    ASSERT_EQ(winners.load(), 1);
    EXPECT_EQ(reason.message(), absl::StrCat("thread ", winner.load()));
  }
}

TEST(StopRequestTest, AnOrderlyStopIsOk) {
  StopRequest stop;
  EXPECT_TRUE(stop.Request(absl::OkStatus()));
  EXPECT_FALSE(stop.Request(absl::AbortedError("late")));
  EXPECT_TRUE(stop.Wait().ok());
}

}  // namespace
}  // namespace came::service
