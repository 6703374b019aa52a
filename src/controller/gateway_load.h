// The gateways' view of the load, for a controller in another process
// (Kubernetes mode). In `loadstar up` the controller reads the gateway's
// per-replica counters directly; here every gateway replica serves them at
// GET /loadstar/v1/load, and the controller polls each Ready gateway Pod
// (found by label, like the gateway Service finds them) and folds the
// answers into its own
// per-replica Endpoint counters, so the autoscaler, scale to zero and
// draining work the same in both modes.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gateway/routing_table.h"
#include "kube/client.h"

namespace loadstar::controller {

class Controller;

struct ReplicaLoad {
  uint64_t requests = 0;  // sent since the last round, all gateways
  std::array<uint64_t, gateway::Endpoint::kTtftBuckets> ttft{};  // since the last round
  int64_t in_flight = 0;                                         // now, all gateways
  std::optional<double> waiting;   // the engine's queue, as the freshest scrape saw it
  std::optional<double> kv_usage;  // the engine's KV-cache use (0..1)
};

struct LoadRound {
  std::map<std::string, ReplicaLoad> replicas;  // by replica name
  std::set<std::string> demand;                 // services held requests wait for
};

// The pure part: turns one round of reports (gateway address -> JSON) into
// per-replica increments. Counters are per gateway and only grow; a smaller
// value than last time means that gateway restarted (the new value is the
// increment, as Prometheus treats a counter reset). A gateway that did not
// answer this round adds nothing, and its in-flight requests stop counting.
// Malformed reports are skipped, with the reason in `errors`.
class LoadAggregator {
 public:
  LoadRound round(const std::vector<std::pair<std::string, std::string>>& reports,
                  std::vector<std::string>* errors = nullptr);

 private:
  struct Seen {
    uint64_t requests = 0;
    std::array<uint64_t, gateway::Endpoint::kTtftBuckets> ttft{};
  };
  std::map<std::pair<std::string, std::string>, Seen> seen_;  // (gateway, replica)
};

// Addresses ("podIP:port") of the Ready Pods in a v1 PodList: the container
// port named `port_name`, else `default_port`.
std::vector<std::string> ready_pod_addresses(const kube::json& pods,
                                             const std::string& port_name = "http",
                                             int default_port = 8080);

// Polls the gateways every `interval_s` and hands each round to the
// controller (Controller::apply_load); the Pods matching `selector` are
// listed again every two seconds.
class GatewayLoadCollector {
 public:
  GatewayLoadCollector(const kube::Client& client, std::string namespace_name, std::string selector,
                       Controller& controller, double interval_s = 0.5);
  ~GatewayLoadCollector();
  void start();
  void stop();

 private:
  void run();

  const kube::Client& client_;
  std::string namespace_;
  std::string selector_;
  Controller& controller_;
  double interval_s_;
  LoadAggregator aggregator_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace loadstar::controller
