// How a gateway of Kubernetes mode learns what to route: the custom
// resources (services, routes, tenants) from a KubeStore and the Ready
// engine Pods from an informer, turned into a routing table on every
// change. Each gateway replica runs its own; they agree because they watch
// the same objects.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "gateway/routing_table.h"
#include "kube/informer.h"
#include "routing/routing_builder.h"
#include "store/kube_store.h"

namespace loadstar::routing {

class EndpointDiscovery {
 public:
  using Publish = std::function<void(std::shared_ptr<const gateway::RoutingTable>)>;
  EndpointDiscovery(const kube::Client& client, store::KubeStore& store, Publish publish);
  ~EndpointDiscovery();

  Status start(double timeout_s);

 private:
  void rebuild();

  store::KubeStore& store_;
  Publish publish_;
  kube::Informer pods_;
  std::shared_ptr<void> watch_;
  std::mutex mu_;  // one rebuild at a time
  RoutingBuilder builder_;
  std::string published_key_;
};

}  // namespace loadstar::routing
