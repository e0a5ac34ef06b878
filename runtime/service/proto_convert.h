// Conversions between the came.v1 coordinator messages and the plain C++ types of
// coordinator_types.h. Used by the gRPC adapter (server side) and the client; nothing
// else sees proto types.
#pragma once

#include "came/v1/coordinator.pb.h"
#include "runtime/service/coordinator_types.h"

namespace came::service {

v1::JobState ToProto(JobState state);
JobState FromProto(v1::JobState state);

void ToProto(const JobConfig& config, v1::JobConfig* out);
JobConfig FromProto(const v1::JobConfig& config);

void ToProto(const CheckpointInfo& info, v1::CheckpointInfo* out);
CheckpointInfo FromProto(const v1::CheckpointInfo& info);

void ToProto(const JobStatus& status, v1::JobStatusResponse* out);
JobStatus FromProto(const v1::JobStatusResponse& status);

}  // namespace came::service
