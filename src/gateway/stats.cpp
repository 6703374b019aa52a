#include "gateway/stats.h"

#include <algorithm>
#include <limits>

#include "common/metrics_text.h"

namespace loadstar::gateway {

namespace {

const std::vector<double> kLatencyBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                            2.5,   5,    10,    20,   40,  80,   160, 320};
const std::vector<double> kTokenizeBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                             0.025,  0.05,  0.1,    0.25,  0.5};
const std::vector<double> kItlBounds = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06,
                                        0.08,  0.1,    0.25,  0.5,  1,    2.5,  5};
}  // namespace

Histogram::Histogram(const std::vector<double>* bounds)
    : bounds_(bounds ? bounds : &kLatencyBounds), counts_(bounds_->size() + 1, 0) {}

void Histogram::observe(double value) {
  auto it = std::lower_bound(bounds_->begin(), bounds_->end(), value);
  ++counts_[static_cast<size_t>(it - bounds_->begin())];
  sum_ += value;
  ++count_;
}

void Histogram::merge(const Histogram& other) {
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
  sum_ += other.sum_;
  count_ += other.count_;
}

ModelStats::ModelStats()
    : ttft(&kLatencyBounds),
      held_ttft(&kLatencyBounds),
      inter_token(&kItlBounds),
      duration(&kLatencyBounds),
      prefill_leg(&kLatencyBounds),
      tokenize(&kTokenizeBounds) {}

void ModelStats::merge(const ModelStats& other) {
  for (const auto& [code, n] : other.requests_by_code) requests_by_code[code] += n;
  ttft.merge(other.ttft);
  held_ttft.merge(other.held_ttft);
  inter_token.merge(other.inter_token);
  duration.merge(other.duration);
  prompt_tokens += other.prompt_tokens;
  completion_tokens += other.completion_tokens;
  in_flight += other.in_flight;
  retries += other.retries;
  reconnects += other.reconnects;
  fallbacks += other.fallbacks;
  for (const auto& [b, n] : other.backend_requests) backend_requests[b] += n;
  held += other.held;
  hold_timeouts += other.hold_timeouts;
  hold_overflows += other.hold_overflows;
  prefix_blocks_matched += other.prefix_blocks_matched;
  prefix_blocks_total += other.prefix_blocks_total;
  disaggregated += other.disaggregated;
  prefill_leg.merge(other.prefill_leg);
  prefill_fallbacks += other.prefill_fallbacks;
  tokenize.merge(other.tokenize);
  tokenize_failures += other.tokenize_failures;
}

void TenantStats::merge(const TenantStats& other) {
  for (const auto& [code, n] : other.requests_by_code) requests_by_code[code] += n;
  prompt_tokens += other.prompt_tokens;
  completion_tokens += other.completion_tokens;
  cost += other.cost;
}

void GatewayStats::merge(const GatewayStats& other) {
  for (const auto& [model, s] : other.models) models[model].merge(s);
  for (const auto& [key, s] : other.tenants) tenants[key].merge(s);
  for (const auto& [key, n] : other.rate_limited) rate_limited[key] += n;
  for (const auto& [key, n] : other.auth_failures) auth_failures[key] += n;
  ejections += other.ejections;
  overloaded += other.overloaded;
}

