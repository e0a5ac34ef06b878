// KvStore's quotas: the bytes it holds and the reads waiting at once are bounded
// (ResourceExhausted, nothing changes), and both are given back when values are replaced and
// waits end.
#include "runtime/service/kv_store.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/service/clock.h"

namespace came::service {
namespace {

TEST(KvStoreTest, HeldBytesAreBounded) {
  FakeClock clock;
  KvStore store(&clock, KvStoreLimits{.max_keys = 100, .max_bytes = 100, .max_waiters = 10});
  ASSERT_TRUE(store.Set("a", std::string(60, 'x')).ok());
  EXPECT_EQ(store.Set("b", std::string(40, 'x')).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(store.Set("b", std::string(30, 'x')).ok());        // 61 + 31 = 92 bytes
  ASSERT_TRUE(store.Set("a", std::string(10, 'x')).ok());        // replacing gives bytes back
  ASSERT_TRUE(store.Set("c", std::string(50, 'x')).ok());        // 11 + 31 + 51 = 93
  EXPECT_EQ(store.Add("counter", 1).status().code(), absl::StatusCode::kResourceExhausted);
  std::string got;
  store.Get("b", clock.Now(), [&](absl::StatusOr<std::string> v) { got = v.value_or(""); });
  EXPECT_EQ(got, std::string(30, 'x'));
}

TEST(KvStoreTest, WaitingReadsAreBoundedAndGivenBackWhenTheyEnd) {
  FakeClock clock;
  KvStore store(&clock, KvStoreLimits{.max_keys = 100, .max_bytes = 1 << 20, .max_waiters = 3});
  std::vector<absl::Status> done;
  auto wait = [&](const std::string& key) {
    store.Get(key, clock.Now() + absl::Seconds(10), [&](absl::StatusOr<std::string> v) { done.push_back(v.status()); });
  };
  for (int i = 0; i < 3; ++i) wait("k");
  EXPECT_TRUE(done.empty());
  wait("other");
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(store.Set("k", "v").ok());  // completes the three
  EXPECT_EQ(done.size(), 4u);
  wait("late");  // a slot is free again
  clock.Advance(absl::Seconds(11));
  store.Poll();
  ASSERT_EQ(done.size(), 5u);
  EXPECT_EQ(done[4].code(), absl::StatusCode::kDeadlineExceeded);
  for (int i = 0; i < 3; ++i) wait("again");
  EXPECT_EQ(done.size(), 5u);  // the expired wait gave its slot back too
}

}  // namespace
}  // namespace came::service
