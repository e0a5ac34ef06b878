#include "runtime/service/validation.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/service/limits.h"

namespace came::service {

bool ConstantTimeEquals(std::string_view given, std::string_view secret) {
  unsigned char diff = given.size() != secret.size();
  for (size_t i = 0; i < secret.size(); ++i) {
    unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= g ^ static_cast<unsigned char>(secret[i]);
  }
  return diff == 0;
}

absl::Status CheckName(std::string_view field, std::string_view value, int64_t max_bytes) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(std::string(field), " is empty"));
  return CheckLength(field, value, max_bytes);
}

absl::Status CheckLength(std::string_view field, std::string_view value, int64_t max_bytes) {
  if (static_cast<int64_t>(value.size()) > max_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat("%s is %d bytes long; the limit is %d",
                                                      field, value.size(), max_bytes));
  }
  return absl::OkStatus();
}

absl::Status CheckRank(int64_t rank, int world_size) {
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("rank %d is outside [0, %d)", rank, world_size));
  }
  return absl::OkStatus();
}

absl::Status CheckFileName(std::string_view field, std::string_view name) {
  if (absl::Status s = CheckName(field, name, kMaxNameLength); !s.ok()) return s;
  if (name == "." || name == ".." || name.find('/') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), " must be a plain file name (no '/', not '.' or '..')"));
  }
  return absl::OkStatus();
}

absl::Status CheckSha256Hex(std::string_view field, std::string_view digest) {
  bool ok = digest.size() == 64;
  for (char c : digest) ok = ok && (absl::ascii_isdigit(c) || (c >= 'a' && c <= 'f'));
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), " must be 64 lowercase hexadecimal digits"));
  }
  return absl::OkStatus();
}

}  // namespace came::service
