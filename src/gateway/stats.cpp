#include "gateway/stats.h"

#include <algorithm>
#include <limits>

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

namespace loadstar::gateway {

namespace {

void add_counter(prometheus::MetricFamily& family,
                 std::vector<prometheus::ClientMetric::Label> labels, double value) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = value;
  family.metric.push_back(std::move(m));
}

const std::vector<double> kLatencyBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                            2.5,   5,    10,    20,   40,  80,   160, 320};
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
      duration(&kLatencyBounds) {}

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
}

std::string render_metrics(const GatewayStats& stats) {
  using prometheus::ClientMetric;
  using prometheus::MetricFamily;
  using prometheus::MetricType;
  std::vector<std::string> models;
  for (const auto& [m, s] : stats.models) models.push_back(m);
  std::sort(models.begin(), models.end());

  auto family = [](const char* name, const char* help, MetricType type) {
    MetricFamily f;
    f.name = name;
    f.help = help;
    f.type = type;
    return f;
  };
  MetricFamily requests =
      family("loadstar_gateway_requests_total", "Requests answered, by model and HTTP status code.",
             MetricType::Counter);
  MetricFamily prompt = family("loadstar_gateway_prompt_tokens_total",
                               "Prompt tokens, as the engines reported.", MetricType::Counter);
  MetricFamily completion =
      family("loadstar_gateway_completion_tokens_total",
             "Completion tokens, as the engines reported.", MetricType::Counter);
  MetricFamily retries =
      family("loadstar_gateway_upstream_retries_total",
             "Requests retried on another replica after a failed attempt.", MetricType::Counter);
  MetricFamily reconnects = family(
      "loadstar_gateway_upstream_reconnects_total",
      "Attempts resent to the same replica on a fresh connection because the pooled keep-alive "
      "connection they took had been closed by the replica before any response byte.",
      MetricType::Counter);
  MetricFamily in_flight =
      family("loadstar_gateway_requests_in_flight", "Requests being served.", MetricType::Gauge);
  MetricFamily ttft =
      family("loadstar_gateway_time_to_first_token_seconds",
             "Seconds from request arrival to the first token (streams) or the response.",
             MetricType::Histogram);
  MetricFamily held_ttft =
      family("loadstar_gateway_held_time_to_first_token_seconds",
             "Time to first token of requests that waited for a replica to start (a cold start "
             "met at zero ready replicas), hold included.",
             MetricType::Histogram);
  MetricFamily itl = family("loadstar_gateway_inter_token_latency_seconds",
                            "Seconds between consecutive streamed events.", MetricType::Histogram);
  MetricFamily e2e = family("loadstar_gateway_request_duration_seconds",
                            "Seconds from request arrival to the last byte of the response.",
                            MetricType::Histogram);
  auto histogram = [](const Histogram& h, const std::string& model) {
    ClientMetric m;
    m.label = {{"model", model}};
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.bounds().size(); ++i) {
      cumulative += h.counts()[i];
      m.histogram.bucket.push_back({cumulative, h.bounds()[i]});
    }
    m.histogram.bucket.push_back({h.count(), std::numeric_limits<double>::infinity()});
    m.histogram.sample_count = h.count();
    m.histogram.sample_sum = h.sum();
    return m;
  };
  MetricFamily fallbacks =
      family("loadstar_gateway_fallbacks_total",
             "Attempts sent to a lower-priority backend group after the one before failed.",
             MetricType::Counter);
  MetricFamily backend =
      family("loadstar_gateway_backend_requests_total",
             "Attempts per backend of a model (route splits).", MetricType::Counter);
  MetricFamily held =
      family("loadstar_gateway_held_requests_total",
             "Requests that waited for a replica to become ready.", MetricType::Counter);
  MetricFamily hold_timeouts =
      family("loadstar_gateway_hold_timeouts_total",
             "Held requests that timed out before a replica was ready.", MetricType::Counter);
  MetricFamily hold_overflows =
      family("loadstar_gateway_hold_overflows_total",
             "Requests refused because the hold queue was full.", MetricType::Counter);
  MetricFamily prefix_matched =
      family("loadstar_gateway_prefix_blocks_matched_total",
             "Prompt blocks the chosen endpoint was last sent (expected prefix-cache hits).",
             MetricType::Counter);
  MetricFamily prefix_total =
      family("loadstar_gateway_prefix_blocks_total",
             "Prompt blocks hashed for prefix-aware routing.", MetricType::Counter);
  for (const auto& model : models) {
    const ModelStats& s = stats.models.at(model);
    for (const auto& [code, n] : s.requests_by_code)
      add_counter(requests, {{"code", std::to_string(code)}, {"model", model}},
                  static_cast<double>(n));
    auto counter = [&](MetricFamily& f, double v) { add_counter(f, {{"model", model}}, v); };
    counter(prompt, static_cast<double>(s.prompt_tokens));
    counter(completion, static_cast<double>(s.completion_tokens));
    counter(retries, static_cast<double>(s.retries));
    counter(reconnects, static_cast<double>(s.reconnects));
    ClientMetric g;
    g.label = {{"model", model}};
    g.gauge.value = static_cast<double>(s.in_flight);
    in_flight.metric.push_back(g);
    ttft.metric.push_back(histogram(s.ttft, model));
    held_ttft.metric.push_back(histogram(s.held_ttft, model));
    itl.metric.push_back(histogram(s.inter_token, model));
    e2e.metric.push_back(histogram(s.duration, model));
    counter(fallbacks, static_cast<double>(s.fallbacks));
    counter(held, static_cast<double>(s.held));
    counter(hold_timeouts, static_cast<double>(s.hold_timeouts));
    counter(hold_overflows, static_cast<double>(s.hold_overflows));
    counter(prefix_matched, static_cast<double>(s.prefix_blocks_matched));
    counter(prefix_total, static_cast<double>(s.prefix_blocks_total));
    for (const auto& [b, n] : s.backend_requests) {
      add_counter(backend, {{"backend", b}, {"model", model}}, static_cast<double>(n));
    }
  }
  MetricFamily tenant_requests =
      family("loadstar_gateway_tenant_requests_total",
             "Requests per tenant, model and HTTP status code.", MetricType::Counter);
  MetricFamily tenant_prompt = family("loadstar_gateway_tenant_prompt_tokens_total",
                                      "Prompt tokens per tenant and model.", MetricType::Counter);
  MetricFamily tenant_completion =
      family("loadstar_gateway_tenant_completion_tokens_total",
             "Completion tokens per tenant and model.", MetricType::Counter);
  MetricFamily tenant_cost =
      family("loadstar_gateway_tenant_cost_total",
             "Token cost per tenant and model, by the tenant's tokenCost expression.",
             MetricType::Counter);
  for (const auto& [key, t] : stats.tenants) {
    const std::string& tenant =
        key.first;  // (not a structured binding: clang 14 cannot capture one)
    const std::string& model = key.second;
    for (const auto& [code, n] : t.requests_by_code) {
      add_counter(tenant_requests,
                  {{"code", std::to_string(code)}, {"model", model}, {"tenant", tenant}},
                  static_cast<double>(n));
    }
    auto counter = [&](MetricFamily& f, double v) {
      add_counter(f, {{"model", model}, {"tenant", tenant}}, v);
    };
    counter(tenant_prompt, static_cast<double>(t.prompt_tokens));
    counter(tenant_completion, static_cast<double>(t.completion_tokens));
    counter(tenant_cost, t.cost);
  }
  MetricFamily limited =
      family("loadstar_gateway_rate_limited_total",
             "Requests refused with 429, per tenant and limit.", MetricType::Counter);
  for (const auto& [key, n] : stats.rate_limited) {
    add_counter(limited, {{"limit", key.second}, {"tenant", key.first}}, static_cast<double>(n));
  }
  MetricFamily auth = family("loadstar_gateway_auth_failures_total",
                             "Requests refused with 401, by reason.", MetricType::Counter);
  for (const auto& [reason, n] : stats.auth_failures) {
    add_counter(auth, {{"reason", reason}}, static_cast<double>(n));
  }
  MetricFamily ejections =
      family("loadstar_gateway_outlier_ejections_total",
             "Endpoints ejected after consecutive failures.", MetricType::Counter);
  ClientMetric ej;
  ej.counter.value = static_cast<double>(stats.ejections);
  ejections.metric.push_back(ej);

  std::vector<MetricFamily> families = {
      requests,      prompt,          completion,    retries,
      reconnects,    in_flight,       ttft,          itl,
      e2e,           fallbacks,       backend,       held,
      hold_timeouts, hold_overflows,  held_ttft,     prefix_matched,
      prefix_total,  tenant_requests, tenant_prompt, tenant_completion,
      tenant_cost,   limited,         auth,          ejections};
  prometheus::TextSerializer serializer;
  return serializer.Serialize(families);
}

}  // namespace loadstar::gateway
