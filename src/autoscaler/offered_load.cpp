#include "autoscaler/offered_load.h"

#include <algorithm>
#include <cmath>

namespace loadstar::autoscaler {

void OfferedLoad::observe(double now, const Counts& c) {
  const Point p{now, std::max(c.arrived_total, static_cast<double>(c.sent_total)),
                static_cast<double>(c.sent_total), c.in_flight,
                std::max(0.0, c.in_flight - c.engine_queued)};
  if (!points_.empty() && p.sent < points_.back().sent) points_.clear();  // a counter restarted
  if (!points_.empty() && now <= points_.back().now) return;
  if (!points_.empty()) {
    const Point& prev = points_.back();
    const double dt = now - prev.now;
    const double keep = std::exp2(-dt / o_.memory_s);
    // Finished since the last observation: sent, less what the in-flight
    // count grew by.
    const double finished = std::max(0.0, (p.sent - prev.sent) - (p.in_flight - prev.in_flight));
    running_s_ = running_s_ * keep + (prev.running + p.running) / 2 * dt;
    finished_ = finished_ * keep + finished;
    finished_total_ += finished;
  }
  points_.push_back(p);
  while (points_.size() > 1 && points_[1].now <= now - o_.max_window_s) points_.pop_front();
  // The shortest span back of at least window_s holding min_arrivals (the
  // longest there is, short of that), less any time before its first
  // arrival: a service busy again after a quiet spell is measured from when
  // its requests came back, not diluted by the quiet.
  size_t from = points_.size() - 1;
  while (from > 0) {
    --from;
    if (now - points_[from].now >= o_.window_s &&
        p.arrived - points_[from].arrived >= o_.min_arrivals)
      break;
  }
  while (from + 2 < points_.size() && points_[from + 1].arrived <= points_[from].arrived) ++from;
  const double span = now - points_[from].now;
  rate_ = span > 0 ? std::max(0.0, p.arrived - points_[from].arrived) / span : 0;
}

std::optional<OfferedLoad::Reading> OfferedLoad::reading() const {
  if (finished_total_ < o_.min_finished || !(finished_ > 0)) return std::nullopt;
  const double run = running_s_ / finished_;
  return Reading{rate_ * run, rate_, run};
}

}  // namespace loadstar::autoscaler
