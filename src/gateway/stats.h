// Per-model request statistics. Each gateway worker owns one GatewayStats and
// alone writes it (no atomics, no locks on the request path); a scrape
// collects a copy from every worker on that worker's thread and merges them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace loadstar::gateway {

class Histogram {
 public:
  explicit Histogram(const std::vector<double>* bounds = nullptr);
  void observe(double value);
  void merge(const Histogram& other);
  const std::vector<double>& bounds() const { return *bounds_; }
  const std::vector<uint64_t>& counts() const { return counts_; }  // per bucket, last is +Inf
  double sum() const { return sum_; }
  uint64_t count() const { return count_; }

 private:
  const std::vector<double>* bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

struct ModelStats {
  ModelStats();
  std::map<int, uint64_t> requests_by_code;
  Histogram ttft;         // request start to first token (first SSE data) or whole response
  Histogram held_ttft;    // the same, of requests that waited for a replica to start
  Histogram inter_token;  // between SSE data events
  Histogram duration;     // request start to last byte
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  int64_t in_flight = 0;
  uint64_t retries = 0;     // upstream attempts beyond the first
  uint64_t reconnects = 0;  // attempts resent on a fresh connection: the pooled one was closed
  uint64_t fallbacks = 0;   // attempts that went to a lower-priority backend group
  std::map<std::string, uint64_t> backend_requests;  // attempts per backend (splits)
  uint64_t held = 0;                                 // requests that waited for a replica
  uint64_t hold_timeouts = 0;                        // ... and gave up
  uint64_t hold_overflows = 0;                       // refused: the hold queue was full
  // Prompt blocks the picker found on the chosen endpoint, of all it hashed.
  uint64_t prefix_blocks_matched = 0;
  uint64_t prefix_blocks_total = 0;
  // Disaggregated serving: requests whose prompt a prefill replica computed,
  // their prefill legs' time, and requests served whole instead because
  // the prefill leg failed.
  uint64_t disaggregated = 0;
  Histogram prefill_leg;
  uint64_t prefill_fallbacks = 0;
  // Prompts tokenized by an engine (POST /tokenize) to match engines' KV
  // events: the exchange's time, and the asks that failed (the pick then
  // goes by the gateway's own prefix index).
  Histogram tokenize;
  uint64_t tokenize_failures = 0;
  void merge(const ModelStats& other);
};

// Usage per tenant and model, for chargeback.
struct TenantStats {
  std::map<int, uint64_t> requests_by_code;
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  double cost = 0;  // in the tenant's tokenCost units
  void merge(const TenantStats& other);
};

struct GatewayStats {
  std::unordered_map<std::string, ModelStats> models;
  std::map<std::pair<std::string, std::string>, TenantStats> tenants;    // (tenant, model)
  std::map<std::pair<std::string, std::string>, uint64_t> rate_limited;  // (tenant, limit)
  std::map<std::string, uint64_t> auth_failures;  // by reason: missing, unknown, revoked
  uint64_t ejections = 0;                         // endpoints ejected by outlier detection
  uint64_t overloaded = 0;  // requests refused with 503: this gateway was out of descriptors
  // The server's, set when rendering (not merged): connections open, the
  // limit, and connections refused at it.
  uint64_t connections = 0, max_connections = 0, refused_connections = 0;
  // Shared tenant limits: -1 not configured, 0 Redis down (per-replica
  // limits in force), 1 up; and the store's errors so far.
  int shared_limits = -1;
  uint64_t shared_limits_errors = 0;
  void merge(const GatewayStats& other);
};

// Prometheus text exposition (via prometheus-cpp's serializer).
std::string render_metrics(const GatewayStats& stats);

}  // namespace loadstar::gateway
