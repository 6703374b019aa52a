#include "controller/gateway_load.h"

#include <chrono>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/url.h"
#include "http/bearer.h"
#include "http/client.h"
#include "kube/informer.h"
#include "kube/objects.h"
#include "kube/scope.h"

namespace loadstar::controller {

using kube::json;

std::vector<ServingPod> ready_pod_addresses(const std::vector<json>& pods,
                                            const std::string& port_name, int default_port) {
  std::vector<ServingPod> out;
  for (const json& object : pods) {
    const kube::Pod pod = kube::pod_from_json(object);
    if (!pod.serving()) continue;
    out.push_back(
        {pod.namespace_name,
         fmt::format("{}:{}", pod.pod_ip, pod.port("", port_name).value_or(default_port))});
  }
  return out;
}

void qualify_report(gateway::LoadReport& report, const kube::NamespaceScope& scope,
                    const std::string& namespace_name) {
  if (namespace_name == scope.home()) return;
  for (auto& e : report.endpoints) {
    e.service = scope.qualify(namespace_name, e.service);
    e.replica = scope.qualify(namespace_name, e.replica);
  }
  for (auto& t : report.tenants) {  // usage is billed to the tenant of its namespace
    t.tenant = scope.qualify(namespace_name, t.tenant);
    t.model = scope.qualify(namespace_name, t.model);
  }
  const auto qualify = [&]<typename N>(std::map<std::string, N>& services) {
    std::map<std::string, N> qualified;
    for (auto& [service, n] : services) qualified[scope.qualify(namespace_name, service)] = n;
    services = std::move(qualified);
  };
  qualify(report.held);
  qualify(report.queued);
  qualify(report.queued_overdue);
  qualify(report.turned_away);
}

GatewayLoadCollector::GatewayLoadCollector(const kube::Client& client,
                                           const kube::NamespaceScope& scope, std::string selector,
                                           std::optional<http::BearerToken> internal_token,
                                           double interval_s)
    : scope_(scope),
      selector_(std::move(selector)),
      internal_token_(std::move(internal_token)),
      interval_s_(interval_s),
      gateways_(std::make_unique<kube::ScopedInformer>(client, scope, "v1", "pods", selector_)) {}

std::string GatewayLoadCollector::authorization(const std::string& namespace_name) const {
  if (!internal_token_) return "";
  return namespace_name == scope_.home()
             ? internal_token_->header().value
             : internal_token_->for_namespace(namespace_name).header().value;
}

GatewayLoadCollector::~GatewayLoadCollector() {
  stop();
}

void GatewayLoadCollector::start() {
  gateways_->start(nullptr);
  thread_ = std::thread([this] { run(); });
}

void GatewayLoadCollector::stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  gateways_->stop();
}

std::optional<LoadRound> GatewayLoadCollector::take() {
  std::lock_guard lock(mu_);
  return std::exchange(pending_, std::nullopt);
}

void GatewayLoadCollector::on_demand(std::function<void()> wake) {
  std::lock_guard lock(mu_);
  wake_ = std::move(wake);
}

void GatewayLoadCollector::run() {
  using Clock = std::chrono::steady_clock;
  std::string last_problem;
  auto warn_once = [&](const std::string& problem) {
    if (problem != last_problem) spdlog::warn("gateway load: {}", problem);
    last_problem = problem;
  };
  while (!stopping_) {
    const auto round_start = Clock::now();
    const std::vector<ServingPod> gateways = ready_pod_addresses(gateways_->items());
    if (gateways.empty())
      warn_once(gateways_->synced() ? fmt::format("no Ready gateway Pod ({})", selector_)
                                    : fmt::format("gateway Pods ({}) not listed yet", selector_));
    std::vector<std::pair<std::string, gateway::LoadReport>> reports;
    for (const auto& [namespace_name, g] : gateways) {
      auto url = parse_url("http://" + g + "/loadstar/v1/load");
      if (!url.ok()) continue;
      std::vector<http::Header> headers;
      if (std::string a = authorization(namespace_name); !a.empty())
        headers.push_back({"Authorization", std::move(a)});
      auto r = pool_.fetch({.host = url->host,
                            .port = url->port,
                            .target = url->target,
                            .headers = std::move(headers),
                            .timeout_s = std::max(0.5, interval_s_ * 2)});
      if (!r.ok() || r->status != 200) {
        warn_once(fmt::format("gateway {}: {}", g,
                              r.ok() ? fmt::format("answered {}", r->status) : r.error().message));
        continue;
      }
      auto report = gateway::parse_load_report(r->body);
      if (!report.ok()) {
        warn_once(fmt::format("gateway {}: {}", g, report.error().message));
        continue;
      }
      for (const auto& problem : report->problems)
        warn_once(fmt::format("gateway {}: {}", g, problem));
      qualify_report(report->report, scope_, namespace_name);
      reports.emplace_back(g, std::move(report->report));
    }
    LoadRound round = aggregator_.round(reports);
    bool demand = false;
    std::function<void()> wake;
    {
      std::lock_guard lock(mu_);
      demand = !round.demand.empty();
      if (pending_)
        pending_->merge(std::move(round));
      else
        pending_ = std::move(round);
      wake = wake_;
    }
    if (demand && wake) wake();
    const auto next =
        round_start + std::chrono::milliseconds(static_cast<int64_t>(interval_s_ * 1000));
    while (!stopping_ && Clock::now() < next)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace loadstar::controller
