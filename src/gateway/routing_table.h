// What the gateway routes by. The controller builds a new table whenever
// anything changes and publishes it; each gateway worker holds its own
// pointer to the current immutable table, so the request path reads it
// without any lock.
//
// A request's model names either a Route (weighted, prioritised backends) or
// an InferenceService directly (one backend). A backend is a service's ready
// replicas or one external OpenAI-compatible endpoint.
#pragma once

#include <atomic>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "gateway/endpoint_adapters.h"
#include "gateway/flow_queue.h"
#include "gateway/picker.h"
#include "gateway/tenants.h"

namespace loadstar::gateway {

// One replica's (or external backend's) HTTP endpoint. The object lives as
// long as any table or request holds it, so its counters survive table
// changes. A replica that restarts becomes a new Endpoint with a new id.
struct Endpoint {
  Endpoint(std::string service_, std::string replica_, std::string host_, uint16_t port_);
  const uint64_t id;  // unique in this process, never reused
  const std::string service;
  const std::string replica;
  const std::string host;
  const uint16_t port;
  const std::string key;  // "host:port"; also the Host header sent upstream
  // External backends only, set before the table is published: HTTPS to
  // `tls_name` (SNI and the name the certificate must carry), trusting
  // `ca_file` (PEM; empty: the system's CAs); the Host header to send
  // (empty: `key`).
  bool tls = false;
  std::string tls_name;
  std::string ca_file;
  std::string authority;

