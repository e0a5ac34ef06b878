// Bearer-token authentication of gRPC calls, shared by every service of the job: a call
// carries metadata "authorization: Bearer <token>" with the job's shared secret.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "grpcpp/server_context.h"
#include "grpcpp/client_context.h"

namespace came::service {

// Returns the token of "authorization: Bearer <token>", or "" when there is none.
std::string TokenFromMetadata(const grpc::ServerContextBase& ctx);

// Returns OK when the call carries `secret`; Unauthenticated with a message that says what to
// send otherwise.
absl::Status CheckBearerToken(const grpc::ServerContextBase& ctx, std::string_view secret);

// Adds the job's token to an outgoing call.
void AddBearerToken(grpc::ClientContext& ctx, std::string_view token);

}  // namespace came::service
