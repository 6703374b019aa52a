#include "controller/controller.h"

#include <signal.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <limits>
#include <set>

#include <fmt/chrono.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "agent/agent.h"
#include "api/cost_expression.h"
#include "common/units.h"
#include "controller/gateway_load.h"
#include "controller/local_runtime.h"
#include "http/client.h"
#include "model/model_dir.h"

#include <unistd.h>

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

namespace loadstar::controller {

namespace fs = std::filesystem;

const char* replica_state_name(ReplicaState state) {
  switch (state) {
    case ReplicaState::kPending:
      return "Pending";
    case ReplicaState::kStarting:
      return "Starting";
    case ReplicaState::kReady:
      return "Ready";
    case ReplicaState::kFailed:
      return "Failed";
    case ReplicaState::kTerminating:
      return "Terminating";
  }
  return "Unknown";
}

struct Controller::Replica {
  std::string name;
  std::string service;
  uint32_t index = 0;
  ReplicaState state = ReplicaState::kPending;
  bool launched = false;   // the runtime has its engine
  bool stop_sent = false;  // told to stop (Terminating)
  int pid = 0;
  uint16_t port = 0;
  uint32_t restarts = 0;
  Clock::time_point created = Clock::now();
  Clock::time_point launched_at;
  Clock::time_point next_restart;
  Clock::time_point drain_started;
  std::optional<double> start_s;
  std::string message;
  std::shared_ptr<gateway::Endpoint> endpoint;  // set while Ready (and while draining)
  // An engine taken over at start: its devices, until the scheduler has them.
  std::optional<std::vector<DeviceShare>> adopted;
  // Placement: submitted to the scheduler, and where it was put.
  bool submitted = false;
  bool placed = false;
  std::string node, devices;
  // The current cold start's events (kColdStartEvents), and how many began.
  std::optional<Clock::time_point> timeline[kColdStartEventCount];
  uint32_t starts = 1;

  // A new start (after a crash or a re-placement) is queued now.
  void restart_timeline(Clock::time_point now) {
    for (auto& t : timeline) t.reset();
    timeline[0] = now;
    ++starts;
  }
};

namespace {
// "gpu0,gpu1", "gpu0:500m", "gpu2:3g".
std::string devices_string(const scheduler::Allocation& a) {
  std::string out;
  for (const auto& share : a.shares) {
    out += fmt::format("{}gpu{}", out.empty() ? "" : ",", share.device);
    if (share.mig_slices) {
      out += fmt::format(":{}g", share.mig_slices);
    } else if (share.milli < scheduler::kMilliPerGpu) {
      out += fmt::format(":{}m", share.milli);
    }
  }
  return out;
}

// Bucket bounds of the cold-start histograms, seconds: from a warm start on
// local disk to a download of a large model.
constexpr double kColdStartBounds[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}  // namespace

void Controller::mark(Replica& r, int event, Clock::time_point at) {
  if (r.timeline[event] || !r.timeline[0]) return;
  r.timeline[event] = at;
  if (event != kColdStartEventCount - 1) return;
  // Routed: the start is complete; record each phase (a phase whose start
  // was not marked counts from the last marked event).
  auto record = [this](const std::string& name, double seconds) {
    Histogram& h = cold_start_[name];
    h.buckets.resize(std::size(kColdStartBounds));
    for (size_t i = 0; i < std::size(kColdStartBounds); ++i)
      h.buckets[i] += seconds <= kColdStartBounds[i];
    ++h.count;
    h.sum += seconds;
  };
  Clock::time_point previous = *r.timeline[0];
  for (int i = 1; i < kColdStartEventCount; ++i) {
    if (!r.timeline[i]) continue;
    record(kColdStartPhases[i - 1],
           std::chrono::duration<double>(*r.timeline[i] - previous).count());
    previous = *r.timeline[i];
  }
  record("total", std::chrono::duration<double>(at - *r.timeline[0]).count());
}

Controller::Controller(ResourceStore& store, ControllerOptions options,
                       std::function<void(std::shared_ptr<const gateway::RoutingTable>)> publish)
    : store_(store), options_(std::move(options)), publish_(std::move(publish)) {
  runtime_ = options_.runtime;
  if (!runtime_) {
    own_runtime_ =
        std::make_unique<LocalRuntime>(LocalRuntimeOptions{.data_dir = options_.data_dir,
                                                           .loadstar_bin = options_.loadstar_bin,
                                                           .agent = options_.agent});
    runtime_ = own_runtime_.get();
  }
}

Controller::~Controller() {
  stop();
}

void Controller::start() {
  watch_ = store_.watch([this](const WatchEvent&) {
    std::lock_guard lock(mu_);
    dirty_ = true;
    wake_.notify_all();
  });
  {
    std::lock_guard lock(mu_);
    adopt_existing();
  }
  thread_ = std::thread([this] { run(); });
}

void Controller::adopt_existing() {
  for (const ExistingEngine& e : runtime_->existing()) {
    if (replicas_.count(e.replica)) continue;
    auto r = std::make_unique<Replica>();
    r->name = e.replica;
    r->service = e.service;
    r->index = e.index;
    r->state = ReplicaState::kStarting;
    r->launched = true;
    r->launched_at = Clock::now();  // its start was a previous controller's: no timeline
    r->node = e.node;
    r->adopted = e.shares;
    r->submitted = false;
    r->placed = true;  // where it runs; the scheduler is told in schedule_replicas
    r->message = "taken over from a previous controller";
    spdlog::info("replica {}: running on {}; taken over", e.replica, e.node);
    if (e.draining) {
      // Its drain goes on. What runs there is unknown until the gateways'
      // next load round says (apply_load); until then it is not drained.
      r->endpoint = std::make_shared<gateway::Endpoint>(e.service, e.replica, "", 0);
      r->endpoint->in_flight.store(1);
      begin_termination(*r);
    }
    replicas_.emplace(e.replica, std::move(r));
  }
}

void Controller::run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    dirty_ = false;
    reconcile();
    wake_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(options_.resync_s * 1000)),
                   [this] { return dirty_ || stopping_ || demand_pending_.load(); });
  }
  // Pods outlive their controller: the next one takes them over.
  if (runtime_->engines_outlive_controller()) return;
  // Shutdown: every replica drains and stops, as on scale-down.
  for (auto& [name, r] : replicas_) begin_termination(*r);
  publish_if_changed();
  const auto deadline = Clock::now() + std::chrono::milliseconds(
                                           static_cast<int64_t>(options_.drain_timeout_s * 1000));
  while (!replicas_.empty()) {
    for (auto it = replicas_.begin(); it != replicas_.end();) {
      Replica& r = *it->second;
      const bool drained =
          !r.endpoint || r.endpoint->in_flight.load() == 0 || Clock::now() > deadline;
      if (drained && r.launched && !r.stop_sent) {
        runtime_->stop(r.name);
        r.stop_sent = true;
      }
      if (!r.launched || (r.stop_sent && !runtime_->status(r.name).exists)) {
        it = replicas_.erase(it);
      } else if (Clock::now() > deadline + std::chrono::seconds(5)) {
        runtime_->kill(r.name);
        it = replicas_.erase(it);
      } else {
        ++it;
      }
    }
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    lock.lock();
  }
}

