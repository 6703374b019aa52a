#include "routing/discovery.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "api/disaggregation.h"
#include "kube/objects.h"

namespace loadstar::routing {

using kube::json;

EndpointDiscovery::EndpointDiscovery(const kube::Client& client, store::KubeStore& store,
                                     Publish publish)
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
  watch_ = store_.watch([this](const store::WatchEvent&) { rebuild(); });
  rebuild();
  return ok_status();
}

void EndpointDiscovery::rebuild() {
  std::lock_guard lock(mu_);
  RoutingInputs inputs;
  std::string key;
  for (auto& r : store_.list()) {
    if (std::holds_alternative<api::Node>(r) || std::holds_alternative<api::Model>(r) ||
        std::holds_alternative<api::Queue>(r))
      continue;
    key += api::encode_resource(r);
    // A disaggregated service's prefill pool has Pods of its own service name.
    if (auto* s = std::get_if<api::InferenceService>(&r))
      for (api::InferenceService& role : api::role_services(*s))
        inputs.services.emplace(role.metadata.name, std::move(role));
    if (auto* t = std::get_if<api::Tenant>(&r)) inputs.tenants.push_back(std::move(*t));
    if (auto* rt = std::get_if<api::Route>(&r)) inputs.routes.push_back(std::move(*rt));
  }
  // Ready engine Pods of declared services.
  size_t n = 0;
  for (const json& object : pods_.items()) {
    const kube::Pod pod = kube::pod_from_json(object);
    const auto service = pod.labels.find("loadstar.dev/service");
    // Not ready, going away, or being drained by the controller: nothing new goes there.
    if (!pod.serving() || pod.annotations.count(kube::kDrainingAnnotation) ||
        service == pod.labels.end() || !inputs.services.count(service->second))
      continue;
    const auto port = pod.port("engine", "http");
    if (!port) continue;
    // A canary's Pods say their group's share of the traffic.
    uint32_t canary = 0;
    if (auto w = pod.annotations.find(kube::kCanaryWeightAnnotation); w != pod.annotations.end())
      canary = static_cast<uint32_t>(std::clamp(std::atoi(w->second.c_str()), 0, 100));
    // The adapters its engine loaded at start, in flag order.
    std::vector<std::string> adapters;
    if (auto a = pod.annotations.find(kube::kLoraAdaptersAnnotation); a != pod.annotations.end())
      for (std::string_view list = a->second; !list.empty();) {
        const size_t comma = list.find(',');
        if (comma != 0) adapters.emplace_back(list.substr(0, comma));
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
      }
    // Its KV events, when its engine publishes them.
    std::string kv_events;
    if (auto events = pod.port("engine", "kv-events"))
      kv_events = fmt::format("tcp://{}:{}", pod.pod_ip, *events);
    key += fmt::format("\nep:{}:{}:{}:{}:{}:{}", pod.name, pod.pod_ip, *port, canary,
                       fmt::join(adapters, ","), kv_events);
    inputs.ready[service->second].push_back({pod.name, pod.pod_ip, static_cast<uint16_t>(*port),
                                             canary, std::move(adapters), std::move(kv_events)});
    ++n;
  }
  if (key == published_key_) return;
  published_key_ = key;
  spdlog::info("routing: {} services, {} ready endpoints", inputs.services.size(), n);
  publish_(builder_.build(inputs));
}

}  // namespace loadstar::routing
