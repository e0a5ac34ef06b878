// Which GPUs a came-launch job uses and with which backend (Note [Launch devices]). Plain
// C++: GPUs are counted from the NVIDIA driver's /proc entries, never through a CUDA or
// driver library, so came-launch starts (and decides) on any machine.
//
// Note [Launch devices]
// The backend is nccl when asked for (--backend nccl, or --gpus), else gloo, GPUs visible or
// not: the engine does not step device buffers yet, so a nccl default would make every job
// on a GPU machine fail (make nccl the default once it does). Under nccl each local rank i
// gets one GPU: --gpus lists them, else the first --nproc visible ones, else all visible
// ones (--nproc may then be left out). rankd i runs with --device g and trainer i gets
// CAME_DEVICE=g. CUDA_VISIBLE_DEVICES is passed on unchanged to every process, so g is an
// ordinal among the visible devices for rankd and trainer alike (both see the same
// numbering, which CUDA IPC between them needs). `--backend nccl` on a machine without a
// visible GPU is a usage error naming the reason.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/launch/launch_options.h"

namespace came::launch {

// Returns the number of GPUs a CUDA program here would see: the entries of `gpus_dir` (the
// driver's /proc/driver/nvidia/gpus; 0 when it does not exist), narrowed by
// `cuda_visible_devices` when it is non-null as CUDA does (a list of ordinals or GPU-/MIG-
// UUIDs, read up to the first invalid entry; an empty value hides every GPU).
int VisibleGpuCount(const std::string& gpus_dir, const char* cuda_visible_devices);

struct DevicePlan {
  std::string backend;       // "gloo" or "nccl"
  int nproc = 0;             // local ranks
  std::vector<int> devices;  // nccl: the device of each local rank; gloo: empty
};

// Resolves the backend, the local rank count and their devices (Note [Launch devices]) from
// the options and the visible GPU count; InvalidArgument naming the flag and the reason
// otherwise (nccl without a GPU, a --gpus entry not visible, --nproc different from --gpus,
// more ranks than GPUs, --gpus under gloo, no --nproc under gloo).
absl::StatusOr<DevicePlan> ResolveDevices(const LaunchOptions& options, int visible_gpus);

}  // namespace came::launch