void Controller::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  watch_.reset();
}

void Controller::launch(Replica& r) {
  const auto svc_it = services_.find(r.service);
  if (svc_it == services_.end()) return;
  const api::InferenceService& svc = svc_it->second;
  auto model = store_.get("Model", svc.spec.model);
  if (!model) {
    r.state = ReplicaState::kPending;
    r.message = fmt::format("Model '{}' does not exist", svc.spec.model);
    return;
  }
  EngineLaunch launch;
  launch.replica = r.name;
  launch.index = r.index;
  launch.service = &svc;
  launch.model = &std::get<api::Model>(*model);
  launch.node = r.node;
  launch.devices = r.devices;
  if (const scheduler::WorkloadStatus* st = scheduler_ ? scheduler_->status(r.name) : nullptr;
      st && !st->allocations.empty())
    for (const auto& share : st->allocations.front().shares)
      launch.shares.push_back({share.device, share.milli, share.mig_slices});
  Status started = runtime_->launch(launch);
  if (!started.ok() && started.error().code == ErrorCode::kUnavailable) {
    r.state = ReplicaState::kPending;
    r.message = started.error().message;
    return;
  }
  if (!started.ok()) {
    r.state = ReplicaState::kFailed;
    r.message = started.error().message;
    r.next_restart = Clock::now() + std::chrono::seconds(1);
    return;
  }
  r.launched = true;
  r.stop_sent = false;
  r.state = ReplicaState::kStarting;
  r.port = 0;
  r.launched_at = Clock::now();
  r.start_s.reset();
  r.message = "starting";
  observe(r);  // a local engine is staged and started by now
}

void Controller::observe(Replica& r) {
  if (!r.launched) return;
  const EngineStatus st = runtime_->status(r.name);
  r.pid = st.pid;
  if (!st.exists) {
    r.launched = false;
    r.pid = 0;
    if (r.state == ReplicaState::kTerminating) return;
    const double backoff =
        std::min(options_.restart_backoff_max_s,
                 options_.restart_backoff_s * static_cast<double>(1u << std::min(r.restarts, 10u)));
    r.message = fmt::format("{}; restarting in {:.0f}s", st.message, backoff);
    spdlog::warn("replica {}: {}", r.name, r.message);
    r.endpoint.reset();
    r.port = 0;
    r.state = ReplicaState::kFailed;
    r.next_restart = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(backoff * 1000));
    ++r.restarts;
    r.restart_timeline(Clock::now());
    mark(r, 1, Clock::now());  // it keeps its place
    return;
  }
  if (r.state != ReplicaState::kStarting && r.state != ReplicaState::kReady) return;
  const auto now = Clock::now();
  if (st.staged) mark(r, 2, now);
  if (st.started) mark(r, 3, now);
  if (r.state == ReplicaState::kStarting) {
    if (st.ready) {
      r.state = ReplicaState::kReady;
      r.port = st.port;
      r.start_s = std::chrono::duration<double>(now - r.launched_at).count();
      mark(r, 4, now);  // ready
      r.message.clear();
      r.endpoint = std::make_shared<gateway::Endpoint>(r.service, r.name, st.host, st.port);
      spdlog::info("replica {}: ready at {}:{} after {:.2f}s", r.name, st.host, st.port,
                   *r.start_s);
      return;
    }
    r.message = st.message;
    if (std::chrono::duration<double>(now - r.launched_at).count() > options_.start_timeout_s) {
      r.message = "did not become healthy in time";
      runtime_->stop(r.name);
    }
  } else if (!st.ready) {
    // A ready engine that stopped answering leaves the routing table.
    r.state = ReplicaState::kStarting;
    r.endpoint.reset();
    r.message = st.message.empty() ? "not ready" : st.message;
  }
}

