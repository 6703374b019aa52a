#include "controller/discovery.h"

#include "controller/runtime.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace loadstar::controller {

using kube::json;

EndpointDiscovery::EndpointDiscovery(const kube::Client& client, KubeStore& store, Publish publish)
    : store_(store),
      publish_(std::move(publish)),
      pods_(client, kube::collection_path("v1", store.namespace_name(), "pods"),
            "app.kubernetes.io/managed-by=loadstar,app.kubernetes.io/component=engine") {}

EndpointDiscovery::~EndpointDiscovery() {
  watch_.reset();
  pods_.stop();
}

Status EndpointDiscovery::start(double timeout_s) {
  pods_.start([this] { rebuild(); });
  if (!pods_.wait_synced(timeout_s))
    return make_error(ErrorCode::kUnavailable, "cannot list pods in namespace {}",
                      store_.namespace_name());
  watch_ = store_.watch([this](const WatchEvent&) { rebuild(); });
  rebuild();
  return ok_status();
}

void EndpointDiscovery::rebuild() {
  std::lock_guard lock(mu_);
  std::map<std::string, api::InferenceService> services;
  std::vector<api::Tenant> tenants;
  std::vector<api::Route> routes;
  std::string key;
  for (auto& r : store_.list()) {
    if (std::holds_alternative<api::Node>(r) || std::holds_alternative<api::Model>(r) ||
        std::holds_alternative<api::Queue>(r))
      continue;
    key += api::encode_resource(r);
    if (auto* s = std::get_if<api::InferenceService>(&r)) services.emplace(s->metadata.name, *s);
    if (auto* t = std::get_if<api::Tenant>(&r)) tenants.push_back(std::move(*t));
    if (auto* rt = std::get_if<api::Route>(&r)) routes.push_back(std::move(*rt));
  }
  // Ready engine Pods of declared services.
  std::map<std::string, std::shared_ptr<gateway::Endpoint>> endpoints;
  std::map<std::string, std::vector<std::shared_ptr<gateway::Endpoint>>> ready;
  for (const json& pod : pods_.items()) {
    const json meta = pod.value("metadata", json::object());
    const json status = pod.value("status", json::object());
    const std::string service =
        meta.value("labels", json::object()).value("loadstar.dev/service", "");
    const std::string ip = status.value("podIP", "");
    bool is_ready = false;
    for (const auto& c : status.value("conditions", json::array()))
      if (c.value("type", "") == "Ready") is_ready = c.value("status", "") == "True";
    // Not ready, going away, or being drained by the controller: nothing new goes there.
    if (!is_ready || ip.empty() || meta.contains("deletionTimestamp") ||
        meta.value("annotations", json::object()).contains(kDrainingAnnotation) ||
        !services.count(service))
      continue;
    int port = 0;
    for (const auto& c : pod.value("spec", json::object()).value("containers", json::array()))
      if (c.value("name", "") == "engine")
        for (const auto& p : c.value("ports", json::array())) port = p.value("containerPort", 0);
    if (port <= 0 || port > 65535) continue;
    const std::string name = meta.value("name", "");
    auto& endpoint = endpoints[name];
    if (auto it = endpoints_.find(name);
        it != endpoints_.end() && it->second->host == ip && it->second->port == port)
      endpoint = it->second;  // keeps its counters and load
    else
      endpoint =
          std::make_shared<gateway::Endpoint>(service, name, ip, static_cast<uint16_t>(port));
    ready[service].push_back(endpoint);
    key += fmt::format("\nep:{}:{}:{}", name, ip, port);
  }
  endpoints_ = std::move(endpoints);
  if (key == published_key_) return;
  published_key_ = key;
  size_t n = 0;
  for (const auto& [s, eps] : ready) n += eps.size();
  spdlog::info("routing: {} services, {} ready endpoints", services.size(), n);
  publish_(builder_.build(services, tenants, routes, ready));
}

}  // namespace loadstar::controller
