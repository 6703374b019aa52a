#include "agent/source_policy.h"

#include <arpa/inet.h>

#include <array>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

namespace loadstar::agent {

namespace fs = std::filesystem;

namespace {

Status refused(std::string_view address, std::string_view why) {
  return make_error(ErrorCode::kPermissionDenied, "address {} is {}; sources may not use it",
                    address, why);
}

Status admit_v4(std::string_view address, const unsigned char* a, bool allow_loopback) {
  if (a[0] == 169 && a[1] == 254) return refused(address, "link-local (cloud metadata service)");
  if (a[0] == 100 && a[1] == 100 && a[2] == 100 && a[3] == 200)
    return refused(address, "a cloud metadata service");
  if (a[0] == 0) return refused(address, "unspecified");
  if (a[0] >= 224) return refused(address, "multicast or broadcast");
  if (a[0] == 127 && !allow_loopback) return refused(address, "loopback");
  return ok_status();
}

// "scheme://rest" → {scheme, rest}; scheme empty when not of that shape.
std::pair<std::string_view, std::string_view> split_scheme(std::string_view uri) {
  const size_t sep = uri.find("://");
  if (sep == std::string_view::npos || sep == 0) return {};
  return {uri.substr(0, sep), uri.substr(sep + 3)};
}

std::string canonical_dir(std::string_view path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::path(std::string(path)), ec);
  if (ec) p = fs::path(std::string(path)).lexically_normal();
  return p.string();
}

}  // namespace

Status admit_fetch_address(std::string_view address, bool allow_loopback) {
  const std::string text(address);
  unsigned char bytes[16];
  if (inet_pton(AF_INET, text.c_str(), bytes) == 1) return admit_v4(address, bytes, allow_loopback);
  if (inet_pton(AF_INET6, text.c_str(), bytes) != 1)
    return make_error(ErrorCode::kInvalidArgument, "'{}' is not an IP address", address);
  static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(bytes, kMapped, 12) == 0) return admit_v4(address, bytes + 12, allow_loopback);
  static constexpr unsigned char kAwsMetadata[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0,    0,
                                                     0,    0,    0,    0,    0, 0, 0x02, 0x54};
  if (std::memcmp(bytes, kAwsMetadata, 16) == 0)
    return refused(address, "a cloud metadata service");
  if (bytes[0] == 0xfe && (bytes[1] & 0xc0) == 0x80) return refused(address, "link-local");
  if (bytes[0] == 0xff) return refused(address, "multicast");
  static constexpr unsigned char kZero[16] = {};
  if (std::memcmp(bytes, kZero, 15) == 0) {
    if (bytes[15] == 0) return refused(address, "unspecified");
    if (bytes[15] == 1 && !allow_loopback) return refused(address, "loopback");
  }
  return ok_status();
}

Result<SourcePolicy> SourcePolicy::create(std::vector<std::string> allow, bool allow_loopback) {
  SourcePolicy policy;
  policy.allow_loopback_ = allow_loopback;
  for (auto& entry : allow) {
    auto [scheme, rest] = split_scheme(entry);
    if (scheme != "file" && scheme != "http" && scheme != "https" && scheme != "hf" &&
        scheme != "s3")
      return make_error(ErrorCode::kInvalidArgument,
                        "--source-allow '{}': not SCHEME:// or SCHEME://PREFIX with a scheme of "
                        "file, http, https, hf, s3",
                        entry);
    if (scheme == "file") {
      if (!rest.starts_with("/"))
        return make_error(ErrorCode::kInvalidArgument,
                          "--source-allow '{}': file:// needs an absolute directory", entry);
      entry = "file://" + canonical_dir(rest);
    }
    policy.allow_.push_back(entry);
  }
  return policy;
}

Status SourcePolicy::admit(std::string_view uri) const {
  if (allow_.empty()) return ok_status();
  auto [scheme, rest] = split_scheme(uri);
  for (const auto& entry : allow_) {
    auto [allowed_scheme, prefix] = split_scheme(entry);
    if (allowed_scheme != scheme) continue;
    if (prefix.empty()) return ok_status();
    if (scheme == "file") {
      if (!rest.starts_with("/")) continue;  // open_source refuses relative paths too
      const std::string path = canonical_dir(rest);
      if (path == prefix ||
          (path.starts_with(prefix) && (prefix.ends_with("/") || path[prefix.size()] == '/')))
        return ok_status();
      continue;
    }
    if (!rest.starts_with(prefix)) continue;
    if (rest.size() == prefix.size() || prefix.ends_with("/")) return ok_status();
    const char next = rest[prefix.size()];
    if (next == '/' || next == '@' || next == '?') return ok_status();
  }
  std::string allowed;
  for (const auto& e : allow_) allowed += (allowed.empty() ? "" : ", ") + e;
  const size_t query = uri.find('?');
  return make_error(ErrorCode::kPermissionDenied,
                    "source '{}' is not allowed on this agent (--source-allow: {})",
                    uri.substr(0, query), allowed);
}

}  // namespace loadstar::agent