void Controller::begin_termination(Replica& r) {
  if (r.state == ReplicaState::kTerminating) return;
  r.state = ReplicaState::kTerminating;
  r.drain_started = Clock::now();
  r.message = "draining";
  spdlog::info("replica {}: draining", r.name);
  if (r.launched) runtime_->unroute(r.name);
}

void Controller::apply_load(const LoadRound& round) {
  {
    std::lock_guard lock(mu_);
    for (auto& [name, r] : replicas_) {
      if (!r->endpoint) continue;
      gateway::Endpoint& e = *r->endpoint;
      auto it = round.replicas.find(name);
      if (it == round.replicas.end()) {
        e.in_flight.store(0);  // no gateway routes to it (any more)
        continue;
      }
      const ReplicaLoad& load = it->second;
      e.requests.fetch_add(load.requests);
      for (size_t b = 0; b < load.ttft.size(); ++b) e.ttft_counts[b].fetch_add(load.ttft[b]);
      e.in_flight.store(load.in_flight);
      if (load.waiting) e.waiting.store(*load.waiting);
      if (load.kv_usage) e.kv_usage.store(*load.kv_usage);
    }
  }
  for (const auto& service : round.demand) note_demand(service);
}

void Controller::note_demand(const std::string& service) {
  {
    std::lock_guard lock(demand_mu_);
    demand_.insert(service);
  }
  demand_pending_ = true;
  wake_.notify_all();
}

autoscaler::Spec autoscaler_spec(const api::InferenceService& svc) {
  autoscaler::Spec spec;
  spec.min_replicas = svc.spec.min_replicas.value_or(1);
  spec.idle_window_s = svc.spec.idle_timeout_s;
  spec.ttft_bounds.assign(std::begin(gateway::Endpoint::kTtftBounds),
                          std::end(gateway::Endpoint::kTtftBounds));
  if (!svc.spec.autoscaling) return spec;
  const api::AutoscalingSpec& as = *svc.spec.autoscaling;
  spec.max_replicas = as.max_replicas;
  spec.waiting_per_replica = as.waiting_per_replica;
  spec.in_flight_per_replica = as.in_flight_per_replica;
  spec.kv_cache_usage = as.kv_cache_usage;
  spec.ttft_p90_slo_s = as.ttft_p90_s;
  spec.stable_window_s = as.stable_window_s;
  spec.panic_window_s = as.panic_window_s;
  spec.panic_threshold = as.panic_threshold;
  spec.max_scale_up_rate = as.max_scale_up_rate;
  spec.scale_down_stabilization_s = as.scale_down_stabilization_s;
  spec.tolerance = as.tolerance;
  return spec;
}

uint32_t Controller::autoscale(const api::InferenceService& svc, Clock::time_point now) {
  const std::string& name = svc.metadata.name;
  Scaling& st = scaling_[name];
  const std::string key = api::encode_resource(svc);
  uint32_t current = 0;
  for (const auto& [rn, r] : replicas_)
    current += r->service == name && r->state != ReplicaState::kTerminating;
  if (!st.autoscaler || st.spec_key != key) {
    autoscaler::Spec spec = autoscaler_spec(svc);
    if (!st.autoscaler) current = svc.spec.replicas;  // a new service starts at spec.replicas
    st.autoscaler = std::make_unique<autoscaler::Autoscaler>(spec);
    st.spec_key = key;
  }
  // One sample: the ready replicas' load as the gateway and the engines'
  // /metrics (scraped by the gateway) see it.
  autoscaler::Sample sample;
  sample.now = std::chrono::duration<double>(now - epoch_).count();
  std::map<uint64_t, uint64_t> seen;
  std::map<uint64_t, Scaling::TtftCounts> seen_ttft;
  sample.ttft_counts.assign(gateway::Endpoint::kTtftBuckets, 0);
  double kv = 0;
  for (const auto& [rn, r] : replicas_) {
    if (r->service != name || !r->endpoint) continue;
    const gateway::Endpoint& e = *r->endpoint;
    const uint64_t requests = e.requests.load();
    auto it = st.seen_requests.find(e.id);
    st.requests_total += requests - (it == st.seen_requests.end() ? 0 : it->second);
    seen[e.id] = requests;
    Scaling::TtftCounts& counts = seen_ttft[e.id];
    auto before = st.seen_ttft.find(e.id);
    for (size_t b = 0; b < counts.size(); ++b) {
      counts[b] = e.ttft_counts[b].load(std::memory_order_relaxed);
      sample.ttft_counts[b] += counts[b] - (before == st.seen_ttft.end() ? 0 : before->second[b]);
    }
    sample.in_flight += static_cast<double>(e.in_flight.load());
    if (r->state != ReplicaState::kReady) continue;
    ++sample.ready;
    sample.waiting += e.waiting.load();
    kv += e.kv_usage.load();
  }
  st.seen_requests.swap(seen);
  st.seen_ttft.swap(seen_ttft);
  sample.kv_cache_usage = sample.ready ? kv / sample.ready : 0;
  sample.requests_total = st.requests_total;
  sample.held = held_now_.count(name) ? 1 : 0;
  st.autoscaler->observe(sample);
  autoscaler::Decision d = st.autoscaler->decide(sample.now, current);
  if (d.desired != current) {
    spdlog::info("service {}: scale {} -> {}: {}", name, current, d.desired, d.reason);
    constexpr size_t kMaxEvents = 20;
    st.events.push_back(fmt::format("{:%H:%M:%S}Z scale {} -> {}: {}",
                                    fmt::gmtime(std::time(nullptr)), current, d.desired, d.reason));
    if (st.events.size() > kMaxEvents) st.events.pop_front();
  }
  st.last = d;
  return d.desired;
}