std::string render_metrics(const GatewayStats& stats) {
  std::vector<std::string> models;
  for (const auto& [m, s] : stats.models) models.push_back(m);
  std::sort(models.begin(), models.end());

  MetricsText text;
  auto& requests = text.counter("loadstar_gateway_requests_total",
                                "Requests answered, by model and HTTP status code.");
  auto& prompt = text.counter("loadstar_gateway_prompt_tokens_total",
                              "Prompt tokens, as the engines reported.");
  auto& completion = text.counter("loadstar_gateway_completion_tokens_total",
                                  "Completion tokens, as the engines reported.");
  auto& retries = text.counter("loadstar_gateway_upstream_retries_total",
                               "Requests retried on another replica after a failed attempt.");
  auto& reconnects = text.counter(
      "loadstar_gateway_upstream_reconnects_total",
      "Attempts resent to the same replica on a fresh connection because the pooled keep-alive "
      "connection they took had been closed by the replica before any response byte.");
  auto& in_flight = text.gauge("loadstar_gateway_requests_in_flight", "Requests being served.");
  auto& ttft =
      text.histogram("loadstar_gateway_time_to_first_token_seconds",
                     "Seconds from request arrival to the first token (streams) or the response.");
  auto& itl = text.histogram("loadstar_gateway_inter_token_latency_seconds",
                             "Seconds between consecutive streamed events.");
  auto& e2e = text.histogram("loadstar_gateway_request_duration_seconds",
                             "Seconds from request arrival to the last byte of the response.");
  auto& fallbacks =
      text.counter("loadstar_gateway_fallbacks_total",
                   "Attempts sent to a lower-priority backend group after the one before failed.");
  auto& backend = text.counter("loadstar_gateway_backend_requests_total",
                               "Attempts per backend of a model (route splits).");
  auto& held = text.counter("loadstar_gateway_held_requests_total",
                            "Requests that waited for a replica to become ready.");
  auto& hold_timeouts = text.counter("loadstar_gateway_hold_timeouts_total",
                                     "Held requests that timed out before a replica was ready.");
  auto& hold_overflows = text.counter("loadstar_gateway_hold_overflows_total",
                                      "Requests refused because the hold queue was full.");
  auto& held_ttft =
      text.histogram("loadstar_gateway_held_time_to_first_token_seconds",
                     "Time to first token of requests that waited for a replica to start (a cold "
                     "start met at zero ready replicas), hold included.");
  auto& prefix_matched =
      text.counter("loadstar_gateway_prefix_blocks_matched_total",
                   "Prompt blocks the chosen endpoint was last sent (expected prefix-cache hits).");
  auto& prefix_total = text.counter("loadstar_gateway_prefix_blocks_total",
                                    "Prompt blocks hashed for prefix-aware routing.");
  auto& disaggregated =
      text.counter("loadstar_gateway_disaggregated_requests_total",
                   "Requests whose prompt a prefill replica computed and handed to a decode "
                   "replica (spec.prefill).");
  auto& prefill_leg = text.histogram(
      "loadstar_gateway_prefill_seconds",
      "The prefill leg of disaggregated requests: sent to a prefill replica until its KV was "
      "ready to read.");
  auto& prefill_fallbacks =
      text.counter("loadstar_gateway_prefill_fallbacks_total",
                   "Requests served whole by a decode replica because their prefill leg failed.");
  auto& tokenize = text.histogram(
      "loadstar_gateway_tokenize_seconds",
      "Prompts tokenized by an engine of the service (POST /tokenize) to match the engines' "
      "KV events: time of the exchange.");
  auto& tokenize_failures =
      text.counter("loadstar_gateway_tokenize_failures_total",
                   "Asks to tokenize a prompt that failed (refused, timed out, or not an "
                   "answer): the pick went by the gateway's own prefix index.");
  auto histogram = [](const Histogram& h) {
    MetricsText::Histogram out;
    out.bounds = h.bounds();
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.bounds().size(); ++i) {
      cumulative += h.counts()[i];
      out.cumulative.push_back(cumulative);
    }
    out.count = h.count();
    out.sum = h.sum();
    return out;
  };
  for (const auto& model : models) {
    const ModelStats& s = stats.models.at(model);
    for (const auto& [code, n] : s.requests_by_code)
      requests.add(static_cast<double>(n), {{"code", std::to_string(code)}, {"model", model}});
    const MetricsText::Labels labels = {{"model", model}};
    prompt.add(static_cast<double>(s.prompt_tokens), labels);
    completion.add(static_cast<double>(s.completion_tokens), labels);
    retries.add(static_cast<double>(s.retries), labels);
    reconnects.add(static_cast<double>(s.reconnects), labels);
    in_flight.add(static_cast<double>(s.in_flight), labels);
    ttft.add(histogram(s.ttft), labels);
    held_ttft.add(histogram(s.held_ttft), labels);
    itl.add(histogram(s.inter_token), labels);
    e2e.add(histogram(s.duration), labels);
    fallbacks.add(static_cast<double>(s.fallbacks), labels);
    held.add(static_cast<double>(s.held), labels);
    hold_timeouts.add(static_cast<double>(s.hold_timeouts), labels);
    hold_overflows.add(static_cast<double>(s.hold_overflows), labels);
    prefix_matched.add(static_cast<double>(s.prefix_blocks_matched), labels);
    prefix_total.add(static_cast<double>(s.prefix_blocks_total), labels);
    disaggregated.add(static_cast<double>(s.disaggregated), labels);
    prefill_leg.add(histogram(s.prefill_leg), labels);
    prefill_fallbacks.add(static_cast<double>(s.prefill_fallbacks), labels);
    tokenize.add(histogram(s.tokenize), labels);
    tokenize_failures.add(static_cast<double>(s.tokenize_failures), labels);
    for (const auto& [b, n] : s.backend_requests)
      backend.add(static_cast<double>(n), {{"backend", b}, {"model", model}});
  }
  auto& tenant_requests = text.counter("loadstar_gateway_tenant_requests_total",
                                       "Requests per tenant, model and HTTP status code.");
  auto& tenant_prompt = text.counter("loadstar_gateway_tenant_prompt_tokens_total",
                                     "Prompt tokens per tenant and model.");
  auto& tenant_completion = text.counter("loadstar_gateway_tenant_completion_tokens_total",
                                         "Completion tokens per tenant and model.");
  auto& tenant_cost =
      text.counter("loadstar_gateway_tenant_cost_total",
                   "Token cost per tenant and model, by the tenant's tokenCost expression.");
  for (const auto& [key, t] : stats.tenants) {
    const MetricsText::Labels labels = {{"model", key.second}, {"tenant", key.first}};
    for (const auto& [code, n] : t.requests_by_code)
      tenant_requests.add(
          static_cast<double>(n),
          {{"code", std::to_string(code)}, {"model", key.second}, {"tenant", key.first}});
    tenant_prompt.add(static_cast<double>(t.prompt_tokens), labels);
    tenant_completion.add(static_cast<double>(t.completion_tokens), labels);
    tenant_cost.add(t.cost, labels);
  }
  auto& limited = text.counter("loadstar_gateway_rate_limited_total",
                               "Requests refused with 429, per tenant and limit.");
  for (const auto& [key, n] : stats.rate_limited)
    limited.add(static_cast<double>(n), {{"limit", key.second}, {"tenant", key.first}});
  auto& auth =
      text.counter("loadstar_gateway_auth_failures_total", "Requests refused with 401, by reason.");
  for (const auto& [reason, n] : stats.auth_failures)
    auth.add(static_cast<double>(n), {{"reason", reason}});
  text.counter("loadstar_gateway_outlier_ejections_total",
               "Endpoints ejected after consecutive failures.")
      .add(static_cast<double>(stats.ejections));
  text.gauge("loadstar_gateway_client_connections", "Client connections open.")
      .add(static_cast<double>(stats.connections));
  text.gauge("loadstar_gateway_client_connections_limit",
             "Client connections served at once; more are refused with 503.")
      .add(static_cast<double>(stats.max_connections));
  text.counter("loadstar_gateway_client_connections_refused_total",
               "Connections refused with 503 at the connection limit.")
      .add(static_cast<double>(stats.refused_connections));
  if (stats.shared_limits >= 0) {
    text.gauge("loadstar_gateway_shared_limits_up",
               "1: tenant limits are shared through Redis; 0: Redis is not answering and each "
               "gateway applies its own.")
        .add(stats.shared_limits);
    text.counter("loadstar_gateway_shared_limits_errors_total",
                 "Redis calls for shared tenant limits that failed or timed out.")
        .add(static_cast<double>(stats.shared_limits_errors));
  }
  text.counter("loadstar_gateway_overloaded_total",
               "Requests refused with 503 because the gateway ran out of descriptors.")
      .add(static_cast<double>(stats.overloaded));
  return text.str();
}

}  // namespace loadstar::gateway
