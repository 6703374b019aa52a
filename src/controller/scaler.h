// How many replicas each service should have, pass by pass: a service with
// spec.autoscaling asks its autoscaler (src/autoscaler, rebuilt when the
// spec changes); one without keeps spec.replicas, or scales to
// minReplicas after idleTimeout without requests and back on the next one.
// Owns what it remembers between passes (autoscalers, activity, the last
// decision); takes the load and the time as arguments. The controller says
// each change of the count in its events.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "api/resources.h"
#include "autoscaler/autoscaler.h"
#include "controller/clock.h"
#include "gateway/routing_table.h"

namespace loadstar::controller {

// The autoscaler's spec for a service (its spec.autoscaling, min replicas
// and idle timeout; TTFT counted in the gateway's buckets), as the
// controller and `loadstar sim autoscale` build it.
autoscaler::Spec autoscaler_spec(const api::InferenceService& svc);

// One service's load in one pass, summed over its replicas.
struct ServiceLoad {
  uint32_t ready = 0;
  uint64_t requests = 0;                                         // sent since the last pass
  std::array<uint64_t, gateway::Endpoint::kTtftBuckets> ttft{};  // first tokens since then
  uint64_t ttft_overdue = 0;           // past the TTFT SLO unanswered, since then
  uint64_t ttft_overdue_answered = 0;  // of those, answered since then (also in ttft)
  std::array<uint64_t, gateway::Endpoint::kItlBuckets> itl{};  // inter-token gaps since then
  double in_flight = 0;                                        // now, ready and draining replicas
  double prefill_tokens = 0;   // prompt tokens awaiting a first token, now
  double waiting = 0;          // ready replicas' engine queues, and their gateway queue shares
  double kv_usage_sum = 0;     // over ready replicas
  double adapters = 0;         // distinct LoRA adapters running or waiting, over its replicas
  bool held = false;           // a request waits at a gateway for a replica
  uint64_t held_requests = 0;  // how many wait so, all gateways
  // In the gateways' flow-control queues now (shared out into the replicas'
  // in_flight and waiting).
  double queued = 0;
  double queued_overdue = 0;           // of queued, past the TTFT SLO
  uint64_t turned_away = 0;            // turned away at the gateways for want of room, since then
  std::optional<double> cold_start_s;  // the slowest ready replica's launch to ready
};

class ServiceScaler {
 public:
  // `load_signals` false: no load reaches this controller, so every service
  // runs at spec.replicas. `epoch`: time zero of the autoscalers' samples.
  ServiceScaler(bool load_signals, Clock::time_point epoch)
      : load_signals_(load_signals), epoch_(epoch) {}

  // The replicas `svc` should have now; `current` is how many it has
  // (draining ones not counted).
  uint32_t decide(const api::InferenceService& svc, uint32_t current, const ServiceLoad& load,
                  Clock::time_point now);
  // Forgets the services not in `names`.
  void retain(const std::map<std::string, api::InferenceService>& services);

  // As of the last decide(); spec.replicas for a service never decided.
  uint32_t desired(const api::InferenceService& svc) const;
  // The autoscaler's last decision.
  const autoscaler::Decision* last_decision(const std::string& service) const;
  // How many nodes should hold the service's weights now: warmNodes, or
  // more on a rising trend (the autoscaler's stage_ahead); 0: none ahead.
  uint32_t weights_nodes(const api::InferenceService& svc) const;

 private:
  uint32_t autoscale(const api::InferenceService& svc, uint32_t current, const ServiceLoad& load,
                     Clock::time_point now);

  struct State {
    // Activity, for scale to zero: when a request was last seen.
    std::optional<Clock::time_point> last_active;
    uint32_t desired = 0;
    // Autoscaled services: the autoscaler (rebuilt when the spec changes),
    // requests ever counted, the last decision and the count's changes.
    std::optional<api::InferenceService> spec;
    std::unique_ptr<autoscaler::Autoscaler> autoscaler;
    uint64_t requests_total = 0;
    uint64_t turned_away_total = 0;
    std::optional<autoscaler::Decision> last;
  };
  bool load_signals_;
  Clock::time_point epoch_;
  std::map<std::string, State> services_;
};

}  // namespace loadstar::controller