uint32_t Controller::desired_replicas(const api::InferenceService& svc, Clock::time_point now) {
  const std::string& name = svc.metadata.name;
  if (!options_.load_signals) return svc.spec.replicas;
  if (svc.spec.autoscaling) return autoscale(svc, now);
  Activity& a = activity_[name];
  // Requests sent to any of its endpoints since the last pass count as activity.
  uint64_t requests = 0;
  bool busy = false;
  for (const auto& [rn, r] : replicas_) {
    if (r->service != name || !r->endpoint) continue;
    requests += r->endpoint->requests.load();
    busy |= r->endpoint->in_flight.load() > 0;
  }
  if (requests != a.requests || busy) a.last = now;
  a.requests = requests;
  const uint32_t min = svc.spec.min_replicas.value_or(svc.spec.replicas);
  if (min >= svc.spec.replicas) return svc.spec.replicas;  // a fixed size
  if (!a.last) return min;                                 // never asked for yet
  const double idle = std::chrono::duration<double>(now - *a.last).count();
  return idle > svc.spec.idle_timeout_s ? min : svc.spec.replicas;
}

void Controller::reconcile() {
  // Desired state.
  services_.clear();
  desired_.clear();
  tenant_specs_.clear();
  route_specs_.clear();
  std::vector<api::Node> nodes;
  std::vector<api::Queue> queues;
  for (auto& resource : store_.list()) {
    if (auto* node = std::get_if<api::Node>(&resource)) nodes.push_back(std::move(*node));
    if (auto* queue = std::get_if<api::Queue>(&resource)) queues.push_back(std::move(*queue));
    if (auto* svc = std::get_if<api::InferenceService>(&resource))
      services_.emplace(svc->metadata.name, *svc);
    else if (auto* tenant = std::get_if<api::Tenant>(&resource))
      tenant_specs_.push_back(std::move(*tenant));
    else if (auto* route = std::get_if<api::Route>(&resource))
      route_specs_.push_back(std::move(*route));
  }
  const auto now = Clock::now();
  held_now_.clear();
  if (demand_pending_.exchange(false)) {
    std::set<std::string> demand;
    {
      std::lock_guard lock(demand_mu_);
      demand.swap(demand_);
    }
    held_now_ = demand;
    for (const auto& name : demand) {
      if (!services_.count(name)) continue;
      Activity& a = activity_[name];
      if (!a.last) spdlog::info("service {}: a request is waiting; scaling up from zero", name);
      a.last = now;
    }
  }

  for (auto& [name, r] : replicas_) observe(*r);

  for (const auto& [svc_name, svc] : services_) {
    const uint32_t desired = desired_replicas(svc, now);
    desired_[svc_name] = desired;
    std::vector<Replica*> active;
    std::set<uint32_t> used;
    for (auto& [name, r] : replicas_) {
      if (r->service != svc_name) continue;
      used.insert(r->index);
      if (r->state != ReplicaState::kTerminating) active.push_back(r.get());
    }
    // Scale up: new replicas take the lowest free index.
    for (uint32_t n = static_cast<uint32_t>(active.size()); n < desired; ++n) {
      uint32_t index = 0;
      while (used.count(index)) ++index;
      used.insert(index);
      auto r = std::make_unique<Replica>();
      r->name = fmt::format("{}-{}", svc_name, index);
      r->timeline[0] = now;
      r->service = svc_name;
      r->index = index;
      active.push_back(r.get());
      replicas_.emplace(r->name, std::move(r));
    }
    // Scale down: the highest indexes go first, not-yet-ready ones before ready ones.
    if (active.size() > desired) {
      if (desired == 0)
        spdlog::info("service {}: idle for {}s; scaling to zero", svc_name,
                     svc.spec.idle_timeout_s);
      std::sort(active.begin(), active.end(), [](const Replica* a, const Replica* b) {
        const bool a_ready = a->state == ReplicaState::kReady,
                   b_ready = b->state == ReplicaState::kReady;
        if (a_ready != b_ready) return a_ready;
        return a->index < b->index;
      });
      for (size_t i = desired; i < active.size(); ++i) begin_termination(*active[i]);
    }
  }
  for (auto& [name, r] : replicas_)
    if (!services_.count(r->service)) begin_termination(*r);
  std::erase_if(scaling_, [this](const auto& kv) { return !services_.count(kv.first); });

  sync_scheduler(nodes, queues);
  schedule_replicas(now);

  // Act per replica.
  for (auto it = replicas_.begin(); it != replicas_.end();) {
    Replica& r = *it->second;
    if (r.placed && (r.state == ReplicaState::kPending ||
                     (r.state == ReplicaState::kFailed && now >= r.next_restart))) {
      launch(r);
    } else if (r.state == ReplicaState::kTerminating) {
      // Unpublished at the end of the pass that began the drain; stopped
      // once the grace has passed and its requests are done.
      const double draining_s = std::chrono::duration<double>(now - r.drain_started).count();
      const bool drained = draining_s >= options_.unroute_grace_s &&
                           (!r.endpoint || r.endpoint->in_flight.load() == 0 ||
                            draining_s > options_.drain_timeout_s);
      if (drained && r.launched && !r.stop_sent) {
        runtime_->stop(r.name);
        r.stop_sent = true;
      }
      if (r.launched && r.stop_sent && !runtime_->status(r.name).exists) r.launched = false;
      if (!r.launched) {
        spdlog::info("replica {}: stopped", r.name);
        if (scheduler_)
          scheduler_->remove(r.name, std::chrono::duration<double>(now - epoch_).count());
        it = replicas_.erase(it);
        continue;
      }
    }
    ++it;
  }
  // Warm weights: a service's model stays staged even with no replica, so
  // that scale-from-zero pays load time, not download time. Staged-but-idle
  // models are not touched here, so they are the least recently used ones
  // when the cache needs room (evicted first, staged again next pass).
  // On a rising trend the autoscaler asks for the next replica's weights
  // ahead of the replica (Decision::stage_ahead). warmNodes: 0 opts out of
  // all staging ahead of need.
  for (const auto& [name, svc] : services_) {
    if (svc.spec.warm_nodes == 0) continue;
    uint32_t nodes = svc.spec.warm_nodes;
    if (auto it = scaling_.find(name); it != scaling_.end() && it->second.last)
      nodes = std::max(nodes, it->second.last->stage_ahead);
    if (auto model = store_.get("Model", svc.spec.model))
      runtime_->keep_warm(std::get<api::Model>(*model), nodes);
  }
  // The models running engines read (the local agent does not evict them).
  std::vector<std::string> in_use;
  for (const auto& [name, r] : replicas_) {
    auto svc = services_.find(r->service);
    if (r->launched && svc != services_.end()) in_use.push_back(svc->second.spec.model);
  }
  runtime_->end_pass(in_use);
  publish_if_changed();
  publish_statuses();
  std::string text = render_scheduler_metrics();  // after the pass: this pass's starts included
  std::lock_guard lock(metrics_mu_);
  metrics_text_ = std::move(text);
}

