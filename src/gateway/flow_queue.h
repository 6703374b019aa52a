// Flow control's pure core: when a service's replicas count as saturated,
// how much room they have left, and the order in which waiting requests
// leave the gateway's queue (as llm-d's flow control orders them: strict
// priority bands, round-robin across tenants within a band, first come
// first served within a tenant; with a TTFT SLO, within a tenant, the
// oldest request that can still meet it first).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace loadstar::gateway {

struct Endpoint;

// A service's saturation thresholds (spec.routing.flowControl); a replica is
// saturated when it reaches any one that is set.
struct FlowControl {
  std::optional<uint32_t> max_in_flight;  // requests this gateway has on it
  std::optional<double> max_waiting;      // the engine's queue, as scraped
  std::optional<double> max_kv_usage;     // the engine's KV-cache use, as scraped
  uint32_t max_queued = 1024;
  double queue_timeout_s = 60;
  bool enabled() const { return max_in_flight || max_waiting || max_kv_usage; }
};

// The share of a TTFT SLO a request may spend queued and still be served
// in time: the rest is left for its prefill on the replica.
inline constexpr double kQueueShareOfSlo = 0.75;
// FlowQueue::set_serve_within's limit for a TTFT SLO (seconds; the queue's
// times are milliseconds of the same clock): none without an SLO.
inline std::optional<int64_t> serve_within_ms(std::optional<double> ttft_slo_s) {
  if (!ttft_slo_s) return std::nullopt;
  return static_cast<int64_t>(*ttft_slo_s * kQueueShareOfSlo * 1000 + 0.5);
}

// Scraped values older than this do not count: an engine whose metrics
// stopped coming is not known to be saturated.
inline constexpr int64_t kStaleMetricsMs = 2000;

bool saturated(const FlowControl& flow, const Endpoint& endpoint, int64_t now_ms);

// How many more requests `endpoints` take before every one is saturated: the
// in-flight room of the unsaturated ones, or kUnlimited when one of them is
// unsaturated and no in-flight limit is set. 0 with no endpoints.
inline constexpr uint64_t kUnlimited = UINT64_MAX;
uint64_t room(const FlowControl& flow, std::span<const std::shared_ptr<Endpoint>> endpoints,
              int64_t now_ms);

// The endpoints of `candidates` that are not saturated (written to `out`),
// or `candidates` when every one is or flow control is off.
std::span<Endpoint* const> unsaturated(const FlowControl& flow,
                                       std::span<Endpoint* const> candidates, int64_t now_ms,
                                       std::vector<Endpoint*>& out);

// The requests waiting for one service, by id. Not thread-safe.
class FlowQueue {
 public:
  explicit FlowQueue(size_t capacity) : capacity_(capacity) {}
  // A smaller capacity evicts nobody; pushes are refused until below it.
  void set_capacity(size_t capacity) { capacity_ = capacity; }
  // Within a tenant's requests, those that arrived less than `ms` ago leave
  // first, oldest first, and only then the older ones, oldest first:
  // under a backlog a request past its SLO is a miss whenever it is served,
  // so the queue serves the ones that can still meet theirs (the idea of
  // adaptive LIFO and CoDel's, applied to a TTFT deadline). Unset: first
  // come, first served.
  void set_serve_within(std::optional<int64_t> ms) { serve_within_ms_ = ms; }

  struct Pushed {
    bool queued = false;
    // A full queue makes room for a higher priority by dropping the newest
    // request of the lowest band's longest flow.
    std::optional<uint64_t> evicted;
  };
  // Queues `id`, a request that arrived at `arrived_ms` (requests are kept
  // in order of arrival), unless the queue is full of requests at
  // `priority` or above.
  Pushed push(uint64_t id, int32_t priority, const std::string& tenant, int64_t arrived_ms = 0);
  // The next to leave at `now_ms`: highest priority, then the tenant whose
  // turn it is, then (set_serve_within) the oldest still within it.
  std::optional<uint64_t> pop(int64_t now_ms = 0);
  // Takes `id` out (it timed out, its client left); false if not queued.
  bool remove(uint64_t id);
  size_t size() const { return where_.size(); }
  // How many of them arrived at or before `ms` (with an SLO, at `now - SLO`:
  // those that have missed it whenever they are served).
  size_t arrived_by(int64_t ms) const;
  bool empty() const { return where_.empty(); }

 private:
  struct Queued {
    uint64_t id;
    int64_t arrived_ms;
  };
  struct Band {
    std::deque<std::string> turns;                              // tenants with requests, next first
    std::unordered_map<std::string, std::deque<Queued>> flows;  // oldest first
  };
  struct Place {
    int32_t priority;
    std::string tenant;
  };
  void erase(std::map<int32_t, Band, std::greater<>>::iterator band, const std::string& tenant,
             uint64_t id);

  size_t capacity_;
  std::optional<int64_t> serve_within_ms_;
  std::map<int32_t, Band, std::greater<>> bands_;  // highest priority first
  std::unordered_map<uint64_t, Place> where_;
};

}  // namespace loadstar::gateway
