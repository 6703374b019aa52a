// Checks for programmer errors: a broken invariant stops the process with the
// place and the condition. They stay on in release builds.
#pragma once

namespace loadstar::detail {
[[noreturn]] void check_failed(const char* file, int line, const char* condition,
                               const char* message);
}  // namespace loadstar::detail

#define LS_CHECK(cond)                                                      \
  do {                                                                      \
    if (!(cond)) [[unlikely]]                                               \
      ::loadstar::detail::check_failed(__FILE__, __LINE__, #cond, nullptr); \
  } while (0)

#define LS_CHECK_MSG(cond, msg)                                           \
  do {                                                                    \
    if (!(cond)) [[unlikely]]                                             \
      ::loadstar::detail::check_failed(__FILE__, __LINE__, #cond, (msg)); \
  } while (0)
