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
#include "http/client.h"
#include "kube/client.h"

namespace loadstar::kube {
class Informer;
}

namespace loadstar::controller {

// Addresses ("podIP:port") of the Ready Pods in a v1 PodList: the container
// port named `port_name`, else `default_port`.
std::vector<std::string> ready_pod_addresses(const kube::json& pods,
                                             const std::string& port_name = "http",
                                             int default_port = 8080);

// Polls the gateways every `interval_s` and keeps the rounds until the
// controller takes them; the Pods matching `selector` are watched.
// `authorization` ("Bearer <internal token>"; "" none)
// goes with each poll.
class GatewayLoadCollector : public LoadSource {
 public:
  GatewayLoadCollector(const kube::Client& client, std::string namespace_name, std::string selector,
                       std::string authorization, double interval_s = 0.5);
  ~GatewayLoadCollector() override;
  void start();
  void stop();
  std::optional<LoadRound> take() override;
  void on_demand(std::function<void()> wake) override;

 private:
  void run();

  std::string selector_;
  std::string authorization_;
  double interval_s_;
  std::unique_ptr<kube::Informer> gateways_;  // the gateway Pods
  http::ClientPool pool_;                     // connections to them
  LoadAggregator aggregator_;
  std::mutex mu_;                     // guards the two below
  std::optional<LoadRound> pending_;  // rounds since the last take()
  std::function<void()> wake_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace loadstar::controller
