// Cold starts, phase by phase: queued (the replica exists) -> placed (the
// scheduler gave it a node and devices) -> staged (its model directory is
// ready) -> started (engine process launched) -> ready (its health check
// answers) -> routed (in the gateway's table). A ColdStart is one replica's
// current timeline; ColdStartMetrics keeps every finished one as per-phase
// histograms for /metrics.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/metrics_text.h"
#include "controller/clock.h"

namespace loadstar::controller {

inline constexpr const char* kColdStartEvents[] = {"queued",  "placed", "staged",
                                                   "started", "ready",  "routed"};
// The phase that ends at each event after the first.
inline constexpr const char* kColdStartPhases[] = {"scheduling", "staging", "launching", "loading",
                                                   "routing"};
inline constexpr int kColdStartEventCount = 6;
enum ColdStartEvent { kQueued, kPlaced, kStaged, kStarted, kReady, kRouted };

class ColdStart {
 public:
  // A timeline begun at `queued`.
  explicit ColdStart(Clock::time_point queued) { events_[kQueued] = queued; }
  // One that was not watched from its start (an engine taken over): no
  // event is recorded.
  ColdStart() = default;

  // Marks `event` once per start. True when this completed the start
  // (routed), so its phases can be recorded.
  bool mark(ColdStartEvent event, Clock::time_point at);
  // A new start (after a crash or a re-placement) is queued at `at`.
  void restart(Clock::time_point at);

  // Seconds from queued to each event; unset: not yet.
  std::optional<double> seconds_to(int event) const;
  // Each phase's seconds (a phase whose start was not marked counts from
  // the last marked event), and "total". Empty unless routed.
  std::map<std::string, double> phases() const;
  uint32_t starts() const { return starts_; }

 private:
  std::optional<Clock::time_point> events_[kColdStartEventCount];
  uint32_t starts_ = 1;
};

class ColdStartMetrics {
 public:
  void record(const ColdStart& start);
  // loadstar_cold_start_phase_seconds, by phase.
  void render(MetricsText& text) const;

 private:
  std::map<std::string, MetricsText::Histogram> phases_;
};

}  // namespace loadstar::controller
