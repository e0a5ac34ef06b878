#include "runtime/service/auth.h"

#include "runtime/service/validation.h"

namespace came::service {
namespace {

constexpr char kAuthKey[] = "authorization";
constexpr std::string_view kBearer = "Bearer ";

}  // namespace

std::string TokenFromMetadata(const grpc::ServerContextBase& ctx) {
  auto it = ctx.client_metadata().find(kAuthKey);
  if (it == ctx.client_metadata().end()) return "";
  std::string value(it->second.data(), it->second.size());
  if (value.compare(0, kBearer.size(), kBearer) != 0) return "";
  return value.substr(kBearer.size());
}

absl::Status CheckBearerToken(const grpc::ServerContextBase& ctx, std::string_view secret) {
  const std::string token = TokenFromMetadata(ctx);
  if (token.empty())
    return absl::UnauthenticatedError(
        "missing token: send gRPC metadata 'authorization: Bearer <token>'");
  if (!ConstantTimeEquals(token, secret))
    return absl::UnauthenticatedError("wrong token for this job");
  return absl::OkStatus();
}

void AddBearerToken(grpc::ClientContext& ctx, std::string_view token) {
  ctx.AddMetadata(kAuthKey, std::string(kBearer) + std::string(token));
}

}  // namespace came::service
