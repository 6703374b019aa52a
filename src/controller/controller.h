// The controller: level-triggered reconcilers that turn declared
// InferenceServices into running replicas and publish the ready ones to the
// gateway. Each pass compares what the store declares with what runs and
// acts on the difference, so a missed event or a restart loses nothing.
//
// Every replica is placed by the scheduler (src/scheduler) on a node and its
// devices before it starts; one that cannot be placed stays Pending with the
// scheduler's reason. Nodes are the declared `Node` resources (or one
// implicit GPU-less node "local"); queues the declared `Queue`s plus
// "default".
//
// Replica lifecycle: Pending (placing, model being prepared) -> Starting (process
// launched, waiting for /health) -> Ready (published) -> Terminating
// (unpublished, draining, then stopped). A replica whose process exits is
// Failed and restarted with exponential backoff.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
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
#include "autoscaler/autoscaler.h"
#include "controller/routing_builder.h"
#include "controller/runtime.h"
#include "controller/store.h"
#include "gateway/routing_table.h"
#include "scheduler/scheduler.h"

namespace loadstar::controller {

using Clock = std::chrono::steady_clock;

// The autoscaler's spec for a service (its spec.autoscaling, min replicas
// and idle timeout; TTFT counted in the gateway's buckets), as the
// controller and `loadstar sim autoscale` build it.
autoscaler::Spec autoscaler_spec(const api::InferenceService& svc);

enum class ReplicaState { kPending, kStarting, kReady, kFailed, kTerminating };
const char* replica_state_name(ReplicaState state);

// A cold start, phase by phase: queued (the replica exists) -> placed (the
// scheduler gave it a node and devices) -> staged (its model directory is
// ready) -> started (engine process launched) -> ready (/health answers) ->
// routed (in the gateway's table). Times in seconds since queued; a restart
// begins a new timeline.
inline constexpr const char* kColdStartEvents[] = {"queued",  "placed", "staged",
                                                   "started", "ready",  "routed"};
// The phase that ends at each event after the first.
inline constexpr const char* kColdStartPhases[] = {"scheduling", "staging", "launching", "loading",
                                                   "routing"};
inline constexpr int kColdStartEventCount = 6;

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
  std::string queue;
  std::string node;     // where the scheduler placed it; empty while unplaced
  std::string devices;  // e.g. "gpu0,gpu1" or "gpu0:500m"
  // Seconds from queued to each event of the current start; unset: not yet.
  std::optional<double> timeline[kColdStartEventCount];
  uint32_t starts = 0;  // timelines begun (1 + restarts and re-placements)
};

struct ServiceStatus {
  std::string name;
  std::string model;
  uint32_t desired = 0;
  std::string scale_reason;         // the autoscaler's last decision, with its signal
  std::vector<std::string> events;  // scaling changes, oldest first ("12:00:01Z 1 -> 3: ...")
  uint32_t ready = 0;
  uint32_t total = 0;
};

}  // namespace loadstar::controller

namespace loadstar::agent {
class Agent;
}

namespace loadstar::controller {

struct LoadRound;

struct ControllerOptions {
  std::filesystem::path data_dir = "var";
  std::string loadstar_bin;  // the binary that runs `engine-sim`
  double resync_s = 0.1;     // reconcile at least this often
  double restart_backoff_s = 1;
  double restart_backoff_max_s = 30;
  double drain_timeout_s = 30;
  // A draining replica's engine is stopped no sooner than this after it
  // left the routing table: gateway workers take a new table
  // asynchronously, and a request picked from the old one must still find
  // the engine listening (as a preStop sleep does in Kubernetes).
  double unroute_grace_s = 0.5;
  double start_timeout_s = 300;
  std::string placement_policy = "loadstar";  // scheduler::PlacementPolicy::named
  // The node agent that stages http(s)://, hf:// and s3:// models; none: such
  // models stay Pending with a message saying so.
  agent::Agent* agent = nullptr;
  // Where engines run; none: local child processes (a LocalRuntime over
  // data_dir, loadstar_bin and agent).
  EngineRuntime* runtime = nullptr;
  // Whether the gateways' load reaches this controller: through the
  // endpoints it shares with the gateway of `loadstar up`, or through
  // apply_load (Kubernetes mode). False: services run at spec.replicas,
  // with no autoscaling and no scale to zero.
  bool load_signals = true;
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
  // Load that gateways in other processes saw (Kubernetes mode; see
  // gateway_load.h): added to the replicas' counters as if a gateway in this
  // process had counted it, and held requests noted as demand.
  void apply_load(const LoadRound& round);