  // Requests the gateway has sent here and not finished (all workers).
  std::atomic<int64_t> in_flight{0};
  // Prompt bytes it has not yet answered with a first token (gateway's view
  // of its prefill queue, less what it was expected to hold in cache).
  std::atomic<int64_t> pending_prefill{0};
  // The same two as other gateways last reported them (SharedPrefixes):
  // what the picker weighs is the sum, whatever the number of gateways.
  std::atomic<int64_t> remote_in_flight{0};
  std::atomic<int64_t> remote_pending_prefill{0};
  // Requests ever sent here (the controller watches it for idleness).
  std::atomic<uint64_t> requests{0};
  // The engine's load from its /metrics, and when it was read (steady-clock
  // milliseconds; 0: never).
  std::atomic<double> waiting{0};
  std::atomic<double> kv_usage{0};
  std::atomic<double> kv_capacity_tokens{0};  // 0: unknown
  std::atomic<int64_t> metrics_at_ms{0};
  // LoRA adapters it runs, reported and sent (the picker's adapter affinity).
  EndpointAdapters adapters;
  // The adapters its engine loaded at start, in flag order (llama.cpp's
  // indices); set before the table is published. During a rollout replicas
  // of two revisions may hold different lists.
  std::vector<std::string> start_adapters;
  // Where its engine publishes KV events (empty: none); set before the table
  // is published. The gateway subscribes, and matches prompts against what
  // the engine says it holds (KvBlockIndex).
  std::string kv_events;
  // Outlier detection: consecutive failures (connect errors, timeouts, 5xx)
  // and, once ejected, until when (steady-clock milliseconds).
  std::atomic<uint32_t> consecutive_failures{0};
  std::atomic<uint32_t> ejections{0};
  std::atomic<int64_t> ejected_until_ms{0};
  // Time to first token as the gateway saw it, counted into buckets (upper
  // bounds kTtftBounds, then +Inf); the controller reads the counts to
  // follow a service's TTFT percentiles. Only requests that arrived since
  // the service's set of ready endpoints last changed count (`ttft_epoch_ms`,
  // steady-clock milliseconds; see stamp_ttft_epochs): a request that
  // queued behind the previous set is slow however many replicas came
  // since, and counting it would ask for yet more.
  static constexpr double kTtftBounds[] = {0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1,
                                           1.5,   2,    3,   5,   10,  20,  60};
  static constexpr size_t kTtftBuckets = std::size(kTtftBounds) + 1;
  std::atomic<uint64_t> ttft_counts[kTtftBuckets] = {};
  std::atomic<int64_t> ttft_epoch_ms{0};
  // A service with a TTFT SLO: requests still without a first token when
  // their SLO passed (FirstTokenDeadlines), counted then — a miss is known
  // at the deadline, not only when (if ever) the answer comes — and those
  // of them answered since (also in ttft_counts, so a reader counts each
  // once). The same epoch rule as ttft_counts.
  std::atomic<uint64_t> ttft_overdue{0};
  std::atomic<uint64_t> ttft_overdue_answered{0};
  bool counts_since_epoch(int64_t arrived_ms) const {
    return arrived_ms >= ttft_epoch_ms.load(std::memory_order_relaxed);
  }
  // `overdue`: the request was counted in ttft_overdue at its deadline.
  void observe_ttft(double seconds, int64_t arrived_ms, bool overdue = false) {
    if (!counts_since_epoch(arrived_ms)) return;
    size_t i = 0;
    while (i < std::size(kTtftBounds) && seconds > kTtftBounds[i]) ++i;
    ttft_counts[i].fetch_add(1, std::memory_order_relaxed);
    if (overdue) ttft_overdue_answered.fetch_add(1, std::memory_order_relaxed);
  }
  // Attempts sent here that failed (connect errors, timeouts, 5xx, streams
  // cut), counted whether or not a retry elsewhere saved the request, and
  // the gaps between a stream's token events (inter-token latency) in
  // buckets: what a canary's analysis compares between revisions.
  std::atomic<uint64_t> failures{0};
  static constexpr double kItlBounds[] = {0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1,
                                          0.15,  0.2,  0.3,  0.5,  1,    2,     5};
  static constexpr size_t kItlBuckets = std::size(kItlBounds) + 1;
  std::atomic<uint64_t> itl_counts[kItlBuckets] = {};
  void observe_itl(double seconds) {
    size_t i = 0;
    while (i < std::size(kItlBounds) && seconds > kItlBounds[i]) ++i;
    itl_counts[i].fetch_add(1, std::memory_order_relaxed);
  }
};

struct RoutingTable {
  struct Service {
    std::vector<std::shared_ptr<Endpoint>> ready;
    PickerConfig picker;
    // Whether a replica may come (starting, or scaling up from zero): then
    // requests wait for one rather than fail at once.
    bool may_get_replicas = true;
    uint32_t hold_max_requests = 256;
    double hold_timeout_s = 120;
    // Off unless a saturation threshold is set (routing::flow_control: one
    // by default for an SLO service whose slot count is declared).
    FlowControl flow;
    // autoscaling.slo's TTFT: a request without a first token by then is
    // counted as a miss at once (Endpoint::ttft_overdue), sent or still in
    // the flow-control queue, which serves first the requests that can
    // still meet it. None: not watched.
    std::optional<double> ttft_slo_s;
    // A canary rollout's split: `canary_weight` percent of the requests go
    // to the `canary` endpoints (of `ready`), the rest to the others.
    std::vector<const Endpoint*> canary;
    uint32_t canary_weight = 0;
    // spec.lora: adapters one replica runs at once (0: no LoRA) and keeps in
    // host memory; the picker's fallback where the engine does not say.
    uint32_t max_loras = 0;
    uint32_t max_cpu_loras = 0;
    // Its engine selects adapters by index in the request body (llama.cpp:
    // each endpoint's Endpoint::start_adapters gives the index), and a
    // client's own selection is dropped.
    bool adapters_by_index = false;
    // Its adapters are loaded into a replica where a request first needs
    // one (spec.lora.loading: onDemand): Backend::adapter_path says from where.
    bool adapters_on_demand = false;
    // A disaggregated service (spec.prefill): its prefill pool's ready
    // endpoints (`ready` are the decode pool's). A request with at least
    // `non_cached_tokens` prompt tokens not cached on the decode endpoint
    // picked for it is prefilled on one of these first (disaggregation.h).
    struct Prefill {
      std::string service;  // the pool's own ("<service>-prefill")
      std::vector<std::shared_ptr<Endpoint>> ready;
      uint32_t non_cached_tokens = 512;
      // None ready but some may come (scaled to zero, or starting): a
      // request that would use one asks for it, and is served whole meanwhile.
      bool may_get_replicas = true;
    };
    std::optional<Prefill> prefill;
  };
  struct Backend {
    std::string service;                 // an InferenceService, or
    std::shared_ptr<Endpoint> external;  // an external endpoint
    std::string model;                   // the model name sent upstream (empty: unchanged)
    std::string authorization;           // sent to an external backend ("Bearer ...")
    // `model` names one of the service's LoRA adapters (auto routes and
    // hand-written ones alike); with Service::adapters_on_demand, where its
    // replicas load it from (empty: not staged yet).
    bool adapter = false;
    std::string adapter_path;
    uint32_t weight = 1;
    uint32_t priority = 0;
    std::string label() const { return service.empty() ? external->key : service; }
  };
  struct Route {
    std::vector<Backend> backends;  // ordered by priority
    // A service's LoRA adapter (spec.lora): its prompts' blocks are keyed
    // by the adapter, as the engine's prefix cache is.
    bool adapter = false;
  };
  // Every declared service, ready replicas or not (an unknown model is a 404,
  // a known one without replicas waits or gets a 503).
  std::unordered_map<std::string, Service> services;
  // Model names clients use -> backends (services are routable by their own
  // name without a route).
  std::unordered_map<std::string, Route> routes;
  // API keys; when empty the gateway is open (no key needed).
  std::shared_ptr<const TenantDirectory> tenants;
  uint64_t version = 0;
};

// Where a service's set of ready endpoints differs between `previous` and
// `next`, its endpoints in `next` start counting TTFT afresh from `now_ms`
// (Endpoint::ttft_epoch_ms).
void stamp_ttft_epochs(const RoutingTable& previous, const RoutingTable& next, int64_t now_ms);

}  // namespace loadstar::gateway
