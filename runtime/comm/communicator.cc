#include "runtime/comm/communicator.h"

namespace came::comm {

size_t ElemSize(ElemType t) {
  switch (t) {
    case ElemType::kFloat32: return 4;
    case ElemType::kFloat64: return 8;
    case ElemType::kFloat16: return 2;
    case ElemType::kBFloat16: return 2;
    case ElemType::kInt32: return 4;
    case ElemType::kInt64: return 8;
    case ElemType::kUInt8: return 1;
  }
  return 0;
}

std::string_view CollectiveName(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllReduce: return "all_reduce";
    case CollectiveKind::kReduceScatter: return "reduce_scatter";
    case CollectiveKind::kAllGather: return "all_gather";
    case CollectiveKind::kBroadcast: return "broadcast";
    case CollectiveKind::kBarrier: return "barrier";
    case CollectiveKind::kCount: break;
  }
  return "unknown";
}

}  // namespace came::comm
