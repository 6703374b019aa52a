// The gateways' view of the load, for a controller in another process
// (Kubernetes mode): every gateway replica serves its report at
// GET /loadstar/v1/load, and the collector polls each Ready gateway Pod
// (found by label, like the gateway Service finds them, through an
// informer: a list every round would have the API server read every Pod of
// the namespace, replicas included, to find the few gateways) over kept-alive
// connections, and aggregates the answers into rounds (load.h), so the
// autoscaler, scale to zero and draining work the same as with the gateway
// of `loadstar up`.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "controller/load.h"
#include "http/bearer.h"
#include "http/client.h"
#include "kube/client.h"

namespace loadstar::kube {
class NamespaceScope;
class ScopedInformer;
}  // namespace loadstar::kube

namespace loadstar::controller {

// A Ready gateway Pod: its namespace and "podIP:port".
struct ServingPod {
  std::string namespace_name, address;
  bool operator==(const ServingPod&) const = default;
};
// The Ready Pods of `pods` (objects): the container port named
// `port_name`, else `default_port`.
std::vector<ServingPod> ready_pod_addresses(const std::vector<kube::json>& pods,
                                            const std::string& port_name = "http",
                                            int default_port = 8080);

// A gateway's report in the names of a controller whose scope has
// `namespace_name` (the gateway serves that namespace with bare names).
void qualify_report(gateway::LoadReport& report, const kube::NamespaceScope& scope,
                    const std::string& namespace_name);

// Polls the gateways every `interval_s` and keeps the rounds until the
// controller takes them; the Pods matching `selector` in every namespace
// of `scope` are watched. Each poll carries the internal token (its
// namespace's derived token outside the home namespace; none without one).
class GatewayLoadCollector : public LoadSource {
 public:
  GatewayLoadCollector(const kube::Client& client, const kube::NamespaceScope& scope,
                       std::string selector, std::optional<http::BearerToken> internal_token,
                       double interval_s = 0.5);
  ~GatewayLoadCollector() override;
  void start();
  void stop();
  std::optional<LoadRound> take() override;
  void on_demand(std::function<void()> wake) override;

 private:
  void run();

  // The Authorization header for a gateway in `namespace_name`.
  std::string authorization(const std::string& namespace_name) const;

  const kube::NamespaceScope& scope_;
  std::string selector_;
  std::optional<http::BearerToken> internal_token_;  // none: polls carry no token
  double interval_s_;
  std::unique_ptr<kube::ScopedInformer> gateways_;  // the gateway Pods
  http::ClientPool pool_;                           // connections to them
  LoadAggregator aggregator_;
  std::mutex mu_;                     // guards the two below
  std::optional<LoadRound> pending_;  // rounds since the last take()
  std::function<void()> wake_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace loadstar::controller
