#include "runtime/launch/gpus.h"

#include <filesystem>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace came::launch {

int VisibleGpuCount(const std::string& gpus_dir, const char* cuda_visible_devices) {
  std::error_code ec;
  int present = 0;
  for (auto it = std::filesystem::directory_iterator(gpus_dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++present;
  if (cuda_visible_devices == nullptr) return present;
  int visible = 0;
  for (absl::string_view entry : absl::StrSplit(cuda_visible_devices, ',')) {
    int ordinal = 0;
    const bool uuid = entry.substr(0, 4) == "GPU-" || entry.substr(0, 4) == "MIG-";
    if (!uuid && (!absl::SimpleAtoi(entry, &ordinal) || ordinal < 0 || ordinal >= present)) break;
    ++visible;
  }
  return std::min(visible, present);
}

absl::StatusOr<DevicePlan> ResolveDevices(const LaunchOptions& options, int visible_gpus) {
  DevicePlan plan;
  // gloo stays the default on GPU machines too until the engine steps device buffers (the
  // GPU engine is not finished: a nccl rank refuses SyncParameters today), so that a job on a
  // GPU machine trains on the CPU rather than failing; --backend nccl or --gpus asks for GPUs.
  plan.backend = !options.backend.empty() ? options.backend : !options.gpus.empty() ? "nccl" : "gloo";
  if (plan.backend == "gloo") {
    if (!options.gpus.empty())
      return absl::InvalidArgumentError("--gpus needs --backend nccl (gloo trains on the CPU)");
    if (options.nproc < 1)
      return absl::InvalidArgumentError("--nproc (or --nproc-per-node) is required");
    plan.nproc = options.nproc;
    return plan;
  }
  if (visible_gpus == 0)
    return absl::InvalidArgumentError(
        "--backend nccl (and --gpus) needs a GPU, but none is visible here (no NVIDIA driver entries in "
        "/proc/driver/nvidia/gpus, or CUDA_VISIBLE_DEVICES hides them): use --backend gloo");
  if (!options.gpus.empty()) {
    std::set<int> seen;
    for (int g : options.gpus) {
      if (g >= visible_gpus)
        return absl::InvalidArgumentError(absl::StrCat(
            "--gpus names GPU ", g, ", but only ", visible_gpus, " are visible (0 to ",
            visible_gpus - 1, ")"));
      if (!seen.insert(g).second)
        return absl::InvalidArgumentError(absl::StrCat("--gpus names GPU ", g, " twice"));
    }
    if (options.nproc > 0 && options.nproc != static_cast<int>(options.gpus.size()))
      return absl::InvalidArgumentError(absl::StrCat(
          "--nproc ", options.nproc, " differs from the ", options.gpus.size(),
          " GPUs of --gpus (one rank per GPU: drop --nproc)"));
    plan.devices = options.gpus;
  } else {
    const int n = options.nproc > 0 ? options.nproc : visible_gpus;
    if (n > visible_gpus)
      return absl::InvalidArgumentError(absl::StrCat(
          "--nproc ", n, " under --backend nccl needs ", n, " GPUs, but ", visible_gpus,
          " are visible (one rank per GPU)"));
    for (int g = 0; g < n; ++g) plan.devices.push_back(g);
  }
  plan.nproc = static_cast<int>(plan.devices.size());
  return plan;
}

}  // namespace came::launch
