// What each service served lately, as people read it on a dashboard:
// requests and failed attempts per second, time to first token and
// inter-token latency percentiles, over a sliding window of the
// controller's passes. Fed from the same load rounds the autoscalers read
// (controller/load.h), so it holds in both modes: `loadstar up`'s gateway
// in process and every gateway Pod's load report. Pure: time is passed in.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>

#include "controller/clock.h"
#include "gateway/routing_table.h"

namespace loadstar::controller {

// One service's traffic over the window; rates are per second of the time
// the window covers (at most its length).
struct TrafficSummary {
  double window_s = 0;  // how much time the numbers cover
  double requests_per_s = 0;
  double failures_per_s = 0;  // attempts that failed (5xx, cut, refused), retried or not
  std::optional<double> ttft_p50_s, ttft_p90_s, ttft_p99_s;
  std::optional<double> itl_p50_s, itl_p90_s;
};

// Increments of one service since the last round.
struct TrafficSample {
  uint64_t requests = 0;
  uint64_t failures = 0;
  std::array<uint64_t, gateway::Endpoint::kTtftBuckets> ttft{};
  std::array<uint64_t, gateway::Endpoint::kItlBuckets> itl{};
};

class Traffic {
 public:
  explicit Traffic(double window_s = 60) : window_s_(window_s) {}
  // A round of increments at `now`, by key (a service, or a service's
  // revision; one with no entry served nothing this round).
  void add(const std::map<std::string, TrafficSample>& round, Clock::time_point now);
  // Over the window up to `now`; zeros for a service never seen.
  TrafficSummary summary(const std::string& service, Clock::time_point now) const;
  // Forgets the services (keys) `keep` says no to.
  template <typename Keep>
  void retain(const Keep& keep) {
    std::erase_if(services_, [&](const auto& kv) { return !keep(kv.first); });
  }

 private:
  struct Entry {
    Clock::time_point at;
    TrafficSample sample;
  };
  const double window_s_;
  std::optional<Clock::time_point> first_;  // the first round: the window starts no earlier
  std::map<std::string, std::deque<Entry>> services_;
};

}  // namespace loadstar::controller
