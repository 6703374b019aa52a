#include "gateway/routing_table.h"

#include <algorithm>

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

void stamp_ttft_epochs(const RoutingTable& previous, const RoutingTable& next, int64_t now_ms) {
  for (const auto& [name, svc] : next.services) {
    auto before = previous.services.find(name);
    bool same =
        before != previous.services.end() && before->second.ready.size() == svc.ready.size();
    for (size_t i = 0; same && i < svc.ready.size(); ++i) {
      const uint64_t id = svc.ready[i]->id;
      same = std::any_of(before->second.ready.begin(), before->second.ready.end(),
                         [id](const auto& e) { return e->id == id; });
    }
    if (!same)
      for (const auto& e : svc.ready) e->ttft_epoch_ms.store(now_ms, std::memory_order_relaxed);
  }
}

}  // namespace loadstar::gateway
