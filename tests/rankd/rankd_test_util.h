// Helpers shared by the came-rankd tests: the learning-rate schedule they step with and a
// check that a shared-memory segment is gone.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/runtime/test_model.h"

namespace came::rankd_test {

// One lr per group of TestGroups(): a warm-up over the first three steps, then the groups' lr.
inline std::vector<double> StepLr(int64_t step) {
  const double f = step < 4 ? 0.25 * static_cast<double>(step) : 1.0;
  const auto g = came::testing::TestGroups();
  return {g[0].lr * f, g[1].lr * f};
}

// Returns whether the segment exists; any error but ENOENT is a test failure.
inline bool ShmExists(const std::string& name) {
  const int fd = shm_open(name.c_str(), O_RDONLY, 0);
  if (fd >= 0) {
    close(fd);
    return true;
  }
  EXPECT_EQ(errno, ENOENT) << name << ": " << std::strerror(errno);
  return false;
}

}  // namespace came::rankd_test
