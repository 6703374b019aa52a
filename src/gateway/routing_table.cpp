#include "gateway/routing_table.h"

namespace loadstar::gateway {

namespace {
std::atomic<uint64_t> next_endpoint_id{1};
}  // namespace

Endpoint::Endpoint(std::string service_, std::string replica_, std::string host_, uint16_t port_)
    : id(next_endpoint_id.fetch_add(1, std::memory_order_relaxed)),
      service(std::move(service_)),
      replica(std::move(replica_)),
      host(std::move(host_)),
      port(port_),
      key(host + ":" + std::to_string(port)) {}

}  // namespace loadstar::gateway