scheduler::Workload Controller::workload_of(const Replica& r, const api::InferenceService& svc) {
  scheduler::PodRequest pod;
  pod.cpu_milli = static_cast<uint64_t>(svc.spec.cpu * 1000);
  pod.memory_mib = svc.spec.memory_bytes >> 20;
  const api::GpuRequirements& g = svc.spec.gpu;
  if (!g.mig.empty()) {
    if (auto profile = parse_mig_profile(g.mig); profile.ok())
      std::tie(pod.mig_slices, pod.mig_memory_mib) = *profile;
  } else if (g.fraction) {
    pod.gpu_milli = static_cast<uint32_t>(std::lround(*g.fraction * scheduler::kMilliPerGpu));
  } else if (g.memory_bytes) {
    pod.gpu_memory_mib = *g.memory_bytes >> 20;
  } else {
    pod.gpu_count = g.count;
  }
  if (!g.type.empty()) pod.allowed_models = {cluster_.intern_model(g.type)};
  pod.model = svc.spec.model;
  scheduler::Workload w;
  w.name = r.name;
  w.queue = svc.spec.queue;
  auto tenant = svc.metadata.labels.find("loadstar.dev/tenant");
  w.tenant = tenant != svc.metadata.labels.end() ? tenant->second : svc.spec.queue;
  w.priority = svc.spec.priority;
  w.preemptible = svc.spec.preemptible;
  w.pods = {pod};
  return w;
}

