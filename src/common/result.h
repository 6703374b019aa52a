// Expected failures (bad input, network, disk) travel as Result<T>; programmer
// errors stop the process through LS_CHECK. No exception crosses a library
// boundary on the request path.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include <fmt/core.h>

namespace loadstar {

enum class ErrorCode {
  kInvalidArgument,    // the caller sent something malformed
  kNotFound,           // a named thing does not exist
  kPermissionDenied,   // the peer refused our credentials
  kOutOfRange,         // a value is outside what is allowed (too long, too big)
  kResourceExhausted,  // a queue or pool is full; retry later
  kUnavailable,        // not ready yet, or a peer is down
  kIo,                 // the file system or network failed
  kCorrupt,            // bytes on disk or on the wire are not what they claim
  kCancelled,
  kConflict,  // the object changed since it was read (optimistic concurrency); re-read, retry
  kExpired,   // a version or token is too old to continue from (Kubernetes' 410 Gone)
  kInternal,
};

const char* error_code_name(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;

  // Prefixes the message with where the error happened: "file.yaml: ...".
  Error&& context(std::string_view where) && {
    message = fmt::format("{}: {}", where, message);
    return std::move(*this);
  }
};

template <typename... Args>
Error make_error(ErrorCode code, fmt::format_string<Args...> format, Args&&... args) {
  return Error{code, fmt::format(format, std::forward<Args>(args)...)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

// Result<void>: success or an Error.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_;
  bool ok_ = true;
};

inline Status ok_status() {
  return Status();
}

}  // namespace loadstar

#define LS_CONCAT_INNER(a, b) a##b
#define LS_CONCAT(a, b) LS_CONCAT_INNER(a, b)

// LS_RETURN_IF_ERROR(expr): expr yields Status or Result<T>; returns its Error.
#define LS_RETURN_IF_ERROR(expr)                                \
  do {                                                          \
    auto&& ls_status_ = (expr);                                 \
    if (!ls_status_.ok()) return std::move(ls_status_).error(); \
  } while (0)

// LS_ASSIGN_OR_RETURN(decl, expr): decl = value of the Result expr, or return its Error.
#define LS_ASSIGN_OR_RETURN(decl, expr) \
  LS_ASSIGN_OR_RETURN_IMPL(LS_CONCAT(ls_result_, __LINE__), decl, expr)
#define LS_ASSIGN_OR_RETURN_IMPL(tmp, decl, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).error();   \
  decl = std::move(tmp).value()