  // Queues with usage against quota and fair share, for `loadstar get queues`.
  std::vector<scheduler::QueueStatus> queues() const;
  // The scheduler's metrics (Prometheus text): per-queue allocation, fair
  // share and GPU-seconds, per-tenant GPU-seconds, preemptions. As of the
  // last reconcile pass; never waits for one (gateway threads call it).
  std::string scheduler_metrics() const;

 private:
  struct Replica;
  void run();
  void reconcile();
  void observe(Replica& r);
  void launch(Replica& r);
  void adopt_existing();
  void begin_termination(Replica& r);
  uint32_t desired_replicas(const api::InferenceService& svc, Clock::time_point now);
  uint32_t autoscale(const api::InferenceService& svc, Clock::time_point now);
  void publish_if_changed();
  // Each service's replicas as the store's status of it (Kubernetes mode).
  void publish_statuses();
  void sync_scheduler(const std::vector<api::Node>& nodes, const std::vector<api::Queue>& queues);
  void schedule_replicas(Clock::time_point now);
  scheduler::Workload workload_of(const Replica& r, const api::InferenceService& svc);
  std::string render_scheduler_metrics() const;
  // Marks event `i` of r's cold start (once per start); at "routed" the
  // phases go into the histograms.
  void mark(Replica& r, int event, Clock::time_point at);
  // Stops r's engine without waiting (the runtime forces it after its grace
  // period) and leaves r Pending with `why` (Terminating stays so).
  void stop_engine(Replica& r, std::string why);

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
  std::map<std::string, uint32_t> desired_;  // replicas each service should have, last pass
  std::map<std::string, std::string> service_models_;
  std::vector<api::Tenant> tenant_specs_;  // as of the last pass
  std::vector<api::Route> route_specs_;
  RoutingBuilder routing_;
  // Activity per service, for scale to zero: requests seen on its endpoints
  // and when that count last moved.
  struct Activity {
    uint64_t requests = 0;
    std::optional<Clock::time_point> last;
  };
  std::map<std::string, Activity> activity_;
  // Per autoscaled service: its autoscaler (rebuilt when the spec changes),
  // requests counted per endpoint, and the last decision.
  struct Scaling {
    std::string spec_key;
    std::unique_ptr<autoscaler::Autoscaler> autoscaler;
    std::map<uint64_t, uint64_t> seen_requests;  // endpoint id -> its counter
    // TTFT bucket counts per endpoint as last read (each sample carries the
    // deltas; the autoscaler keeps the window).
    using TtftCounts = std::array<uint64_t, gateway::Endpoint::kTtftBuckets>;
    std::map<uint64_t, TtftCounts> seen_ttft;
    uint64_t requests_total = 0;
    std::optional<autoscaler::Decision> last;
    std::deque<std::string> events;  // the last kMaxEvents changes of the count
  };
  std::map<std::string, Scaling> scaling_;
  std::set<std::string> held_now_;  // services with a held request, this pass
  // Cold-start phase histograms (seconds), for /metrics.
  struct Histogram {
    std::vector<uint64_t> buckets;  // cumulative counts, one per bound
    uint64_t count = 0;
    double sum = 0;
  };
  std::map<std::string, Histogram> cold_start_;  // by phase, and "total"
  std::mutex demand_mu_;  // guards demand_ only; note_demand must not wait on mu_
  std::set<std::string> demand_;
  std::atomic<bool> demand_pending_{false};
  std::vector<std::string> published_key_;
  // Placement. The cluster is rebuilt when the Node resources change.
  scheduler::Cluster cluster_;
  std::unique_ptr<scheduler::Scheduler> scheduler_;
  std::string nodes_key_, queues_key_, target_key_;
  Clock::time_point epoch_ = Clock::now();
  std::unique_ptr<EngineRuntime> own_runtime_;
  EngineRuntime* runtime_ = nullptr;
  mutable std::mutex metrics_mu_;  // guards metrics_text_ only
  std::string metrics_text_;
  std::thread thread_;
};

}  // namespace loadstar::controller
