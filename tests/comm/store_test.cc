// One typed suite for every Store: InMemoryStore, FileStore and PrefixStore.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "runtime/comm/file_store.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/comm/prefix_store.h"
#include "tests/comm/comm_test_util.h"

namespace came::comm {
namespace {

using ::came::comm::testing::IsOk;
using ::came::comm::testing::StatusIs;
using ::came::comm::testing::TempDir;

struct InMemoryHarness {
  std::unique_ptr<InMemoryStore> store = InMemoryStore::Create();
  Store& get() { return *store; }
};

struct FileHarness {
  TempDir dir;
  std::unique_ptr<FileStore> store;
  FileHarness() {
    absl::StatusOr<std::unique_ptr<FileStore>> made = FileStore::Create(dir.path() + "/store");
    EXPECT_THAT(made, IsOk());
    if (made.ok()) store = std::move(*made);
  }
  Store& get() { return *store; }
};

struct PrefixHarness {
  std::unique_ptr<InMemoryStore> base = InMemoryStore::Create();
  std::unique_ptr<PrefixStore> store;
  PrefixHarness() {
    absl::StatusOr<std::unique_ptr<PrefixStore>> made = PrefixStore::Create("job7", *base);
    EXPECT_THAT(made, IsOk());
    if (made.ok()) store = std::move(*made);
  }
  Store& get() { return *store; }
};

template <typename Harness>
class StoreTest : public ::testing::Test {
 protected:
  Harness harness_;
  Store& store() { return harness_.get(); }
};

class StoreNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    if constexpr (std::is_same_v<T, InMemoryHarness>) return "InMemory";
    if constexpr (std::is_same_v<T, FileHarness>) return "File";
    return "Prefix";
  }
};

using StoreTypes = ::testing::Types<InMemoryHarness, FileHarness, PrefixHarness>;
TYPED_TEST_SUITE(StoreTest, StoreTypes, StoreNames);

TYPED_TEST(StoreTest, SetThenGetReturnsLatestValue) {
  ASSERT_THAT(this->store().Set("a", "1"), IsOk());
  EXPECT_EQ(*this->store().Get("a", absl::Seconds(1)), "1");
  ASSERT_THAT(this->store().Set("a", "two"), IsOk());
  EXPECT_EQ(*this->store().Get("a", absl::Seconds(1)), "two");
}

TYPED_TEST(StoreTest, KeysAndValuesMayHoldAnyBytes) {
  const std::string key = "gloo/rank 3:\xff";
  const std::string value("a\0b\nc", 5);
  ASSERT_THAT(this->store().Set(key, value), IsOk());
  absl::StatusOr<std::string> got = this->store().Get(key, absl::Seconds(1));
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(*got, value);
  ASSERT_THAT(this->store().Set("empty", ""), IsOk());
  EXPECT_EQ(*this->store().Get("empty", absl::Seconds(1)), "");
}

TYPED_TEST(StoreTest, GetWaitsForALaterSet) {
  const absl::Time start = absl::Now();
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(100));
    EXPECT_THAT(this->store().Set("late", "v"), IsOk());
  });
  absl::StatusOr<std::string> got = this->store().Get("late", absl::Seconds(10));
  setter.join();
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(*got, "v");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(90));
}

