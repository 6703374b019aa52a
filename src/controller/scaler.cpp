#include "controller/scaler.h"

#include <fmt/chrono.h>
#include <spdlog/spdlog.h>

namespace loadstar::controller {

autoscaler::Spec autoscaler_spec(const api::InferenceService& svc) {
  autoscaler::Spec spec;
  spec.min_replicas = svc.spec.min_replicas.value_or(1);
  spec.idle_window_s = svc.spec.idle_timeout_s;
  spec.ttft_bounds.assign(std::begin(gateway::Endpoint::kTtftBounds),
                          std::end(gateway::Endpoint::kTtftBounds));
  spec.itl_bounds.assign(std::begin(gateway::Endpoint::kItlBounds),
                         std::end(gateway::Endpoint::kItlBounds));
  if (!svc.spec.autoscaling) return spec;
  const api::AutoscalingSpec& as = *svc.spec.autoscaling;
  spec.max_replicas = as.max_replicas;
  spec.waiting_per_replica = as.waiting_per_replica;
  spec.in_flight_per_replica = as.in_flight_per_replica;
  spec.kv_cache_usage = as.kv_cache_usage;
  spec.ttft_p90_slo_s = as.ttft_p90_s;
  spec.itl_p90_slo_s = as.itl_p90_s;
  spec.prefill_tokens_per_replica = as.prefill_tokens_per_replica;
  spec.slo_ttft_s = as.slo_ttft_s;
  spec.slo_attainment = as.slo_attainment;
  if (svc.spec.lora) spec.adapters_per_replica = svc.spec.lora->max_loras;
  spec.stable_window_s = as.stable_window_s;
  spec.panic_window_s = as.panic_window_s;
  spec.panic_threshold = as.panic_threshold;
  spec.max_scale_up_rate = as.max_scale_up_rate;
  spec.scale_down_stabilization_s = as.scale_down_stabilization_s;
  spec.tolerance = as.tolerance;
  return spec;
}

uint32_t ServiceScaler::decide(const api::InferenceService& svc, uint32_t current,
                               const ServiceLoad& load, Clock::time_point now) {
  const std::string& name = svc.metadata.name;
  const bool first_seen = !services_.count(name);
  State& st = services_[name];
  // A service found with replicas running (taken over from a controller
  // before this one, which knew its activity) counts as active now: its
  // idle time starts here, not at an unknown past, so a new leader neither
  // drains it at once nor, on the next request, starts a second replica.
  if (first_seen && current > 0) st.last_active = now;
  if (load.held) {
    if (!st.last_active)
      spdlog::info("service {}: a request is waiting; scaling up from zero", name);
    st.last_active = now;
  }
  if (!load_signals_) return st.desired = svc.spec.replicas;
  if (svc.spec.autoscaling) return st.desired = autoscale(svc, current, load, now);
  if (load.requests > 0 || load.turned_away > 0 || load.in_flight > 0) st.last_active = now;
  const uint32_t min = svc.spec.min_replicas.value_or(svc.spec.replicas);
  if (min >= svc.spec.replicas) return st.desired = svc.spec.replicas;  // a fixed size
  if (!st.last_active) return st.desired = min;                         // never asked for yet
  const double idle = seconds_between(*st.last_active, now);
  return st.desired = idle > svc.spec.idle_timeout_s ? min : svc.spec.replicas;
}

uint32_t ServiceScaler::autoscale(const api::InferenceService& svc, uint32_t current,
                                  const ServiceLoad& load, Clock::time_point now) {
  const std::string& name = svc.metadata.name;
  State& st = services_[name];
  if (!st.autoscaler || st.spec != svc) {
    if (!st.autoscaler) current = svc.spec.replicas;  // a new service starts at spec.replicas
    st.autoscaler = std::make_unique<autoscaler::Autoscaler>(autoscaler_spec(svc));
    st.spec = svc;
  }
  // One sample: the replicas' load as the gateways and the engines'
  // /metrics (scraped by the gateways) see it.
  autoscaler::Sample sample;
  sample.now = seconds_between(epoch_, now);
  sample.ready = load.ready;
  sample.in_flight = load.in_flight;
  sample.waiting = load.waiting;
  sample.kv_cache_usage = load.ready ? load.kv_usage_sum / load.ready : 0;
  sample.adapters = load.adapters;
  sample.ttft_counts.assign(load.ttft.begin(), load.ttft.end());
  sample.ttft_overdue = load.ttft_overdue;
  sample.ttft_overdue_answered = load.ttft_overdue_answered;
  sample.itl_counts.assign(load.itl.begin(), load.itl.end());
  sample.prefill_tokens = load.prefill_tokens;
  st.requests_total += load.requests;
  sample.requests_total = st.requests_total;
  sample.queued = load.queued;
  sample.queued_overdue = load.queued_overdue;
  st.turned_away_total += load.turned_away;
  sample.turned_away_total = st.turned_away_total;
  sample.held = static_cast<uint32_t>(std::max<uint64_t>(load.held ? 1 : 0, load.held_requests));
  if (load.cold_start_s) st.autoscaler->set_lead_time(*load.cold_start_s);
  st.autoscaler->observe(sample);
  autoscaler::Decision d = st.autoscaler->decide(sample.now, current);
  if (d.desired != current)
    spdlog::info("service {}: scale {} -> {}: {}", name, current, d.desired, d.reason);
  st.last = d;
  return d.desired;
}

void ServiceScaler::retain(const std::map<std::string, api::InferenceService>& services) {
  std::erase_if(services_, [&](const auto& kv) { return !services.count(kv.first); });
}

uint32_t ServiceScaler::desired(const api::InferenceService& svc) const {
  auto it = services_.find(svc.metadata.name);
  return it != services_.end() ? it->second.desired : svc.spec.replicas;
}

const autoscaler::Decision* ServiceScaler::last_decision(const std::string& service) const {
  auto it = services_.find(service);
  return it != services_.end() && it->second.last ? &*it->second.last : nullptr;
}

uint32_t ServiceScaler::weights_nodes(const api::InferenceService& svc) const {
  if (svc.spec.warm_nodes == 0) return 0;
  const autoscaler::Decision* d = last_decision(svc.metadata.name);
  return d ? std::max(svc.spec.warm_nodes, d->stage_ahead) : svc.spec.warm_nodes;
}

}  // namespace loadstar::controller
