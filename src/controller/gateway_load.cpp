#include "controller/gateway_load.h"

#include <chrono>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/url.h"
#include "http/client.h"
#include "kube/informer.h"
#include "kube/objects.h"

namespace loadstar::controller {

using kube::json;

std::vector<std::string> ready_pod_addresses(const json& pods, const std::string& port_name,
                                             int default_port) {
  std::vector<std::string> out;
  auto items = pods.find("items");
  if (items == pods.end() || !items->is_array()) return out;
  for (const json& object : *items) {
    const kube::Pod pod = kube::pod_from_json(object);
    if (!pod.serving()) continue;
    out.push_back(fmt::format("{}:{}", pod.pod_ip, pod.port("", port_name).value_or(default_port)));
  }
  return out;
}

GatewayLoadCollector::GatewayLoadCollector(const kube::Client& client, std::string namespace_name,
                                           std::string selector, std::string authorization,
                                           double interval_s)
    : selector_(std::move(selector)),
      authorization_(std::move(authorization)),
      interval_s_(interval_s),
      gateways_(std::make_unique<kube::Informer>(
          client, kube::collection_path("v1", namespace_name, "pods"), selector_)) {}

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
    const std::vector<std::string> gateways =
        ready_pod_addresses(json{{"items", gateways_->items()}});
    if (gateways.empty())
      warn_once(gateways_->synced() ? fmt::format("no Ready gateway Pod ({})", selector_)
                                    : fmt::format("gateway Pods ({}) not listed yet", selector_));
    std::vector<std::pair<std::string, std::string>> reports;
    for (const std::string& g : gateways) {
      auto url = parse_url("http://" + g + "/loadstar/v1/load");
      if (!url.ok()) continue;
      std::vector<http::Header> headers;
      if (!authorization_.empty()) headers.push_back({"Authorization", authorization_});
      auto r = pool_.fetch({.host = url->host,
                            .port = url->port,
                            .target = url->target,
                            .headers = std::move(headers),
                            .timeout_s = std::max(0.5, interval_s_ * 2)});
      if (r.ok() && r->status == 200)
        reports.emplace_back(g, std::move(r->body));
      else
        warn_once(fmt::format("gateway {}: {}", g,
                              r.ok() ? fmt::format("answered {}", r->status) : r.error().message));
    }
    std::vector<std::string> errors;
    LoadRound round = aggregator_.round(reports, &errors);
    for (const auto& e : errors) warn_once(e);
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
