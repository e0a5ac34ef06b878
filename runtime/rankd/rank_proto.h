// Conversions between the rank service's proto messages (came.v1) and RankCore's plain types,
// shared by the server adapter (rank_service.cc) and the C++ client (rank_client.cc).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "came/v1/rank.pb.h"
#include "runtime/rankd/rank_core.h"

namespace came::rankd {

// Returns the dtype; InvalidArgument naming `who` for DTYPE_UNSPECIFIED and unknown values.
absl::StatusOr<DType> DTypeFromProto(v1::DType t, const std::string& who);
v1::DType DTypeToProto(DType t);

// Writes every field of `h` (all set explicitly: an explicit 0 is a value).
void HyperToProto(const CameHyper& h, v1::CameHyperparameters* out);

// Returns the values a step sets (the fields present in `h`).
HyperOverride HyperOverrideFromProto(const v1::CameHyperparameters& h);

// Converts a proto manifest; InvalidArgument for unknown dtypes. Unset hyperparameters take
// `defaults` (the job's configuration). Limits are checked by ValidateManifest.
absl::StatusOr<Manifest> ManifestFromProto(const v1::AttachRequest& req, const CameHyper& defaults);

// Returns the Attach request for a manifest.
v1::AttachRequest ManifestToProto(const Manifest& manifest);

}  // namespace came::rankd
