#include "gateway/load_report.h"

#include "common/strings.h"

#include <cmath>

#include <nlohmann/json.hpp>

namespace loadstar::gateway {

using nlohmann::json;

EndpointLoad endpoint_load(const Endpoint& e, int64_t now_ms, double bytes_per_token) {
  EndpointLoad out;
  out.service = e.service;
  out.replica = e.replica;
  out.address = e.key;
  out.requests = e.requests.load(std::memory_order_relaxed);
  out.in_flight = e.in_flight.load(std::memory_order_relaxed);
  out.waiting = e.waiting.load(std::memory_order_relaxed);
  out.kv_usage = e.kv_usage.load(std::memory_order_relaxed);
  const int64_t at = e.metrics_at_ms.load(std::memory_order_relaxed);
  out.metrics_age_s = at > 0 ? (now_ms - at) / 1000.0 : -1.0;
  out.prefill_tokens =
      static_cast<double>(std::max<int64_t>(0, e.pending_prefill.load(std::memory_order_relaxed))) /
      std::max(bytes_per_token, 1.0);
  for (size_t b = 0; b < out.ttft.size(); ++b)
    out.ttft[b] = e.ttft_counts[b].load(std::memory_order_relaxed);
  out.ttft_overdue = e.ttft_overdue.load(std::memory_order_relaxed);
  out.ttft_overdue_answered = e.ttft_overdue_answered.load(std::memory_order_relaxed);
  out.failures = e.failures.load(std::memory_order_relaxed);
  for (size_t b = 0; b < out.itl.size(); ++b)
    out.itl[b] = e.itl_counts[b].load(std::memory_order_relaxed);
  out.adapters = e.adapters.active(now_ms - 5000);
  return out;
}

std::string load_report_json(const LoadReport& report) {
  json endpoints = json::array();
  for (const EndpointLoad& e : report.endpoints) {
    endpoints.push_back({{"service", e.service},
                         {"replica", e.replica},
                         {"address", e.address},
                         {"requests", e.requests},
                         {"in_flight", e.in_flight},
                         {"waiting", e.waiting},
                         {"kv_usage", e.kv_usage},
                         {"metrics_age_s", e.metrics_age_s},
                         {"prefill_tokens", e.prefill_tokens},
                         {"ttft_counts", e.ttft},
                         {"ttft_overdue", e.ttft_overdue},
                         {"ttft_overdue_answered", e.ttft_overdue_answered},
                         {"failures", e.failures},
                         {"itl_counts", e.itl}});
    if (!e.adapters.empty()) endpoints.back()["adapters"] = e.adapters;
  }
  json held = json::object();
  for (const auto& [service, n] : report.held)
    if (n > 0) held[service] = n;
  json queued = json::object();
  for (const auto& [service, n] : report.queued)
    if (n > 0) queued[service] = n;
  json queued_overdue = json::object();
  for (const auto& [service, n] : report.queued_overdue)
    if (n > 0) queued_overdue[service] = n;
  json turned_away = json::object();
  for (const auto& [service, n] : report.turned_away)
    if (n > 0) turned_away[service] = n;
  json tenants = json::array();
  for (const TenantLoad& t : report.tenants)
    tenants.push_back({{"tenant", t.tenant},
                       {"model", t.model},
                       {"requests", t.requests},
                       {"errors", t.errors},
                       {"prompt_tokens", t.prompt_tokens},
                       {"completion_tokens", t.completion_tokens},
                       {"cost", t.cost}});
  return json({{"endpoints", std::move(endpoints)},
               {"tenants", std::move(tenants)},
               {"instance", report.instance},
               {"held", std::move(held)},
               {"queued", std::move(queued)},
               {"queued_overdue", std::move(queued_overdue)},
               {"turned_away", std::move(turned_away)},
               {"wanted", report.wanted}})
      .dump();
}

namespace {

std::optional<double> number(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

// Counters are whole and never negative; anything else reads as 0.
uint64_t counter(const json& value) {
  if (!value.is_number()) return 0;
  const double v = value.get<double>();
  return v > 0 && v < 1.8e19 ? static_cast<uint64_t>(v) : 0;
}

}  // namespace

Result<ParsedLoadReport> parse_load_report(std::string_view text) {
  const json doc = json::parse(text, nullptr, false);
  if (!doc.is_object() || !doc.contains("endpoints") || !doc["endpoints"].is_array())
    return Error{ErrorCode::kInvalidArgument,
                 "the load report is not an object with an 'endpoints' list"};
  ParsedLoadReport out;
  if (auto held = doc.find("held"); held != doc.end() && held->is_object())
    for (const auto& [service, n] : held->items())
      if (n.is_number() && n.get<double>() > 0)
        out.report.held[service] = static_cast<int64_t>(std::max(1.0, n.get<double>()));
  if (auto queued = doc.find("queued"); queued != doc.end() && queued->is_object())
    for (const auto& [service, n] : queued->items())
      if (const uint64_t count = counter(n); count > 0)
        out.report.queued[service] = static_cast<int64_t>(std::min<uint64_t>(count, INT64_MAX));
  if (auto overdue = doc.find("queued_overdue"); overdue != doc.end() && overdue->is_object())
    for (const auto& [service, n] : overdue->items())
      if (const uint64_t count = counter(n); count > 0)
        out.report.queued_overdue[service] =
            static_cast<int64_t>(std::min<uint64_t>(count, INT64_MAX));
  if (auto away = doc.find("turned_away"); away != doc.end() && away->is_object())
    for (const auto& [service, n] : away->items())
      if (const uint64_t count = counter(n); count > 0) out.report.turned_away[service] = count;
  if (auto wanted = doc.find("wanted"); wanted != doc.end() && wanted->is_array())
    for (const json& service : *wanted)
      if (service.is_string() && out.report.wanted.size() < 4096)
        out.report.wanted.push_back(service);
  if (auto instance = doc.find("instance"); instance != doc.end() && instance->is_string())
    out.report.instance = utf8_clip(instance->get<std::string>(), 64);
  if (auto tenants = doc.find("tenants"); tenants != doc.end() && tenants->is_array())
    for (const json& t : *tenants) {
      if (!t.is_object() || !t.contains("tenant") || !t["tenant"].is_string() ||
          !t.contains("model") || !t["model"].is_string() || out.report.tenants.size() >= 4096) {
        out.problems.push_back("a tenant's usage without a tenant and model name");
        continue;
      }
      const double cost = number(t, "cost").value_or(0);
      out.report.tenants.push_back(
          {.tenant = t["tenant"].get<std::string>(),
           .model = t["model"].get<std::string>(),
           .requests = t.contains("requests") ? counter(t["requests"]) : 0,
           .errors = t.contains("errors") ? counter(t["errors"]) : 0,
           .prompt_tokens = t.contains("prompt_tokens") ? counter(t["prompt_tokens"]) : 0,
           .completion_tokens =
               t.contains("completion_tokens") ? counter(t["completion_tokens"]) : 0,
           .cost = std::isfinite(cost) && cost > 0 ? cost : 0});
    }
  for (const json& e : doc["endpoints"]) {
    if (!e.is_object() || !e.contains("replica") || !e["replica"].is_string()) {
      out.problems.push_back("an endpoint without a replica name");
      continue;
    }
    EndpointLoad load;
    load.replica = e["replica"].get<std::string>();
    if (auto s = e.find("service"); s != e.end() && s->is_string()) load.service = *s;
    if (auto a = e.find("address"); a != e.end() && a->is_string()) load.address = *a;
    if (auto r = e.find("requests"); r != e.end()) load.requests = counter(*r);
    if (auto f = e.find("in_flight"); f != e.end())
      load.in_flight = static_cast<int64_t>(std::min<uint64_t>(counter(*f), INT64_MAX));
    load.waiting = number(e, "waiting").value_or(0);
    load.kv_usage = number(e, "kv_usage").value_or(0);
    load.metrics_age_s = number(e, "metrics_age_s").value_or(-1);
    load.prefill_tokens = std::max(0.0, number(e, "prefill_tokens").value_or(0));
    if (auto ttft = e.find("ttft_counts"); ttft != e.end() && ttft->is_array())
      for (size_t b = 0; b < load.ttft.size() && b < ttft->size(); ++b)
        load.ttft[b] = counter((*ttft)[b]);
    if (auto o = e.find("ttft_overdue"); o != e.end()) load.ttft_overdue = counter(*o);
    if (auto o = e.find("ttft_overdue_answered"); o != e.end())
      load.ttft_overdue_answered = counter(*o);
    if (auto f = e.find("failures"); f != e.end()) load.failures = counter(*f);
    if (auto itl = e.find("itl_counts"); itl != e.end() && itl->is_array())
      for (size_t b = 0; b < load.itl.size() && b < itl->size(); ++b)
        load.itl[b] = counter((*itl)[b]);
    if (auto a = e.find("adapters"); a != e.end() && a->is_array())
      for (const json& name : *a)
        if (name.is_string() && load.adapters.size() < 4096) load.adapters.push_back(name);
    out.report.endpoints.push_back(std::move(load));
  }
  return out;
}

}  // namespace loadstar::gateway
