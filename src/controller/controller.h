// The controller: a level-triggered reconciler that turns declared
// InferenceServices into running replicas and publishes the ready ones for
// routing. Each pass compares what the store declares with what runs and
// acts on the difference, so a missed event or a restart loses nothing.
//
// It is made of parts with their own state: the ServiceScaler says how
// many replicas each service wants (scaler.h), Placement puts them on nodes
// and devices through the GPU scheduler (placement.h), ColdStartMetrics
// times their starts (cold_start.h). The controller itself keeps each
// replica's lifecycle: Pending (placing, model being prepared) -> Starting
// (engine launched, waiting for its health check) -> Ready (published) ->
// Terminating (unpublished, draining, then stopped). A replica whose engine
// exits is Failed and restarted with exponential backoff.
//
// What it works on is passed in: where resources live (ResourceStore),
// where engines run (EngineRuntime), the gateways' load (LoadSource) and the
// time (Clock) — so a test drives it pass by pass with fakes of all four.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
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
#include "controller/admission.h"
#include "controller/clock.h"
#include "controller/cold_start.h"
#include "controller/events.h"
#include "controller/jobs.h"
#include "controller/load.h"
#include "controller/model_versions.h"
#include "controller/placement.h"
#include "controller/revisions.h"
#include "controller/rollout.h"
#include "controller/rollouts.h"
#include "controller/runtime.h"
#include "controller/scaler.h"
#include "controller/traffic.h"
#include "controller/usage_ledger.h"
#include "routing/routing_builder.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

namespace loadstar::controller {

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
  std::string queue;
  std::string node;       // where the scheduler placed it; empty while unplaced
  std::string devices;    // e.g. "gpu0,gpu1" or "gpu0:500m"
  uint32_t revision = 0;  // the revision it runs (0: not recorded)
  // Seconds from queued to each event of the current start; unset: not yet.
  std::optional<double> timeline[kColdStartEventCount];
  uint32_t starts = 0;  // timelines begun (1 + restarts and re-placements)
};

// A revision's replicas now, and what the rollout history kept of it.
struct RevisionStatus {
  uint32_t number = 0;  // 0: a revision the history no longer has
  std::string hash;
  std::string created;
  std::string model, engine;  // what it ran: the model's source, the engine and its args
  uint32_t replicas = 0, ready = 0;
  bool current = false;
  TrafficSummary traffic;  // its replicas' over the last minute (a canary's against the rest)
};

struct RolloutStatus {
  uint32_t revision = 0;                  // the current one
  bool rolling = false;                   // replicas of older revisions remain
  bool aborted = false;                   // the current revision's canary was rolled back
  std::string message;                    // where the rollout stands, or why it waits
  std::vector<RevisionStatus> revisions;  // with replicas, newest first
};

struct ServiceStatus {
  std::string name;
  std::string model;
  uint32_t desired = 0;
  RolloutStatus rollout;
  std::string scale_reason;          // the autoscaler's last decision, with its signal
  std::vector<store::Event> events;  // oldest first: scaling, rollouts, failures
  uint32_t ready = 0;
  uint32_t total = 0;
  TrafficSummary traffic;  // over the last minute
};

struct TenantStatus {
  std::string name;
  bool declared = false;  // a Tenant resource (else only seen in the gateways' usage)
  std::optional<uint32_t> requests_per_minute, tokens_per_minute, max_concurrent_requests;
  int32_t priority = 0;
  Usage usage;
  double gpu_seconds = 0;
};

struct ControllerOptions {
  double resync_s = 0.1;  // reconcile at least this often
  // A pass stops starting engines this much wall time after its first
  // launch (or four times what the rest of the last pass took, if more)
  // and leaves the rest to the next pass, right after: statuses, routing
  // and drains are not held up by thousands of launches (one API write
  // each).
  double launch_budget_s = 1.0;
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
  // How often a Model source that can change under the same spec is
  // resolved again (model_versions.h): new bytes there roll out.
  double model_resolve_interval_s = 300;
};

class Controller {
 public:
  // Receives the routing inputs whenever they change (services, tenants,
  // routes, ready replicas); called on the controller's thread without its
  // lock held, before the next pass.
  using Publish = std::function<void(const routing::RoutingInputs&)>;

