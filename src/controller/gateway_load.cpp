#include "controller/gateway_load.h"

#include <chrono>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/url.h"
#include "controller/controller.h"
#include "http/client.h"

namespace loadstar::controller {

using kube::json;

namespace {

std::optional<double> number(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

uint64_t counter(const json& object, const char* key) {
  auto v = number(object, key);
  return v && *v > 0 ? static_cast<uint64_t>(*v) : 0;
}

uint64_t increment(uint64_t now, uint64_t before) {
  return now >= before ? now - before : now;
}

}  // namespace

LoadRound LoadAggregator::round(const std::vector<std::pair<std::string, std::string>>& reports,
                                std::vector<std::string>* errors) {
  LoadRound out;
  auto fail = [&](const std::string& gateway, std::string_view why) {
    if (errors) errors->push_back(fmt::format("gateway {}: {}", gateway, why));
  };
  for (const auto& [gateway, text] : reports) {
    const json report = json::parse(text, nullptr, false);
    if (!report.is_object() || !report.contains("endpoints") || !report["endpoints"].is_array()) {
      fail(gateway, "the load report is not an object with an 'endpoints' list");
      continue;
    }
    if (auto held = report.find("held"); held != report.end() && held->is_object())
      for (const auto& [service, n] : held->items())
        if (n.is_number() && n.get<double>() > 0) out.demand.insert(service);
    for (const json& e : report["endpoints"]) {
      if (!e.is_object() || !e.contains("replica") || !e["replica"].is_string()) {
        fail(gateway, "an endpoint without a replica name");
        continue;
      }
      const std::string replica = e["replica"].get<std::string>();
      ReplicaLoad& load = out.replicas[replica];
      Seen& seen = seen_[{gateway, replica}];
      const uint64_t requests = counter(e, "requests");
      load.requests += increment(requests, seen.requests);
      seen.requests = requests;
      if (auto ttft = e.find("ttft_counts"); ttft != e.end() && ttft->is_array())
        for (size_t b = 0; b < seen.ttft.size() && b < ttft->size(); ++b) {
          const uint64_t c = (*ttft)[b].is_number() && (*ttft)[b].get<double>() > 0
                                 ? (*ttft)[b].get<uint64_t>()
                                 : 0;
          load.ttft[b] += increment(c, seen.ttft[b]);
          seen.ttft[b] = c;
        }
      load.in_flight += static_cast<int64_t>(counter(e, "in_flight"));
      // The engine's own numbers: any gateway's recent scrape will do; the
      // highest is the most cautious.
      const auto age = number(e, "metrics_age_s");
      if (age && *age >= 0 && *age < 5) {
        if (auto w = number(e, "waiting")) load.waiting = std::max(load.waiting.value_or(0), *w);
        if (auto kv = number(e, "kv_usage"))
          load.kv_usage = std::max(load.kv_usage.value_or(0), *kv);
      }
    }
  }
  // Forget gateways and replicas that are gone, so a gateway coming back
  // starts from its counters as they are then.
  std::set<std::string> answered;
  for (const auto& [gateway, text] : reports) answered.insert(gateway);
  std::erase_if(seen_, [&](const auto& kv) {
    return !answered.count(kv.first.first) || !out.replicas.count(kv.first.second);
  });
  return out;
}

std::vector<std::string> ready_pod_addresses(const json& pods, const std::string& port_name,
                                             int default_port) {
  std::vector<std::string> out;
  auto items = pods.find("items");
  if (items == pods.end() || !items->is_array()) return out;
  for (const json& pod : *items) {
    if (!pod.is_object()) continue;
    const json status = pod.value("status", json::object());
    if (!status.is_object() || !status.contains("podIP") || !status["podIP"].is_string()) continue;
    bool ready = false;
    if (auto c = status.find("conditions"); c != status.end() && c->is_array())
      for (const json& cond : *c)
        ready |= cond.is_object() && cond.value("type", "") == "Ready" &&
                 cond.value("status", "") == "True";
    if (!ready || (pod.contains("metadata") && pod["metadata"].is_object() &&
                   pod["metadata"].contains("deletionTimestamp")))
      continue;
    int port = default_port;
    const json spec = pod.value("spec", json::object());
    if (auto cs = spec.find("containers"); cs != spec.end() && cs->is_array())
      for (const json& container : *cs)
        if (auto ps = container.find("ports"); ps != container.end() && ps->is_array())
          for (const json& p : *ps)
            if (p.is_object() && p.value("name", "") == port_name && p.contains("containerPort") &&
                p["containerPort"].is_number_integer())
              port = p["containerPort"].get<int>();
    out.push_back(fmt::format("{}:{}", status["podIP"].get<std::string>(), port));
  }
  return out;
}

GatewayLoadCollector::GatewayLoadCollector(const kube::Client& client, std::string namespace_name,
                                           std::string selector, Controller& controller,
                                           double interval_s)
    : client_(client),
      namespace_(std::move(namespace_name)),
      selector_(std::move(selector)),
      controller_(controller),
      interval_s_(interval_s) {}

GatewayLoadCollector::~GatewayLoadCollector() {
  stop();
}

void GatewayLoadCollector::start() {
  thread_ = std::thread([this] { run(); });
}

void GatewayLoadCollector::stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
}

void GatewayLoadCollector::run() {
  using Clock = std::chrono::steady_clock;
  const std::string pods = kube::collection_path("v1", namespace_, "pods");
  std::vector<std::string> gateways;
  Clock::time_point listed{};
  std::string last_problem;
  auto warn_once = [&](const std::string& problem) {
    if (problem != last_problem) spdlog::warn("gateway load: {}", problem);
    last_problem = problem;
  };
  while (!stopping_) {
    const auto round_start = Clock::now();
    if (round_start - listed > std::chrono::seconds(2)) {
      listed = round_start;
      if (auto list = client_.list(pods, selector_); list.ok()) {
        gateways = ready_pod_addresses(*list);
        if (gateways.empty()) warn_once(fmt::format("no Ready gateway Pod ({})", selector_));
      } else {
        warn_once(list.error().message);
      }
    }
    std::vector<std::pair<std::string, std::string>> reports;
    for (const std::string& g : gateways) {
      auto url = parse_url("http://" + g + "/loadstar/v1/load");
      if (!url.ok()) continue;
      auto r = http::fetch({.host = url->host,
                            .port = url->port,
                            .target = url->target,
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
    controller_.apply_load(round);
    const auto next =
        round_start + std::chrono::milliseconds(static_cast<int64_t>(interval_s_ * 1000));
    while (!stopping_ && Clock::now() < next)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace loadstar::controller
