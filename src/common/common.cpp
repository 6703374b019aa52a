#include <cstdio>
#include <cstdlib>

#include "common/check.h"
#include "common/result.h"

namespace loadstar {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "invalid_argument";
    case ErrorCode::kNotFound:
      return "not_found";
    case ErrorCode::kPermissionDenied:
      return "permission_denied";
    case ErrorCode::kOutOfRange:
      return "out_of_range";
    case ErrorCode::kResourceExhausted:
      return "resource_exhausted";
    case ErrorCode::kUnavailable:
      return "unavailable";
    case ErrorCode::kIo:
      return "io";
    case ErrorCode::kCorrupt:
      return "corrupt";
    case ErrorCode::kCancelled:
      return "cancelled";
    case ErrorCode::kConflict:
      return "conflict";
    case ErrorCode::kExpired:
      return "expired";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "unknown";
}

namespace detail {
void check_failed(const char* file, int line, const char* condition, const char* message) {
  std::fprintf(stderr, "%s:%d: check failed: %s%s%s\n", file, line, condition, message ? ": " : "",
               message ? message : "");
  std::fflush(stderr);
  std::abort();
}
}  // namespace detail

}  // namespace loadstar
