// Runs a callable when the scope ends, however it ends (return, co_return or
// an exception): for counters and reservations that must be given back.
#pragma once
#include <utility>

namespace loadstar {

template <typename F>
class [[nodiscard]] ScopeExit {
 public:
  explicit ScopeExit(F f) : f_(std::move(f)) {}
  ~ScopeExit() {
    if (armed_) f_();
  }
  ScopeExit(const ScopeExit&) = delete;
  ScopeExit& operator=(const ScopeExit&) = delete;
  // The scope ended the normal way and did the work itself.
  void dismiss() { armed_ = false; }

 private:
  F f_;
  bool armed_ = true;
};

}  // namespace loadstar
