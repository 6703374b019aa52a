#include "gateway/adapter_routing.h"

#include <algorithm>

namespace loadstar::gateway {

AdapterPlan adapter_plan(const RoutingTable::Service* svc, const RoutingTable::Backend& backend) {
  AdapterPlan plan;
  if (!svc) return plan;
  plan.by_index = svc->adapters_by_index;
  if (!backend.adapter) return plan;
  plan.name = backend.model;
  plan.load = svc->adapters_on_demand;
  return plan;
}

std::span<Endpoint* const> serving_adapter(const RoutingTable::Service& svc,
                                           std::span<Endpoint* const> candidates,
                                           std::string_view adapter, std::vector<Endpoint*>& out) {
  if (adapter.empty() || svc.adapters_on_demand) return candidates;
  out.clear();
  for (Endpoint* e : candidates)
    if (std::find(e->start_adapters.begin(), e->start_adapters.end(), adapter) !=
        e->start_adapters.end())
      out.push_back(e);
  if (out.empty()) return candidates;
  return out;
}

int adapter_index(const Endpoint& endpoint, std::string_view adapter) {
  if (adapter.empty()) return -1;
  auto it = std::find(endpoint.start_adapters.begin(), endpoint.start_adapters.end(), adapter);
  return it == endpoint.start_adapters.end()
             ? -1
             : static_cast<int>(it - endpoint.start_adapters.begin());
}

}  // namespace loadstar::gateway
