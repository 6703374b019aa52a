// What the gateway routes by: for each model (an InferenceService's name),
// the replicas ready to serve it. The controller builds a new table when
// anything changes and publishes it; each gateway worker holds its own
// pointer to the current immutable table, so the request path reads it
// without any lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace loadstar::gateway {

// One replica's HTTP endpoint. The object lives as long as any table or
// request holds it, so its in-flight count survives table changes.
struct Endpoint {
  Endpoint(std::string service_, std::string replica_, std::string host_, uint16_t port_)
      : service(std::move(service_)),
        replica(std::move(replica_)),
        host(std::move(host_)),
        port(port_),
        key(host + ":" + std::to_string(port)) {}
  const std::string service;
  const std::string replica;
  const std::string host;
  const uint16_t port;
  const std::string key;  // "host:port"; also the Host header sent upstream
  // Requests the gateway has sent here and not finished (all workers).
  std::atomic<int64_t> in_flight{0};
};

struct RoutingTable {
  struct Service {
    std::vector<std::shared_ptr<Endpoint>> ready;
  };
  // Every declared service, ready replicas or not (an unknown model is a 404,
  // a known one without replicas a 503).
  std::unordered_map<std::string, Service> services;
  uint64_t version = 0;
};

// The ready endpoint with the fewest outstanding requests, skipping those in
// `tried`; ties go round-robin by `turn`. nullptr when none is left.
Endpoint* pick_least_outstanding(const std::vector<std::shared_ptr<Endpoint>>& ready,
                                 const std::vector<const Endpoint*>& tried, uint64_t turn);

}  // namespace loadstar::gateway
