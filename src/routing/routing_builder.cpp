#include "routing/routing_builder.h"

#include <algorithm>
#include <cstdlib>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "api/cost_expression.h"
#include "api/disaggregation.h"
#include "engines/engines.h"

namespace loadstar::routing {

Result<std::string> resolve_host(const std::string& host, uint16_t port) {
  boost::system::error_code ec;
  if (boost::asio::ip::make_address(host, ec), !ec) return host;
  boost::asio::io_context io;
  boost::asio::ip::tcp::resolver resolver(io);
  auto results = resolver.resolve(host, std::to_string(port), ec);
  if (ec || results.empty())
    return Error{ErrorCode::kUnavailable, ec ? ec.message() : std::string("no address")};
  return results.begin()->endpoint().address().to_string();
}

const std::shared_ptr<gateway::Endpoint>& RoutingBuilder::endpoint_of(
    const std::string& service, const ReadyReplica& r,
    std::map<std::string, std::shared_ptr<gateway::Endpoint>>& endpoints) {
  auto& endpoint = endpoints[r.replica];
  if (auto it = endpoints_.find(r.replica);
      it != endpoints_.end() && it->second->service == service && it->second->host == r.host &&
      it->second->port == r.port && it->second->start_adapters == r.adapters &&
      it->second->kv_events == r.kv_events) {
    endpoint = it->second;  // keeps its counters and load
  } else {
    endpoint = std::make_shared<gateway::Endpoint>(service, r.replica, r.host, r.port);
    endpoint->start_adapters = r.adapters;
    endpoint->kv_events = r.kv_events;
  }
  return endpoint;
}

gateway::FlowControl flow_control(const api::InferenceService& svc) {
  const api::RoutingSpec& r = svc.spec.routing;
  gateway::FlowControl flow{.max_in_flight = r.max_in_flight_per_replica,
                            .max_waiting = r.max_waiting_per_replica,
                            .max_kv_usage = r.max_kv_cache_usage,
                            .max_queued = r.max_queued,
                            .queue_timeout_s = r.queue_timeout_s};
  const bool slo = svc.spec.autoscaling && svc.spec.autoscaling->slo_ttft_s;
  if (slo && !flow.enabled() && svc.spec.engine.max_sequences.value_or(0) > 0)
    flow.max_in_flight = *svc.spec.engine.max_sequences;
  return flow;
}

std::shared_ptr<const gateway::RoutingTable> RoutingBuilder::build(const RoutingInputs& inputs) {
  auto table = std::make_shared<gateway::RoutingTable>();
  table->version = ++version_;
  std::map<std::string, std::shared_ptr<gateway::Endpoint>> endpoints;
  for (const auto& [name, svc] : inputs.services) {
    // A prefill pool is routed through its service (s.prefill below),
    // never by its own name.
    if (!svc.spec.prefill_of.empty()) continue;
    auto& s = table->services[name];
    s.picker = picker_config(svc.spec.routing);
    s.hold_max_requests = svc.spec.routing.hold_max_requests;
    s.hold_timeout_s = svc.spec.routing.hold_timeout_s;
    s.may_get_replicas = svc.spec.replicas > 0;
    if (svc.spec.autoscaling) s.ttft_slo_s = svc.spec.autoscaling->slo_ttft_s;
    if (svc.spec.lora) {
      const engines::Engine* engine = engines::find(svc.spec.engine.name);
      s.adapters_by_index = engine && engine->adapters_by_index;
      s.adapters_on_demand = svc.spec.lora->on_demand;
      s.max_loras = svc.spec.lora->max_loras;
      s.max_cpu_loras = svc.spec.lora->max_cpu_loras.value_or(s.max_loras);
    }
    s.flow = flow_control(svc);
    // A disaggregated service's prefill pool: its replicas, by the pool's
    // own service name.
    if (svc.spec.prefill) {
      const std::string pool = api::prefill_service_name(name);
      s.prefill.emplace();
      s.prefill->service = pool;
      s.prefill->non_cached_tokens = svc.spec.prefill->non_cached_tokens;
      s.prefill->may_get_replicas = svc.spec.prefill->replicas > 0;
      if (auto ready = inputs.ready.find(pool); ready != inputs.ready.end())
        for (const ReadyReplica& r : ready->second)
          s.prefill->ready.push_back(endpoint_of(pool, r, endpoints));
    }
    auto ready = inputs.ready.find(name);
    if (ready == inputs.ready.end()) continue;
    for (const ReadyReplica& r : ready->second) {
      const std::shared_ptr<gateway::Endpoint>& endpoint = endpoint_of(name, r, endpoints);
      s.ready.push_back(endpoint);
      if (r.canary_weight > 0) {
        s.canary.push_back(endpoint.get());
        s.canary_weight = std::min<uint32_t>(r.canary_weight, 100);
      }
    }
  }
  endpoints_ = std::move(endpoints);
  // A service's LoRA adapters are models clients name: each routes to its
  // service with the adapter's name passed on (the engine selects it by
  // that). A Route of the same name, declared by hand, wins.
  for (const auto& [name, svc] : inputs.services)
    if (svc.spec.lora && svc.spec.prefill_of.empty())
      for (const std::string& adapter : svc.spec.lora->adapters) {
        if (table->services.count(adapter)) continue;
        gateway::RoutingTable::Route& route = table->routes[adapter];
        route.adapter = true;
        route.backends = {{.service = name, .model = adapter}};
      }
  for (const auto& route : inputs.routes) table->routes[route.spec.model] = build_route(route);
  // Backends naming one of their service's adapters (hand-written Routes
  // too): the gateway treats the request as the adapter's (affinity, on
  // demand loading, llama.cpp's index). A route all of whose backends are
  // adapters keys its prompts apart from the base model's.
  for (auto& [model, route] : table->routes) {
    bool all_adapters = !route.backends.empty();
    for (auto& b : route.backends) {
      auto svc = inputs.services.find(b.service);
      const std::string& name = b.model.empty() ? model : b.model;
      if (svc != inputs.services.end() && svc->second.spec.lora) {
        const auto& names = svc->second.spec.lora->adapters;
        b.adapter = std::find(names.begin(), names.end(), name) != names.end();
      }
      if (b.adapter) {
        b.model = name;
        if (auto paths = inputs.adapter_paths.find(b.service); paths != inputs.adapter_paths.end())
          if (auto path = paths->second.find(name); path != paths->second.end())
            b.adapter_path = path->second;
      }
      all_adapters &= b.adapter;
    }
    route.adapter = all_adapters;
  }
  table->tenants = build_tenants(inputs.tenants);
  return table;
}

gateway::PickerConfig picker_config(const api::RoutingSpec& spec) {
  gateway::PickerConfig config;
  if (auto kind = gateway::parse_picker_kind(spec.picker); kind.ok()) config.kind = *kind;
  gateway::ScorerWeights& w = config.weights;
  w.prefix_cache = spec.prefix_cache_weight.value_or(w.prefix_cache);
  w.in_flight = spec.in_flight_weight.value_or(w.in_flight);
  w.queue = spec.queue_weight.value_or(w.queue);
  w.kv_cache = spec.kv_cache_weight.value_or(w.kv_cache);
  w.session = spec.session_weight.value_or(w.session);
  w.lora = spec.lora_weight.value_or(w.lora);
  if (spec.session_header) config.session_header = *spec.session_header;
  return config;
}

std::shared_ptr<const gateway::TenantDirectory> RoutingBuilder::build_tenants(
    const std::vector<api::Tenant>& tenant_specs) {
  auto directory = std::make_shared<gateway::TenantDirectory>();
  std::map<std::string, std::shared_ptr<gateway::TenantLimiter>> kept;
  for (const api::Tenant& t : tenant_specs) {
    gateway::TenantLimits limits;
    if (t.spec.requests_per_minute) limits.requests_per_minute = *t.spec.requests_per_minute;
    if (t.spec.tokens_per_minute) limits.tokens_per_minute = *t.spec.tokens_per_minute;
    limits.max_concurrent = t.spec.max_concurrent_requests;
    limits.models = t.spec.models;
    limits.priority = t.spec.priority;
    limits.sheddable = t.spec.sheddable;
    auto cost = api::CostExpression::parse(t.spec.token_cost);
    if (!cost.ok()) cost = api::CostExpression();  // rejected at decode; cannot happen
    auto& limiter = tenants_[t.metadata.name];
    if (!limiter)
      limiter = std::make_shared<gateway::TenantLimiter>(t.metadata.name, limits, *cost);
    else
      limiter->configure(limits, *cost);
    std::vector<gateway::TenantDirectory::Key> keys;
    for (const auto& k : t.spec.api_keys) keys.push_back({k.sha256, k.name, k.revoked});
    directory->add(limiter, keys);
    kept[t.metadata.name] = limiter;
  }
  tenants_.swap(kept);
  return directory;
}

gateway::RoutingTable::Route RoutingBuilder::build_route(const api::Route& route) {
  gateway::RoutingTable::Route out;
  for (const auto& b : route.spec.backends) {
    gateway::RoutingTable::Backend backend;
    backend.weight = b.weight;
    backend.priority = b.priority;
    if (!b.service.empty()) {
      backend.service = b.service;
      backend.model = b.model.empty() ? b.service : b.model;
    } else {
      // http(s)://host[:port][/v1]
      const bool tls = b.url.starts_with("https://");
      std::string rest = b.url.substr(tls ? 8 : 7);
      if (auto slash = rest.find('/'); slash != std::string::npos) rest.resize(slash);
      const std::string authority = rest;
      std::string host = rest;
      uint16_t port = tls ? 443 : 80;
      if (auto colon = rest.rfind(':'); colon != std::string::npos) {
        host = rest.substr(0, colon);
        port = static_cast<uint16_t>(std::atoi(rest.c_str() + colon + 1));
      }
      auto address = resolve_(host, port);
      if (!address.ok()) {
        spdlog::warn("route {}: cannot resolve backend {}: {}", route.metadata.name, b.url,
                     address.error().message);
        continue;
      }
      auto& endpoint = externals_[b.url + " " + b.ca_file];
      if (!endpoint || endpoint->host != *address || endpoint->port != port) {
        endpoint = std::make_shared<gateway::Endpoint>(route.metadata.name, b.url, *address, port);
        // A hosted API is reached by name: SNI, certificate and Host header.
        endpoint->tls = tls;
        endpoint->tls_name = host;
        endpoint->ca_file = b.ca_file;
        endpoint->authority = authority;
      }
      backend.external = endpoint;
      backend.model = b.model.empty() ? route.spec.model : b.model;
      if (!b.api_key_env.empty()) {
        const char* key = std::getenv(b.api_key_env.c_str());
        if (key && *key)
          backend.authorization = fmt::format("Bearer {}", key);
        else
          spdlog::warn("route {}: backend {}: environment variable {} is not set",
                       route.metadata.name, b.url, b.api_key_env);
      }
    }
    out.backends.push_back(std::move(backend));
  }
  std::stable_sort(out.backends.begin(), out.backends.end(),
                   [](const auto& a, const auto& b) { return a.priority < b.priority; });
  return out;
}

}  // namespace loadstar::routing