void Controller::sync_scheduler(const std::vector<api::Node>& nodes,
                                const std::vector<api::Queue>& queues) {
  const double t = std::chrono::duration<double>(Clock::now() - epoch_).count();
  std::string key;
  for (const auto& n : nodes) key += api::encode_resource(n);
  const bool rebuild = !scheduler_ || key != nodes_key_;
  // Where each placed replica is, by node name, to keep it there.
  struct Placed {
    std::string node;
    scheduler::Allocation allocation;
  };
  std::map<std::string, Placed> placed;
  scheduler::Scheduler::Accounting accounting;
  if (rebuild) {
    nodes_key_ = key;
    if (scheduler_) {
      accounting = scheduler_->accounting();
      for (auto& [name, r] : replicas_) {
        const scheduler::WorkloadStatus* st = scheduler_->status(name);
        if (st && st->state == scheduler::WorkloadState::kRunning)
          placed[name] = {cluster_.nodes()[st->allocations.front().node].name,
                          st->allocations.front()};
      }
    }
    scheduler_.reset();
    cluster_ = scheduler::Cluster();
    auto add = [this](const std::string& name, double cpu, uint64_t memory,
                      const api::NodeSpec* spec) {
      scheduler::Node node;
      node.name = name;
      node.cpu_milli = static_cast<uint64_t>(cpu * 1000);
      node.memory_mib = memory >> 20;
      if (spec) {
        for (const auto& g : spec->gpus)
          for (uint32_t i = 0; i < g.count; ++i)
            node.devices.push_back(
                {cluster_.intern_model(g.model), g.memory_bytes >> 20, g.mig_slices});
        for (const auto& [level, domain] : spec->topology) node.topology[level] = domain;
        node.schedulable = spec->schedulable;
      }
      cluster_.add_node(std::move(node));
    };
    if (nodes.empty()) {
      // Nothing declared: this machine, without GPUs.
      add("local", std::thread::hardware_concurrency(),
          static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE), nullptr);
    }
    for (const auto& n : nodes) add(n.metadata.name, n.spec.cpu, n.spec.memory_bytes, &n.spec);
    auto policy = scheduler::PlacementPolicy::parse(options_.placement_policy);
    if (!policy.ok()) policy = scheduler::PlacementPolicy::named("loadstar");
    scheduler_ = std::make_unique<scheduler::Scheduler>(cluster_, *policy, nullptr);
    queues_key_ = "\n(none)";
    target_key_.clear();
    spdlog::info("scheduler: {} nodes, {:.0f} GPUs, policy {}", cluster_.nodes().size(),
                 cluster_.gpu_milli_total() / 1000.0, policy->name);
  }
  key.clear();
  for (const auto& q : queues) key += api::encode_resource(q);
  if (key != queues_key_) {
    queues_key_ = key;
    std::vector<scheduler::QueueSpec> specs;
    bool has_default = false;
    for (const auto& q : queues) {
      scheduler::QueueSpec spec;
      spec.name = q.metadata.name;
      spec.parent = q.spec.parent;
      const api::QueueQuota &d = q.spec.deserved, &l = q.spec.limit;
      spec.deserved = {d.gpu.value_or(0), d.cpu.value_or(0),
                       d.memory_bytes ? *d.memory_bytes / double(1ull << 30) : 0};
      if (l.gpu || l.cpu || l.memory_bytes)
        spec.limit =
            scheduler::Resources{l.gpu.value_or(1e18), l.cpu.value_or(1e18),
                                 l.memory_bytes ? *l.memory_bytes / double(1ull << 30) : 1e18};
      spec.over_quota_weight = q.spec.over_quota_weight;
      has_default |= spec.name == "default";
      specs.push_back(std::move(spec));
    }
    // "default" deserves nothing and shares what is left.
    if (!has_default) specs.push_back({"default", "", {}, std::nullopt, 1});
    if (auto s = scheduler_->set_queues(std::move(specs)); !s.ok()) {
      // Validation rejects such trees; keep at least "default" working.
      spdlog::warn("scheduler: queues not applied: {}", s.error().message);
      (void)scheduler_->set_queues({{"default", "", {}, std::nullopt, 1}});
    }
  }
  // What the agents hold, as the runtime knows it: the locality scorer
  // prefers those nodes for replicas of those models.
  for (auto& node : cluster_.nodes()) {
    std::set<std::string, std::less<>> cached = runtime_->models_on(node.name);
    if (node.cached_models == cached) continue;
    node.cached_models = std::move(cached);
    ++node.generation;
  }
  if (!rebuild) return;
  scheduler_->restore_accounting(accounting);
  // Replicas stay where they run when their node and devices still exist;
  // the others are placed again (a running engine is stopped first).
  for (auto& [name, r] : replicas_) {
    r->submitted = false;
    auto it = placed.find(name);
    auto svc = services_.find(r->service);
    const int n = it == placed.end() ? -1 : cluster_.find_node(it->second.node);
    bool kept = false;
    if (n >= 0 && svc != services_.end()) {
      scheduler::Allocation a = it->second.allocation;
      a.node = n;
      bool devices_exist = true;
      for (const auto& share : a.shares)
        devices_exist &= share.device < static_cast<int>(cluster_.nodes()[n].devices.size());
      kept = devices_exist && scheduler_->adopt(workload_of(*r, svc->second), {a}, t).ok();
    }
    r->submitted = kept;
    if (kept || it == placed.end()) continue;
    r->placed = false;
    r->node.clear();
    r->devices.clear();
    if (r->state != ReplicaState::kTerminating &&
        (r->launched || r->state != ReplicaState::kPending)) {
      spdlog::warn("replica {}: its node or devices changed; placing it again", name);
      stop_engine(*r, "its node or devices changed; placing it again");
    }
  }
}

void Controller::stop_engine(Replica& r, std::string why) {
  if (r.launched) runtime_->stop(r.name);  // a new launch waits until it has ended
  r.launched = false;
  r.stop_sent = false;
  r.pid = 0;
  r.endpoint.reset();
  r.port = 0;
  if (r.state != ReplicaState::kTerminating) {
    r.state = ReplicaState::kPending;
    r.restart_timeline(Clock::now());
  }
  r.message = std::move(why);
}

