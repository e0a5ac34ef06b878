// came-launch: see launch_options.cc (LaunchUsage) and launcher.h.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/launch/launch_options.h"
#include "runtime/launch/launcher.h"
#include "runtime/launch/output_pump.h"
#include "runtime/launch/signal_pipe.h"

namespace {

// The build folder: <build>/bin/came-launch -> <build>; the configured one otherwise.
std::filesystem::path BuildDir(const std::filesystem::path& exe_dir) {
  if (exe_dir.filename() == "bin") return exe_dir.parent_path();
  return CAME_BINARY_DIR;
}

}  // namespace

int main(int argc, char** argv) {
  using came::launch::WriteAll;
  const std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<came::launch::LaunchOptions> options = came::launch::ParseLaunchArgs(args);
  if (!options.ok()) {
    WriteAll(2, absl::StrCat("came-launch: ", options.status().message(),
                             " (came-launch --help for usage)\n"));
    return 2;
  }
  if (options->help) {
    WriteAll(1, came::launch::LaunchUsage());
    return 0;
  }
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) {
    WriteAll(2, absl::StrCat("came-launch: cannot read /proc/self/exe: ", ec.message(), "\n"));
    return 1;
  }
  absl::StatusOr<std::unique_ptr<came::launch::SignalPipe>> signals =
      came::launch::SignalPipe::Install();
  if (!signals.ok()) {
    WriteAll(2, absl::StrCat("came-launch: ", signals.status().message(), "\n"));
    return 1;
  }
  const std::filesystem::path build_dir = BuildDir(exe.parent_path());
  came::launch::LaunchContext context{
      .bin_dir = options->bin_dir.empty() ? exe.parent_path().string() : options->bin_dir,
      .python_path = {(std::filesystem::path(CAME_SOURCE_DIR) / "clients" / "python").string(),
                      (build_dir / "python").string()},
      .interrupt_fd = (*signals)->read_fd()};
  return came::launch::RunLaunch(*options, context);
}
