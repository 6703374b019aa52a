// The controller: level-triggered reconcilers that turn declared
// InferenceServices into running replicas and publish the ready ones to the
// gateway. Each pass compares what the store declares with what runs and
// acts on the difference, so a missed event or a restart loses nothing.
//
// Replica lifecycle: Pending (model being prepared) -> Starting (process
// launched, waiting for /health) -> Ready (published) -> Terminating
// (unpublished, draining, then stopped). A replica whose process exits is
// Failed and restarted with exponential backoff.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/resources.h"
#include "common/process.h"
#include "controller/store.h"
#include "gateway/routing_table.h"

namespace loadstar::controller {

using Clock = std::chrono::steady_clock;

enum class ReplicaState { kPending, kStarting, kReady, kFailed, kTerminating };
const char* replica_state_name(ReplicaState state);

// What `loadstar get replicas` shows.
struct ReplicaStatus {
  std::string name;
  std::string service;
  std::string model;
  ReplicaState state = ReplicaState::kPending;
  int pid = 0;
  uint16_t port = 0;
  uint32_t restarts = 0;
  double age_s = 0;
  std::optional<double> start_s;  // launch to ready, for the current process
  int64_t in_flight = 0;
  std::string message;  // why it is not ready, or its last failure
};

struct ServiceStatus {
  std::string name;
  std::string model;
  uint32_t desired = 0;
  uint32_t ready = 0;
  uint32_t total = 0;
};

struct ControllerOptions {
  std::filesystem::path data_dir = "var";
  std::string loadstar_bin;  // the binary that runs `engine-sim`
  double resync_s = 0.1;     // reconcile at least this often
  double restart_backoff_s = 1;
  double restart_backoff_max_s = 30;
  double drain_timeout_s = 30;
  double start_timeout_s = 300;
};

class Controller {
 public:
  // `publish` receives every new routing table.
  Controller(ResourceStore& store, ControllerOptions options,
             std::function<void(std::shared_ptr<const gateway::RoutingTable>)> publish);
  ~Controller();

  void start();
  // Unpublishes and drains every replica, then stops their processes.
  void stop();

  std::vector<ReplicaStatus> replicas() const;
  std::vector<ServiceStatus> services() const;

  // The gateway holds a request for `service`, which has no ready replica:
  // a service scaled to zero starts again. Never blocks (gateway threads
  // call it).
  void note_demand(const std::string& service);

 private:
  struct Replica;
  void run();
  void reconcile();
  void observe(Replica& r);
  void launch(Replica& r);
  std::optional<std::filesystem::path> prepare_model(const api::Model& model, std::string& message);
  void begin_termination(Replica& r);
  uint32_t desired_replicas(const api::InferenceService& svc, Clock::time_point now);
  void publish_if_changed();
  std::shared_ptr<const gateway::TenantDirectory> build_tenants();
  gateway::RoutingTable::Route build_route(const api::Route& route);

  ResourceStore& store_;
  ControllerOptions options_;
  std::function<void(std::shared_ptr<const gateway::RoutingTable>)> publish_;
  std::shared_ptr<void> watch_;

  mutable std::mutex mu_;  // guards everything below (the admin API reads it)
  std::condition_variable wake_;
  bool stopping_ = false;
  bool dirty_ = true;
  std::map<std::string, std::unique_ptr<Replica>> replicas_;  // by replica name
  std::map<std::string, api::InferenceService> services_;     // as of the last pass
  std::map<std::string, std::string> service_models_;
  std::vector<api::Tenant> tenant_specs_;  // as of the last pass
  std::vector<api::Route> route_specs_;
  // Limiter state survives table changes and spec edits.
  std::map<std::string, std::shared_ptr<gateway::TenantLimiter>> tenants_;
  std::map<std::string, std::shared_ptr<gateway::Endpoint>> externals_;  // by URL
  // Activity per service, for scale to zero: requests seen on its endpoints
  // and when that count last moved.
  struct Activity {
    uint64_t requests = 0;
    std::optional<Clock::time_point> last;
  };
  std::map<std::string, Activity> activity_;
  std::mutex demand_mu_;  // guards demand_ only; note_demand must not wait on mu_
  std::set<std::string> demand_;
  std::atomic<bool> demand_pending_{false};
  std::vector<std::string> published_key_;
  uint64_t table_version_ = 0;
  std::thread thread_;
};

}  // namespace loadstar::controller
