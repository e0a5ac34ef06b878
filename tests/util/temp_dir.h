// A fresh temporary folder for a test, removed with everything in it when it goes out of scope.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace came::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "came-test") {
    std::string t = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    path = mkdtemp(t.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::filesystem::path path;
};

}  // namespace came::testing
