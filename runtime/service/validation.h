// Checks of the values a request carries (the limits are in limits.h): each returns
// InvalidArgument with a message naming the field and the limit.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace came::service {

// Checks that value is non-empty and at most max_bytes long.
// Returns whether given == secret, in time that depends only on the length of `secret`.
bool ConstantTimeEquals(std::string_view given, std::string_view secret);

absl::Status CheckName(std::string_view field, std::string_view value, int64_t max_bytes);

// Checks that value is at most max_bytes long (it may be empty).
absl::Status CheckLength(std::string_view field, std::string_view value, int64_t max_bytes);

// Checks 0 <= rank < world_size.
absl::Status CheckRank(int64_t rank, int world_size);

// Checks that name is a plain file name: non-empty, no '/', no NUL, not "." or "..".
absl::Status CheckFileName(std::string_view field, std::string_view name);

// Checks that digest is 64 lowercase hexadecimal digits.
absl::Status CheckSha256Hex(std::string_view field, std::string_view digest);

}  // namespace came::service