TYPED_TEST(StoreTest, GetTimesOutWithDeadlineExceeded) {
  const absl::Time start = absl::Now();
  EXPECT_THAT(this->store().Get("never", absl::Milliseconds(150)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_GE(waited, absl::Milliseconds(140));
  EXPECT_LT(waited, absl::Seconds(2));
}

TYPED_TEST(StoreTest, AddCountsFromZero) {
  EXPECT_EQ(*this->store().Add("n", 5), 5);
  EXPECT_EQ(*this->store().Add("n", -7), -2);
  EXPECT_EQ(*this->store().Add("n", 0), -2);
  EXPECT_EQ(*this->store().Get("n", absl::Seconds(1)), "-2");
}

TYPED_TEST(StoreTest, AddOnANonIntegerIsInvalidArgument) {
  ASSERT_THAT(this->store().Set("word", "hello"), IsOk());
  EXPECT_THAT(this->store().Add("word", 1), StatusIs(absl::StatusCode::kInvalidArgument));
}

TYPED_TEST(StoreTest, AddIsAtomicAcrossThreads) {
  constexpr int kThreads = 6;
  constexpr int kAdds = 100;
  std::vector<std::vector<int64_t>> seen(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kAdds; ++i) {
        absl::StatusOr<int64_t> v = this->store().Add("counter", 1);
        EXPECT_THAT(v, IsOk());
        if (v.ok()) seen[t].push_back(*v);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::vector<int64_t> all;
  for (const auto& s : seen) all.insert(all.end(), s.begin(), s.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), size_t{kThreads * kAdds});
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i], static_cast<int64_t>(i + 1));
}

TEST(FileStoreTest, CreateRejectsBadDirectories) {
  EXPECT_THAT(FileStore::Create(""), StatusIs(absl::StatusCode::kInvalidArgument));
  TempDir dir;
  const std::string file = dir.path() + "/plain_file";
  {
    absl::StatusOr<std::unique_ptr<FileStore>> made = FileStore::Create(dir.path());
    ASSERT_THAT(made, IsOk());
    ASSERT_THAT((*made)->Set("x", "y"), IsOk());
  }
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  EXPECT_THAT(FileStore::Create(file + "/sub"), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(FileStoreTest, KeyTooLongIsInvalidArgument) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<FileStore>> store = FileStore::Create(dir.path());
  ASSERT_THAT(store, IsOk());
  EXPECT_THAT((*store)->Set(std::string(300, 'k'), "v"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// Two real processes share one directory: Add stays atomic and Get sees the other's Set.
TEST(FileStoreTest, WorksAcrossProcesses) {
  TempDir dir;
  constexpr int kAdds = 300;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    absl::StatusOr<std::unique_ptr<FileStore>> store = FileStore::Create(dir.path());
    if (!store.ok()) _exit(10);
    for (int i = 0; i < kAdds; ++i) {
      if (!(*store)->Add("counter", 1).ok()) _exit(11);
    }
    if (!(*store)->Set("child_done", "yes").ok()) _exit(12);
    absl::StatusOr<std::string> reply = (*store)->Get("parent_done", absl::Seconds(20));
    _exit(reply.ok() && *reply == "ok" ? 0 : 13);
  }
  absl::StatusOr<std::unique_ptr<FileStore>> store = FileStore::Create(dir.path());
  ASSERT_THAT(store, IsOk());
  for (int i = 0; i < kAdds; ++i) ASSERT_THAT((*store)->Add("counter", 1), IsOk());
  EXPECT_EQ(*(*store)->Get("child_done", absl::Seconds(20)), "yes");
  ASSERT_THAT((*store)->Set("parent_done", "ok"), IsOk());
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
  EXPECT_EQ(*(*store)->Add("counter", 0), 2 * kAdds);
}

TEST(PrefixStoreTest, NamespacesKeysInTheBaseStore) {
  std::unique_ptr<InMemoryStore> base = InMemoryStore::Create();
  absl::StatusOr<std::unique_ptr<PrefixStore>> a = PrefixStore::Create("a", *base);
  absl::StatusOr<std::unique_ptr<PrefixStore>> b = PrefixStore::Create("b", *base);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  ASSERT_THAT((*a)->Set("k", "1"), IsOk());
  ASSERT_THAT((*b)->Set("k", "2"), IsOk());
  EXPECT_EQ(*base->Get("a/k", absl::Seconds(1)), "1");
  EXPECT_EQ(*(*b)->Get("k", absl::Seconds(1)), "2");
  EXPECT_THAT((*a)->Get("missing", absl::Milliseconds(10)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(PrefixStore::Create("", *base), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace came::comm