  // `load`: where the gateways' load comes from; null: none reaches this
  // controller, so services run at spec.replicas (no autoscaling, no scale
  // to zero). Everything passed in must outlive the controller.
  Controller(store::ResourceStore& store, EngineRuntime& runtime, LoadSource* load,
             const Clock& clock, ControllerOptions options, Publish publish);
  ~Controller();

  // Runs the store's Jobs with `workers` (call before start() or the first
  // pass); without, a declared Job only says that this runtime cannot run it.
  void run_jobs(WorkerRuntime& workers, JobOptions options = {});
  // Admits `admissions`' workloads (batch/v1 Jobs) through the same queues
  // (call before start() or the first pass).
  void admit(Admissions& admissions) { admissions_ = &admissions; }

  // Takes over the engines that run already, then reconciles on a thread
  // of its own until stop().
  void start();
  // Unpublishes and drains every replica, then stops their engines (unless
  // engines outlive the controller, as Pods do).
  void stop();
  // One reconcile pass now, on the caller's thread (tests drive the
  // controller this way instead of start()); the first one takes over the
  // engines that run already.
  void pass();

  std::vector<ReplicaStatus> replicas() const;
  std::vector<JobStatus> jobs() const;
  std::vector<ServiceStatus> services() const;
  // Queues with usage against quota and fair share, for `loadstar get queues`.
  std::vector<scheduler::QueueStatus> queues() const;
  // Every node with its cards' bookings (the dashboard's GPU map).
  std::vector<NodeStatus> nodes() const;
  // The usage ledger's hours in [from_s, to_s) (Unix seconds).
  std::vector<UsageRow> usage(int64_t from_s, int64_t to_s) const;
  // Each declared tenant (and any other that used something): its limits,
  // usage since `from_s` and GPU-seconds.
  std::vector<TenantStatus> tenants(int64_t from_s) const;
  // The scheduler's and the cold starts' metrics (Prometheus text), as of
  // the last pass; never waits for one (gateway threads call it).
  std::string scheduler_metrics() const;
  // Every revision the history keeps, oldest first, with its replicas now.
  Result<std::vector<RevisionStatus>> history(const std::string& service) const;
  // Writes revision `to` (0: the one before the current) back into the
  // service's spec, and its model's spec when that changed since, as
  // `kubectl rollout undo` does; the rollout follows. Says what it did.
  Result<std::string> undo(const std::string& service, uint32_t to);
  // The events of `service` (every service's: empty), oldest first.
  std::vector<store::Event> events(const std::string& service) const;
  // pause, resume, promote or abort the service's canary.
  Result<std::string> control_canary(const std::string& service, const std::string& action);

 private:
  struct Replica;
  void run();
  // One pass under mu_; the routing inputs when they changed.
  std::optional<routing::RoutingInputs> reconcile();
  void publish(std::optional<routing::RoutingInputs> inputs);
  void adopt_existing();
  // Reads the load source: replicas' current load, services' increments, demand.
  void apply_load();
  ServiceLoad service_load(const std::string& service) const;
  void scale(const api::InferenceService& svc, Clock::time_point now);
  void place(const std::vector<api::Node>& nodes, const std::vector<api::Queue>& queues,
             Clock::time_point now);
  // Jobs this pass: their workers observed, before placement.
  void observe_jobs(std::vector<api::Job> declared, Clock::time_point now);
  void observe(Replica& r);
  void launch(Replica& r);
  // Whether a Terminating replica is gone (its engine stopped and ended).
  bool drain(Replica& r, Clock::time_point now);
  void begin_termination(Replica& r);
  // Stops r's engine without waiting (the runtime forces it after its grace
  // period) and leaves r Pending with `why` (Terminating stays so).
  void stop_engine(Replica& r, std::string why);
  void mark(Replica& r, ColdStartEvent event, Clock::time_point at);
  std::optional<routing::RoutingInputs> routing_if_changed(Clock::time_point now);
  // Each service's current revision, recorded when new (when the store changed).
  void find_revisions();
  // Where the service's rollout stands, with its revisions' replicas.
  RolloutStatus rollout_status(const std::string& service) const;
  // Whether the weights of `to` are staged on old replica r's node already.
  bool weights_here(const Replica& r, const Revision& to);
  void new_replica(const std::string& service, std::set<uint32_t>& used,
                   std::shared_ptr<const Revision> revision, Clock::time_point now);
  // Each service's replicas as the store's status of it (Kubernetes mode).
  void publish_statuses();
  double seconds(Clock::time_point t) const { return seconds_between(epoch_, t); }

