// The limits of the control plane (proto/came/v1/*.proto name them in comments). Servers
// check every request against them before any state changes and answer InvalidArgument.
#pragma once

#include <cstdint>

namespace came::service {

inline constexpr int64_t kMaxMessageBytes = 64ll << 20;  // any request or response
inline constexpr int kMaxWorldSize = 65536;
inline constexpr int64_t kMaxKeyBytes = 1024;           // a store key or barrier name
inline constexpr int64_t kMaxValueBytes = 4ll << 20;    // a store value
inline constexpr int64_t kMaxStoreKeys = 1ll << 20;     // keys held by the store
inline constexpr int64_t kMaxStoreBytes = 1ll << 30;    // bytes of keys and values held
inline constexpr int64_t kMaxStoreWaiters = 1ll << 16;  // store Gets waiting at once
// What the coordinator accepts: its largest request is a store value with its key.
inline constexpr int64_t kMaxCoordinatorRequestBytes = kMaxValueBytes + (64ll << 10);
inline constexpr int kMaxEndpoints = 16;
inline constexpr int64_t kMaxNameLength = 512;  // tensor, endpoint, host, file, digest
inline constexpr int64_t kMaxReasonBytes = 4096;
inline constexpr int64_t kMaxWaitSeconds = 3600;
inline constexpr int64_t kMaxPendingCheckpoints = 16;  // begun and not committed

// The rank service (rank.proto).
inline constexpr int64_t kMaxTensors = 100000;
inline constexpr int kMaxDims = 8;
inline constexpr int64_t kMaxTotalElements = 1ll << 40;
inline constexpr int kMaxParamGroups = 1024;
inline constexpr int64_t kMaxPathBytes = 4096;

// The version of the shard-plan algorithm (runtime/shard_plan.h); ranks must agree on it.
inline constexpr int64_t kShardPlanVersion = 1;

}  // namespace came::service
