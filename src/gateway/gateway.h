// The gateway: Loadstar's OpenAI-compatible front door. For each request it
// checks the caller's API key and tenant limits, resolves the model to its
// backends (a route's weighted, prioritised backends, or the service of that
// name), picks an endpoint (prefix-cache affinity, load, session), passes SSE
// streams through event by event, retries elsewhere and falls back to the
// next priority group when an attempt fails before anything reached the
// client, holds requests while a service has no ready replica, and answers
// errors in OpenAI's shape.
//
// Besides the OpenAI API it serves /health, /metrics and
// GET /loadstar/v1/load: per replica it routes to (and one it stopped routing
// to, while requests run there and for 5 s after) the requests sent, in flight,
// TTFT bucket counts (Endpoint::kTtftBounds) and the engine's scraped queue
// and KV-cache use, and the services held requests wait for — what a
// controller in another process (Kubernetes mode) autoscales on.
//
// Threading: `workers` threads, each with its own io_context, acceptor
// (SO_REUSEPORT), upstream connection pool, statistics and pointer to the
// current routing table. Nothing on the request path is shared across
// workers except the endpoints' atomic in-flight counters.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/result.h"
#include "gateway/load_report.h"
#include "gateway/prefix_index.h"
#include "gateway/routing_table.h"
#include "http/bearer.h"

namespace loadstar::gateway {

struct GatewayOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  unsigned workers = 2;
  uint64_t max_body_bytes = 8u << 20;
  // Client connections at once (0: from the descriptor limit, raised to its
  // hard limit at start); past it, 503 with Retry-After.
  uint32_t max_connections = 0;
  double client_header_timeout_s = 30;  // slowloris: headers, then body, in time
  double client_body_timeout_s = 60;
  // HTTPS: PEM certificate chain and key (both or neither), reloaded on change.
  std::string tls_cert_file, tls_key_file;
  double connect_timeout_s = 2;
  // Silence from an upstream longer than this fails the request (502).
  double upstream_idle_timeout_s = 300;
  unsigned max_attempts = 3;  // endpoints tried per request
  // Retries in progress may be at most this share of requests in progress
  // (at least retry_budget_min), so a failing backend cannot multiply load.
  double retry_budget_ratio = 0.2;
  unsigned retry_budget_min = 3;
  // Outlier detection: an endpoint failing this many times in a row (connect
  // errors, timeouts, 5xx) is skipped for base_ejection_s times the number
  // of times it was ejected (capped at 10).
  unsigned outlier_consecutive_failures = 5;
  double outlier_base_ejection_s = 10;
  // How often each replica's /metrics is read (queue depth, KV-cache use).
  double scrape_interval_s = 0.1;
  PrefixIndexOptions prefix;
  // Output tokens assumed for a tenant's admission estimate when the request
  // sets no max_tokens.
  uint32_t default_output_estimate = 256;
  // Called (from a gateway thread; must not block) when a request is held
  // because `service` has no ready replica.
  std::function<void(const std::string& service)> on_demand;
  // More Prometheus text for /metrics (other components of the process).
  // Called on a gateway thread; must not block.
  std::function<std::string()> extra_metrics;
  // /metrics and /loadstar/v1/load: with a token, callers must present it;
  // without, only loopback callers are answered (tenant and model names,
  // load numbers are not for the public port).
  std::optional<http::BearerToken> internal_token;
  // Tenant limits shared by every gateway using the same Redis
  // (redis://HOST[:PORT]); empty: each gateway holds its own.
  std::string redis_url;
};

class Gateway {
 public:
  static Result<std::unique_ptr<Gateway>> create(GatewayOptions options);
  ~Gateway();
  uint16_t port() const;
  void start();
  // Stops accepting and waits for the workers to finish what they serve
  // (at most `grace_s`), then stops them.
  void stop(double grace_s = 5);
  // Makes `table` the routing table of every worker (thread-safe).
  void publish(std::shared_ptr<const RoutingTable> table);
  // Requests being served, all workers and models.
  int64_t in_flight() const;
  // Its counters per replica and the services held requests wait for, now
  // (what GET /loadstar/v1/load serves; thread-safe, never blocks on a
  // request).
  LoadReport load_report() const;

  struct Impl;

 private:
  explicit Gateway(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace loadstar::gateway
