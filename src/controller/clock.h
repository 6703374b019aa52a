// The controller's time, passed in: production reads the machine's clocks,
// a test moves a fake one between reconcile passes (as Kubernetes
// controllers take a clock.Clock), so restart backoffs, drains and idle
// windows are tested without sleeping.
#pragma once

#include <chrono>

namespace loadstar::controller {

class Clock {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  virtual ~Clock() = default;
  // For every interval the controller measures.
  virtual time_point now() const = 0;
  // For stamps people read (scaling events).
  virtual std::chrono::system_clock::time_point wall() const = 0;
};

class RealClock final : public Clock {
 public:
  time_point now() const override { return std::chrono::steady_clock::now(); }
  std::chrono::system_clock::time_point wall() const override {
    return std::chrono::system_clock::now();
  }
};

inline double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace loadstar::controller
