// What one attempt at a backend does about a LoRA adapter, decided from the
// routing table (pure): which adapter it serves, whether the gateway loads
// it into the replica first (on demand), whether the engine selects it by
// index (llama.cpp), and which replicas may take it.
#pragma once

#include <span>
#include <string_view>
#include <vector>

#include "gateway/routing_table.h"

namespace loadstar::gateway {

struct AdapterPlan {
  std::string_view name;  // the adapter (empty: the base model, or not a LoRA service)
  bool load = false;      // loaded on demand (Service::adapters_on_demand)
  bool by_index = false;  // the body selects it by index (Service::adapters_by_index)
};

// `svc`: the backend's service (null: an external backend).
AdapterPlan adapter_plan(const RoutingTable::Service* svc, const RoutingTable::Backend& backend);

// Of `candidates`, those whose engine loaded `adapter` at start: during a
// rollout that changes spec.lora.adapters, replicas of the old revision do
// not have a new adapter. All of them when none has it (the engine then
// answers for itself), or when the service loads adapters on demand.
std::span<Endpoint* const> serving_adapter(const RoutingTable::Service& svc,
                                           std::span<Endpoint* const> candidates,
                                           std::string_view adapter, std::vector<Endpoint*>& out);

// llama.cpp's index of `adapter` on `endpoint` (its place among the --lora
// flags that engine started with); -1: the base model, or not there.
int adapter_index(const Endpoint& endpoint, std::string_view adapter);

}  // namespace loadstar::gateway