  store::ResourceStore& store_;
  EngineRuntime& runtime_;
  LoadSource* load_;
  const Clock& clock_;
  ControllerOptions options_;
  Publish publish_;
  std::shared_ptr<void> watch_;
  const Clock::time_point epoch_;

  mutable std::mutex mu_;  // guards everything below (the admin API reads it)
  std::condition_variable wake_;
  // Set without mu_ (a gateway thread must not wait for a pass): a request
  // is held somewhere, reconcile now.
  std::atomic<bool> woken_{false};
  // Set without mu_, so that a pass launching thousands of replicas sees it
  // and ends early instead of holding stop() until it is done.
  std::atomic<bool> stopping_{false};
  bool dirty_ = true;
  bool adopted_ = false;
  std::map<std::string, std::unique_ptr<Replica>> replicas_;  // by replica name
  // Desired state as of the last pass.
  std::map<std::string, api::InferenceService> services_;
  std::vector<api::Tenant> tenant_specs_;
  std::vector<api::Route> route_specs_;
  std::set<std::string> demand_;  // services a request was held for, this pass
  // Service -> requests held now, and in the gateways' queues now, as last
  // reported.
  std::map<std::string, uint64_t> held_;
  std::map<std::string, uint64_t> queued_;
  std::map<std::string, uint64_t> queued_overdue_;  // of queued_, past the TTFT SLO
  std::map<std::string, ServiceLoad> increments_;   // requests and first tokens, this pass
  ServiceScaler scaler_;
  Traffic traffic_;  // what each service served over the last minute
  // Tenants' usage per hour, saved through the store at most every
  // kUsageSaveS (and at stop) when it changed.
  UsageLedger usage_;
  bool usage_dirty_ = false;
  std::optional<Clock::time_point> usage_saved_at_;
  void save_usage(bool now);
  // Rollout history; `mu_` also guards it (its reads load from the store).
  mutable RevisionHistory history_;
  EventLog events_;
  std::map<std::string, std::shared_ptr<const Revision>> current_;  // by service
  // Services with no current revision yet, and why: their model's source
  // has not been resolved (it is resolving, or failing to).
  std::map<std::string, std::string> unresolved_;
  uint64_t revisions_found_at_ = ~0ull;  // the store's revision when current_ was found
  uint64_t versions_found_at_ = ~0ull;   // versions_.generation() then
  // The version each source first resolved to in this process: a revision
  // recorded before model versions existed is taken to run it (no rollout
  // on upgrade); a later change rolls out.
  std::map<std::string, std::string> legacy_versions_;
  Rollouts rollouts_;
  ModelVersions versions_;
  // Each replica's share of its service's traffic while a canary runs
  // (its group's; 0 or absent: none).
  std::map<std::string, uint32_t> canary_weights_;
  Placement placement_;
  std::unique_ptr<Jobs> jobs_;          // null: this runtime runs no jobs
  Admissions* admissions_ = nullptr;    // workloads others run, admitted here
  std::set<std::string> jobs_refused_;  // declared jobs told so, without jobs_
  ColdStartMetrics cold_starts_;
  std::vector<std::string> published_key_;
  std::map<std::string, api::InferenceService> published_services_;
  std::vector<api::Tenant> published_tenants_;
  std::vector<api::Route> published_routes_;
  // Why an adapter loaded on demand is not staged, by "service/adapter", as
  // last logged (empty: it is).
  std::map<std::string, std::string> adapter_errors_;
  mutable std::mutex metrics_mu_;  // guards metrics_text_ only
  std::string metrics_text_;
  // How long reconcile passes take (wall time, whatever the injected clock).
  // The cards each replica's node reported this pass (EngineStatus::cards).
  std::map<std::string, std::vector<int>> cards_;
  uint64_t passes_ = 0;
  // The last pass whose routing inputs were published (after the pass,
  // without mu_): a replica is Ready to readers from then on, so a client
  // told "Ready" finds it in the gateways' table.
  uint64_t published_pass_ = 0;
  double pass_seconds_sum_ = 0, pass_seconds_max_ = 0;
  // Engines that ended on their own, by service and why (StartFailed before
  // Ready, EngineExited after): loadstar_replica_failures_total.
  std::map<std::pair<std::string, std::string>, uint64_t> replica_failures_;
  double last_pass_overhead_s_ = 0;  // the last pass's wall time outside launches
  std::thread thread_;
};

}  // namespace loadstar::controller
