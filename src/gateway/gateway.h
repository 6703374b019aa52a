// The gateway: Loadstar's OpenAI-compatible front door. It routes each
// request by its `model` to a ready replica of that InferenceService (least
// outstanding requests first), passes SSE streams through event by event,
// retries on another replica when one refuses before anything reached the
// client, and answers errors in OpenAI's shape.
//
// Threading: `workers` threads, each with its own io_context, acceptor
// (SO_REUSEPORT), upstream connection pool, statistics and pointer to the
// current routing table. Nothing on the request path is shared across
// workers except the endpoints' atomic in-flight counters.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"
#include "gateway/routing_table.h"

namespace loadstar::gateway {

struct GatewayOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  unsigned workers = 2;
  uint64_t max_body_bytes = 8u << 20;
  double connect_timeout_s = 2;
  // Silence from an upstream longer than this fails the request (502).
  double upstream_idle_timeout_s = 300;
  unsigned max_attempts = 3;  // replicas tried per request
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

  struct Impl;

 private:
  explicit Gateway(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace loadstar::gateway