void Controller::schedule_replicas(Clock::time_point now) {
  const double t = std::chrono::duration<double>(now - epoch_).count();
  // FGD's target workload: the declared services' replica shapes, weighted
  // by how many replicas each wants.
  std::string key;
  for (const auto& [name, svc] : services_) key += api::encode_resource(svc);
  if (key != target_key_) {
    target_key_ = key;
    std::vector<scheduler::TaskType> target;
    double total = 0;
    for (const auto& [name, svc] : services_) total += std::max<uint32_t>(svc.spec.replicas, 1);
    for (const auto& [name, svc] : services_) {
      Replica probe;
      auto w = workload_of(probe, svc);
      target.push_back({w.pods[0], std::max<uint32_t>(svc.spec.replicas, 1) / total});
    }
    scheduler_->set_target(std::make_shared<const scheduler::Fragmentation>(std::move(target)));
  }
  for (auto& [name, r] : replicas_) {
    // A replica scaled down before its engine started gives its place back
    // now, so this pass neither places it nor preempts anything for it.
    if (r->state == ReplicaState::kTerminating && !r->launched) {
      scheduler_->remove(name, t);
      r->submitted = r->placed = false;
      continue;
    }
    if (r->adopted && r->state != ReplicaState::kTerminating) {
      // An engine that runs already keeps its node and devices if they exist.
      auto svc = services_.find(r->service);
      if (svc == services_.end()) continue;
      scheduler::Workload w = workload_of(*r, svc->second);
      scheduler::Allocation a;
      a.node = cluster_.find_node(r->node);
      a.cpu_milli = w.pods[0].cpu_milli;
      a.memory_mib = w.pods[0].memory_mib;
      for (const DeviceShare& d : *r->adopted)
        a.shares.push_back({d.device, d.milli, d.mig_slices});
      const bool kept = a.node >= 0 && scheduler_->adopt(std::move(w), {a}, t).ok();
      r->adopted.reset();
      if (kept) {
        r->submitted = true;
        r->devices = devices_string(a);
        continue;
      }
      spdlog::warn("replica {}: its node or devices are gone; placing it again", name);
      stop_engine(*r, "its node or devices are gone; placing it again");
      r->placed = false;
    }
    if (r->submitted || r->state == ReplicaState::kTerminating) continue;
    auto svc = services_.find(r->service);
    if (svc == services_.end()) continue;
    scheduler_->remove(r->name, t);
    if (auto s = scheduler_->submit(workload_of(*r, svc->second), t); !s.ok()) {
      r->message = s.error().message;
      continue;
    }
    r->submitted = true;
  }
  const scheduler::CycleReport report = scheduler_->schedule(t);
  for (const auto& name : report.preempted) {
    auto it = replicas_.find(name);
    if (it == replicas_.end()) continue;
    const std::string why = scheduler_->status(name)->reason;
    spdlog::warn("replica {}: {}", name, why);
    stop_engine(*it->second, why);
  }
  for (auto& [name, r] : replicas_) {
    const scheduler::WorkloadStatus* st = scheduler_->status(name);
    if (!st) continue;
    if (st->state == scheduler::WorkloadState::kRunning) {
      if (r->placed) continue;
      r->placed = true;
      mark(*r, 1, now);  // placed
      const auto& a = st->allocations.front();
      const scheduler::Node& node = cluster_.nodes()[a.node];
      r->node = node.name;
      r->devices = devices_string(a);
      spdlog::info("replica {}: placed on {} {}", name, r->node,
                   r->devices.empty() ? "(no GPU)" : r->devices);
    } else {
      r->placed = false;
      r->node.clear();
      r->devices.clear();
      if (r->state == ReplicaState::kPending)
        r->message = st->reason.empty() ? "waiting to be placed" : st->reason;
    }
  }
}

std::vector<scheduler::QueueStatus> Controller::queues() const {
  std::lock_guard lock(mu_);
  return scheduler_ ? scheduler_->queues() : std::vector<scheduler::QueueStatus>{};
}

std::string Controller::scheduler_metrics() const {
  std::lock_guard lock(metrics_mu_);
  return metrics_text_;
}

std::string Controller::render_scheduler_metrics() const {
  using prometheus::ClientMetric;
  using prometheus::MetricFamily;
  using prometheus::MetricType;
  if (!scheduler_) return {};
  std::vector<MetricFamily> families;
  auto family = [&](const char* name, const char* help, MetricType type) -> MetricFamily& {
    families.push_back({name, help, type, {}});
    return families.back();
  };
  auto add = [](MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
    ClientMetric m;
    m.label = std::move(labels);
    if (f.type == MetricType::Counter)
      m.counter.value = value;
    else
      m.gauge.value = value;
    f.metric.push_back(std::move(m));
  };
  const auto queues = scheduler_->queues();
  MetricFamily& allocated =
      family("loadstar_scheduler_queue_allocated_gpus",
             "GPUs allocated to the queue and its children", MetricType::Gauge);
  for (const auto& q : queues) add(allocated, {{"queue", q.name}}, q.allocated.gpu);
  MetricFamily& deserved = family("loadstar_scheduler_queue_deserved_gpus",
                                  "The queue's deserved GPU quota", MetricType::Gauge);
  for (const auto& q : queues) add(deserved, {{"queue", q.name}}, q.deserved.gpu);
  MetricFamily& fair = family("loadstar_scheduler_queue_fair_share_gpus",
                              "The queue's fair share of GPUs now", MetricType::Gauge);
  for (const auto& q : queues) add(fair, {{"queue", q.name}}, q.fair_share.gpu);
  MetricFamily& waiting = family("loadstar_scheduler_queue_pending_workloads",
                                 "Workloads of the queue waiting to be placed", MetricType::Gauge);
  for (const auto& q : queues) add(waiting, {{"queue", q.name}}, q.waiting);
  MetricFamily& queue_seconds =
      family("loadstar_scheduler_queue_gpu_seconds_total",
             "GPU-seconds allocated to the queue and its children (fractions count as such)",
             MetricType::Counter);
  for (const auto& q : queues) add(queue_seconds, {{"queue", q.name}}, q.gpu_seconds);
  MetricFamily& tenant_seconds = family(
      "loadstar_scheduler_tenant_gpu_seconds_total",
      "GPU-seconds allocated to the tenant's workloads, for chargeback", MetricType::Counter);
  for (const auto& [tenant, seconds] : scheduler_->tenant_gpu_seconds())
    add(tenant_seconds, {{"tenant", tenant}}, seconds);
  add(family("loadstar_scheduler_preemptions_total", "Workloads evicted by preemption or reclaim",
             MetricType::Counter),
      {}, static_cast<double>(scheduler_->preemptions()));
  add(family("loadstar_scheduler_gpus", "GPUs on schedulable nodes", MetricType::Gauge), {},
      cluster_.gpu_milli_total() / 1000.0);
  add(family("loadstar_scheduler_gpus_allocated", "GPUs allocated (fractions count as such)",
             MetricType::Gauge),
      {}, cluster_.gpu_milli_used() / 1000.0);
  MetricFamily& phases =
      family("loadstar_cold_start_phase_seconds",
             "Cold starts by phase: scheduling, staging, launching, loading, routing, and total "
             "(queued to routed)",
             MetricType::Histogram);
  for (const auto& [phase, h] : cold_start_) {
    ClientMetric m;
    m.label = {{"phase", phase}};
    m.histogram.sample_count = h.count;
    m.histogram.sample_sum = h.sum;
    for (size_t i = 0; i < std::size(kColdStartBounds); ++i)
      m.histogram.bucket.push_back({h.buckets[i], kColdStartBounds[i]});
    m.histogram.bucket.push_back({h.count, std::numeric_limits<double>::infinity()});
    phases.metric.push_back(std::move(m));
  }
  return prometheus::TextSerializer().Serialize(families);
}

