// Routing tables from declared resources and ready replicas: services with
// their pickers and hold settings, routes with their backends (external
// URLs resolved), tenants with their limiters. The gateway of `loadstar up`
// (fed by the controller) and the gateways of Kubernetes mode (fed by
// EndpointDiscovery) build their tables with it. It owns the gateway-side
// objects that must outlive one table: each replica's Endpoint (its
// counters) while its address stays the same, tenant limiters, external
// endpoints.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "api/resources.h"
#include "common/result.h"
#include "gateway/routing_table.h"

namespace loadstar::routing {

// A replica that answers, where it does.
struct ReadyReplica {
  std::string replica;
  std::string host;
  uint16_t port = 0;
  // A canary's replica: its group gets this percentage of the service's
  // requests (0: a stable replica).
  uint32_t canary_weight = 0;
  // The LoRA adapters its engine loaded at start, in flag order (its
  // revision's spec.lora.adapters; empty: none, or loaded on demand).
  std::vector<std::string> adapters;
  // Where its engine publishes KV events ("tcp://HOST:PORT"); empty: none.
  std::string kv_events;
};

// What a routing table is built from.
struct RoutingInputs {
  std::map<std::string, api::InferenceService> services;
  std::vector<api::Tenant> tenants;
  std::vector<api::Route> routes;
  std::map<std::string, std::vector<ReadyReplica>> ready;  // by service
  // Adapters loaded on demand (spec.lora.loading: onDemand) that are staged:
  // service -> adapter -> the path its replicas load it from.
  std::map<std::string, std::map<std::string, std::string>> adapter_paths;
};

// Resolves a host name to an address ("10.0.0.1"); an address is returned
// as it is. Passed in, so that name lookups happen where the caller allows
// blocking, and tests need no DNS.
using Resolver = std::function<Result<std::string>(const std::string& host, uint16_t port)>;
// The system's resolver (getaddrinfo through Asio).
Result<std::string> resolve_host(const std::string& host, uint16_t port);

gateway::PickerConfig picker_config(const api::RoutingSpec& spec);

// A service's flow control: spec.routing.flowControl's thresholds. A
// service with a TTFT SLO (spec.autoscaling.slo) whose engine's
// slot count is declared (spec.engine.maxSequences) and that sets no
// threshold has one by default, its in-flight limit at that count: beyond
// what the slots hold, requests wait in the gateway, where the queue serves
// first those that can still meet the SLO and a replica that comes up takes
// them at once, instead of in one engine's first-come queue. The gateway's
// table and the autoscaling simulator take it from here.
gateway::FlowControl flow_control(const api::InferenceService& svc);

class RoutingBuilder {
 public:
  explicit RoutingBuilder(Resolver resolve = resolve_host) : resolve_(std::move(resolve)) {}

  std::shared_ptr<const gateway::RoutingTable> build(const RoutingInputs& inputs);

 private:
  std::shared_ptr<const gateway::TenantDirectory> build_tenants(
      const std::vector<api::Tenant>& tenant_specs);
  gateway::RoutingTable::Route build_route(const api::Route& route);
  // The Endpoint of a ready replica of `service`, kept from the last table
  // when its address and what it runs are the same; recorded in `endpoints`.
  const std::shared_ptr<gateway::Endpoint>& endpoint_of(
      const std::string& service, const ReadyReplica& r,
      std::map<std::string, std::shared_ptr<gateway::Endpoint>>& endpoints);

  Resolver resolve_;
  std::map<std::string, std::shared_ptr<gateway::Endpoint>> endpoints_;  // by replica
  // Limiter state survives table changes and spec edits.
  std::map<std::string, std::shared_ptr<gateway::TenantLimiter>> tenants_;
  std::map<std::string, std::shared_ptr<gateway::Endpoint>> externals_;  // by "URL CA-file"
  uint64_t version_ = 0;
};

}  // namespace loadstar::routing
