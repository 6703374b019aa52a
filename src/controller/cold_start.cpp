#include "controller/cold_start.h"

#include <iterator>

namespace loadstar::controller {

namespace {
// Bucket bounds of the cold-start histograms, seconds: from a warm start on
// local disk to a download of a large model.
constexpr double kColdStartBounds[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}  // namespace

bool ColdStart::mark(ColdStartEvent event, Clock::time_point at) {
  if (events_[event] || !events_[kQueued]) return false;
  events_[event] = at;
  return event == kRouted;
}

void ColdStart::restart(Clock::time_point at) {
  for (auto& e : events_) e.reset();
  events_[kQueued] = at;
  ++starts_;
}

std::optional<double> ColdStart::seconds_to(int event) const {
  if (!events_[event] || !events_[kQueued]) return std::nullopt;
  return seconds_between(*events_[kQueued], *events_[event]);
}

std::map<std::string, double> ColdStart::phases() const {
  std::map<std::string, double> out;
  if (!events_[kQueued] || !events_[kRouted]) return out;
  Clock::time_point previous = *events_[kQueued];
  for (int i = 1; i < kColdStartEventCount; ++i) {
    if (!events_[i]) continue;
    out[kColdStartPhases[i - 1]] = seconds_between(previous, *events_[i]);
    previous = *events_[i];
  }
  out["total"] = seconds_between(*events_[kQueued], *events_[kRouted]);
  return out;
}

void ColdStartMetrics::record(const ColdStart& start) {
  for (const auto& [phase, seconds] : start.phases()) {
    MetricsText::Histogram& h = phases_[phase];
    if (h.bounds.empty()) {
      h.bounds.assign(std::begin(kColdStartBounds), std::end(kColdStartBounds));
      h.cumulative.assign(h.bounds.size(), 0);
    }
    for (size_t i = 0; i < h.bounds.size(); ++i) h.cumulative[i] += seconds <= h.bounds[i];
    ++h.count;
    h.sum += seconds;
  }
}

void ColdStartMetrics::render(MetricsText& text) const {
  auto& family = text.histogram(
      "loadstar_cold_start_phase_seconds",
      "Cold starts by phase: scheduling, staging, launching, loading, routing, and total "
      "(queued to routed)");
  for (const auto& [phase, h] : phases_) family.add(h, {{"phase", phase}});
}

}  // namespace loadstar::controller
