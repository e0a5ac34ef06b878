// The one mapping between absl::Status and grpc::Status (the codes share their numbers and
// meanings). Only gRPC adapters and clients include this.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace came::service {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace came::service
