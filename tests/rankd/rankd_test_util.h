// Helpers shared by the came-rankd tests: the engine tests' learning-rate schedule and a
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
#include "tests/runtime/reference_model.h"
#include "tests/runtime/test_model.h"

namespace came::rankd_test {

using ::came::testing::StepLr;  // the lr schedule the engine tests step with

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
