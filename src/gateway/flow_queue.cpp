#include "gateway/flow_queue.h"

#include <algorithm>

#include "gateway/routing_table.h"

namespace loadstar::gateway {

bool saturated(const FlowControl& flow, const Endpoint& endpoint, int64_t now_ms) {
  if (flow.max_in_flight &&
      endpoint.in_flight.load(std::memory_order_relaxed) >= int64_t{*flow.max_in_flight})
    return true;
  const int64_t at = endpoint.metrics_at_ms.load(std::memory_order_relaxed);
  if (at == 0 || now_ms - at > kStaleMetricsMs) return false;
  if (flow.max_waiting && endpoint.waiting.load(std::memory_order_relaxed) >= *flow.max_waiting)
    return true;
  return flow.max_kv_usage &&
         endpoint.kv_usage.load(std::memory_order_relaxed) >= *flow.max_kv_usage;
}

uint64_t room(const FlowControl& flow, std::span<const std::shared_ptr<Endpoint>> endpoints,
              int64_t now_ms) {
  uint64_t total = 0;
  for (const auto& e : endpoints) {
    if (e->ejected_until_ms.load(std::memory_order_relaxed) > now_ms) continue;
    if (saturated(flow, *e, now_ms)) continue;
    if (!flow.max_in_flight) return kUnlimited;
    total += static_cast<uint64_t>(int64_t{*flow.max_in_flight} -
                                   e->in_flight.load(std::memory_order_relaxed));
  }
  return total;
}

std::span<Endpoint* const> unsaturated(const FlowControl& flow,
                                       std::span<Endpoint* const> candidates, int64_t now_ms,
                                       std::vector<Endpoint*>& out) {
  if (!flow.enabled()) return candidates;
  out.clear();
  for (Endpoint* e : candidates)
    if (!saturated(flow, *e, now_ms)) out.push_back(e);
  if (out.empty() || out.size() == candidates.size()) return candidates;
  return out;
}

FlowQueue::Pushed FlowQueue::push(uint64_t id, int32_t priority, const std::string& tenant,
                                  int64_t arrived_ms) {
  Pushed pushed;
  if (where_.size() >= capacity_) {
    if (bands_.empty()) return pushed;
    auto lowest = std::prev(bands_.end());
    if (lowest->first >= priority) return pushed;
    // The newest request of the lowest band's longest flow makes room.
    Band& band = lowest->second;
    auto longest = std::max_element(band.flows.begin(), band.flows.end(), [](auto& a, auto& b) {
      return a.second.size() < b.second.size();
    });
    const std::string victim_tenant = longest->first;
    const uint64_t victim = longest->second.back().id;
    erase(lowest, victim_tenant, victim);
    pushed.evicted = victim;
  }
  Band& band = bands_[priority];
  auto& flow = band.flows[tenant];
  if (flow.empty()) band.turns.push_back(tenant);
  // In order of arrival: at the end, unless it arrived before the newest.
  auto at = flow.end();
  while (at != flow.begin() && std::prev(at)->arrived_ms > arrived_ms) --at;
  flow.insert(at, {id, arrived_ms});
  where_.emplace(id, Place{priority, tenant});
  pushed.queued = true;
  return pushed;
}

std::optional<uint64_t> FlowQueue::pop(int64_t now_ms) {
  if (bands_.empty()) return std::nullopt;
  auto top = bands_.begin();
  Band& band = top->second;
  const std::string tenant = band.turns.front();
  auto& flow = band.flows.at(tenant);
  auto next = flow.begin();
  if (serve_within_ms_) {
    // The oldest that arrived within the limit (the flow is oldest first),
    // else the oldest.
    next = std::partition_point(flow.begin(), flow.end(), [&](const Queued& q) {
      return now_ms - q.arrived_ms >= *serve_within_ms_;
    });
    if (next == flow.end()) next = flow.begin();
  }
  const uint64_t id = next->id;
  flow.erase(next);
  band.turns.pop_front();
  if (flow.empty())
    band.flows.erase(tenant);
  else
    band.turns.push_back(tenant);  // its next request waits for the others' turns
  where_.erase(id);
  if (band.flows.empty()) bands_.erase(top);
  return id;
}

size_t FlowQueue::arrived_by(int64_t ms) const {
  size_t n = 0;
  for (const auto& [priority, band] : bands_)
    for (const auto& [tenant, flow] : band.flows)  // each oldest first
      n += static_cast<size_t>(
          std::partition_point(flow.begin(), flow.end(),
                               [&](const Queued& q) { return q.arrived_ms <= ms; }) -
          flow.begin());
  return n;
}

bool FlowQueue::remove(uint64_t id) {
  auto it = where_.find(id);
  if (it == where_.end()) return false;
  const Place place = it->second;
  erase(bands_.find(place.priority), place.tenant, id);
  return true;
}

void FlowQueue::erase(std::map<int32_t, Band, std::greater<>>::iterator band_it,
                      const std::string& tenant, uint64_t id) {
  Band& band = band_it->second;
  auto& flow = band.flows.at(tenant);
  flow.erase(std::find_if(flow.begin(), flow.end(), [&](const Queued& q) { return q.id == id; }));
  if (flow.empty()) {
    band.flows.erase(tenant);
    band.turns.erase(std::find(band.turns.begin(), band.turns.end(), tenant));
  }
  where_.erase(id);
  if (band.flows.empty()) bands_.erase(band_it);
}

}  // namespace loadstar::gateway