void Controller::publish_if_changed() {
  std::vector<std::string> key;
  for (const auto& [name, svc] : services_) key.push_back(api::encode_resource(svc));
  for (const auto& t : tenant_specs_) key.push_back(api::encode_resource(t));
  for (const auto& r : route_specs_) key.push_back(api::encode_resource(r));
  for (const auto& [name, r] : replicas_)
    if (r->state == ReplicaState::kReady) key.push_back(fmt::format("ep:{}:{}", name, r->port));
  if (key == published_key_) return;
  published_key_ = key;
  std::map<std::string, std::vector<std::shared_ptr<gateway::Endpoint>>> ready;
  const auto routed_at = Clock::now();
  for (const auto& [name, r] : replicas_)
    if (r->state == ReplicaState::kReady && services_.count(r->service)) {
      ready[r->service].push_back(r->endpoint);
      mark(*r, 5, routed_at);  // routed (the table goes out below)
    }
  auto table = routing_.build(services_, tenant_specs_, route_specs_, ready);
  publish_(std::move(table));
}

void Controller::publish_statuses() {
  for (const auto& [name, svc] : services_) {
    nlohmann::json replicas = nlohmann::json::object();
    uint32_t ready = 0, total = 0;
    for (const auto& [rn, r] : replicas_) {
      if (r->service != name) continue;
      ++total;
      ready += r->state == ReplicaState::kReady;
      replicas[rn] = {{"state", replica_state_name(r->state)},
                      {"node", r->node},
                      {"devices", r->devices},
                      {"message", r->message}};
    }
    auto desired = desired_.find(name);
    nlohmann::json status = {
        {"desiredReplicas", desired != desired_.end() ? desired->second : svc.spec.replicas},
        {"readyReplicas", ready},
        {"replicas", total},
        {"replicaStatus", replicas}};
    if (auto it = scaling_.find(name); it != scaling_.end() && it->second.last) {
      status["scaleReason"] = it->second.last->reason;
      // Nodes asked to hold the weights (more than desired on a rising trend).
      if (svc.spec.warm_nodes > 0)
        status["weightsNodes"] = std::max(svc.spec.warm_nodes, it->second.last->stage_ahead);
    }
    store_.publish_status("InferenceService", name, status.dump());
  }
}

std::vector<ReplicaStatus> Controller::replicas() const {
  std::lock_guard lock(mu_);
  std::vector<ReplicaStatus> out;
  const auto now = Clock::now();
  for (const auto& [name, r] : replicas_) {
    ReplicaStatus s;
    s.name = name;
    s.service = r->service;
    if (auto it = services_.find(r->service); it != services_.end())
      s.model = it->second.spec.model;
    s.state = r->state;
    s.pid = r->pid;
    s.port = r->port;
    s.restarts = r->restarts;
    s.age_s = std::chrono::duration<double>(now - r->created).count();
    s.start_s = r->start_s;
    s.in_flight = r->endpoint ? r->endpoint->in_flight.load() : 0;
    s.message = r->message;
    s.node = r->node;
    s.devices = r->devices;
    s.starts = r->starts;
    for (int i = 0; i < kColdStartEventCount; ++i)
      if (r->timeline[i] && r->timeline[0])
        s.timeline[i] = std::chrono::duration<double>(*r->timeline[i] - *r->timeline[0]).count();
    if (auto it = services_.find(r->service); it != services_.end())
      s.queue = it->second.spec.queue;
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<ServiceStatus> Controller::services() const {
  std::lock_guard lock(mu_);
  std::vector<ServiceStatus> out;
  for (const auto& [name, svc] : services_) {
    ServiceStatus s;
    s.name = name;
    s.model = svc.spec.model;
    auto desired = desired_.find(name);
    s.desired = desired != desired_.end() ? desired->second : svc.spec.replicas;
    if (auto it = scaling_.find(name); it != scaling_.end() && it->second.last) {
      s.scale_reason = it->second.last->reason;
      s.events.assign(it->second.events.begin(), it->second.events.end());
    }
    for (const auto& [rn, r] : replicas_) {
      if (r->service != name) continue;
      ++s.total;
      s.ready += r->state == ReplicaState::kReady;
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace loadstar::controller
