#include "controller/controller.h"

#include <algorithm>
#include <chrono>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "api/disaggregation.h"
#include "controller/replica.h"

namespace loadstar::controller {

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

Controller::Controller(store::ResourceStore& store, EngineRuntime& runtime, LoadSource* load,
                       const Clock& clock, ControllerOptions options, Publish publish)
    : store_(store),
      runtime_(runtime),
      load_(load),
      clock_(clock),
      options_(std::move(options)),
      publish_(std::move(publish)),
      epoch_(clock.now()),
      scaler_(load != nullptr, epoch_),
      history_(store),
      events_(store, clock),
      rollouts_(history_, events_),
      versions_([this](const std::string& source) { return runtime_.resolve_version(source); },
                options_.model_resolve_interval_s,
                [this] {
                  woken_ = true;
                  wake_.notify_all();
                }),
      placement_(options_.placement_policy) {
  // The usage ledger goes on from what was saved. An unreadable one is
  // said in the log and replaced by the next save.
  auto saved = store_.load_usage();
  if (!saved.ok()) {
    spdlog::warn("usage ledger: {} (starting a new one)", saved.error().message);
  } else if (!saved->empty()) {
    auto ledger = UsageLedger::load(*saved);
    if (ledger.ok())
      usage_ = std::move(*ledger);
    else
      spdlog::error("usage ledger: {} (starting a new one; the next save replaces it)",
                    ledger.error().message);
  }
}

Controller::~Controller() {
  stop();
}

void Controller::run_jobs(WorkerRuntime& workers, JobOptions options) {
  std::lock_guard lock(mu_);
  jobs_ = std::make_unique<Jobs>(workers, events_, options);
}

void Controller::start() {
  watch_ = store_.watch([this](const store::WatchEvent&) {
    std::lock_guard lock(mu_);
    dirty_ = true;
    wake_.notify_all();
  });
  if (load_)
    load_->on_demand([this] {
      woken_ = true;
      wake_.notify_all();
    });
  versions_.start();
  thread_ = std::thread([this] { run(); });
}

void Controller::pass() {
  // Driven pass by pass (tests): sources are resolved on the caller's
  // thread, at the injected clock's time.
  if (!versions_.running()) versions_.poll(seconds(clock_.now()));
  std::optional<routing::RoutingInputs> inputs;
  {
    std::lock_guard lock(mu_);
    inputs = reconcile();
  }
  publish(std::move(inputs));
  std::lock_guard lock(mu_);
  published_pass_ = passes_;
}

void Controller::publish(std::optional<routing::RoutingInputs> inputs) {
  if (inputs && publish_) publish_(*inputs);
}

void Controller::adopt_existing() {
  for (const ExistingEngine& e : runtime_.existing()) {
    if (replicas_.count(e.replica)) continue;
    auto r = std::make_unique<Replica>();
    r->name = e.replica;
    r->service = e.service;
    r->index = e.index;
    r->state = ReplicaState::kStarting;
    r->launched = true;
    r->created = r->launched_at = clock_.now();  // its start was a previous controller's
    r->ever_launched = true;
    if (e.canary_weight > 0) canary_weights_[e.replica] = e.canary_weight;
    // Its revision as the runtime recorded it; one the history lost is
    // known by its hash alone (number 0): it is rolled, never restarted.
    // None recorded (a controller before rollouts): taken as the current.
    if (!e.revision.empty()) {
      r->revision = history_.find(e.service, e.revision);
      if (!r->revision) {
        auto lost = std::make_shared<Revision>();
        lost->hash = e.revision;
        r->revision = std::move(lost);
      }
    }
    std::vector<Placed> pods = {{e.node, "", e.shares}};
    for (const EngineLaunch::Member& m : e.members) pods.push_back({m.node, m.devices, m.shares});
    placement_.adopt(e.replica, std::move(pods));
    r->message = "taken over from a previous controller";
    spdlog::info("replica {}: running on {}; taken over", e.replica, e.node);
    if (e.draining) {
      // Its drain goes on. What runs there is unknown until the gateways'
      // next load round says; until then it is not drained.
      r->in_flight = 1;
      begin_termination(*r);
    }
    replicas_.emplace(e.replica, std::move(r));
  }
}

void Controller::run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    dirty_ = false;
    std::optional<routing::RoutingInputs> inputs = reconcile();
    lock.unlock();
    publish(std::move(inputs));
    lock.lock();
    published_pass_ = passes_;
    wake_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(options_.resync_s * 1000)),
                   [this] { return dirty_ || stopping_ || woken_.exchange(false); });
  }
  // Pods outlive their controller: the next one takes them over.
  if (runtime_.engines_outlive_controller()) return;
  // Shutdown: every replica drains and stops, as on scale-down; every
  // job's workers get their grace period to checkpoint.
  for (auto& [name, r] : replicas_) begin_termination(*r);
  if (jobs_) jobs_->stop_all();
  std::optional<routing::RoutingInputs> inputs = routing_if_changed(clock_.now());
  lock.unlock();
  publish(std::move(inputs));
  lock.lock();
  published_pass_ = passes_ + 1;  // the shutdown's drains are published
  const auto deadline = clock_.now() + std::chrono::milliseconds(
                                           static_cast<int64_t>(options_.drain_timeout_s * 1000));
  while (!replicas_.empty() || (jobs_ && jobs_->any_running())) {
    if (jobs_) jobs_->observe(placement_, seconds(clock_.now()));
    apply_load();
    const bool late = clock_.now() > deadline;
    for (auto it = replicas_.begin(); it != replicas_.end();) {
      Replica& r = *it->second;
      if ((r.in_flight == 0 || late) && r.launched && !r.stop_sent) {
        runtime_.stop(r.name);
        r.stop_sent = true;
      }
      if (!r.launched || (r.stop_sent && !runtime_.status(r.name).exists)) {
        it = replicas_.erase(it);
      } else if (clock_.now() > deadline + std::chrono::seconds(5)) {
        runtime_.kill(r.name);
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
  if (stopping_.exchange(true)) return;
  { std::lock_guard lock(mu_); }  // the run loop is in a pass or waiting: no lost wake-up
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  versions_.stop();
  if (load_) load_->on_demand(nullptr);
  watch_.reset();
  std::lock_guard lock(mu_);
  save_usage(true);
}

void Controller::save_usage(bool now) {
  constexpr double kUsageSaveS = 30;
  const auto t = clock_.now();
  if (!usage_dirty_ ||
      (!now && usage_saved_at_ && seconds_between(*usage_saved_at_, t) < kUsageSaveS))
    return;
  usage_saved_at_ = t;
  size_t dropped = 0;
  const std::string document = usage_.save(&dropped);
  if (dropped > 0)
    spdlog::warn(
        "usage ledger: dropped its {} oldest hour row(s) to stay under {} KiB (export them with "
        "`loadstar usage -o csv` regularly)",
        dropped, UsageLedger::kMaxDocumentBytes / 1024);
  if (Status saved = store_.save_usage(document); !saved.ok()) {
    spdlog::warn("usage ledger: cannot save it: {} (kept in memory; tried again in {}s)",
                 saved.error().message, kUsageSaveS);
    return;
  }
  usage_dirty_ = false;
}

void Controller::apply_load() {
  demand_.clear();
  if (!load_) return;
  std::optional<LoadRound> round = load_->take();
  // No new round: the replicas keep their in-flight counts, the queue
  // shares in them included, and held_, queued_ and queued_overdue_ keep
  // theirs.
  if (!round) return;
  for (auto& [name, r] : replicas_) {
    auto it = round->replicas.find(name);
    if (it == round->replicas.end()) {
      r->in_flight = 0;  // no gateway routes to it (any more)
      r->prefill_tokens = 0;
      r->adapters.clear();
      continue;
    }
    r->in_flight = it->second.in_flight;
    r->prefill_tokens = it->second.prefill_tokens;
    r->adapters = it->second.adapters;
    if (r->revision) rollouts_.observe(r->service, r->revision->hash, it->second);
    if (it->second.waiting) r->waiting = *it->second.waiting;
    if (it->second.kv_usage) r->kv_usage = *it->second.kv_usage;
  }
  demand_ = std::move(round->demand);
  held_ = std::move(round->held);
  queued_ = std::move(round->queued);
  queued_overdue_ = std::move(round->queued_overdue);
  for (const auto& [service, n] : round->turned_away) increments_[service].turned_away += n;
  const int64_t unix_s =
      std::chrono::duration_cast<std::chrono::seconds>(clock_.wall().time_since_epoch()).count();
  if (usage_.observe(round->tenants, unix_s)) usage_dirty_ = true;
  // Increments go to the services (their autoscalers keep the windows),
  // and to what the dashboard shows.
  std::map<std::string, TrafficSample> traffic;
  for (const auto& [name, load] : round->replicas) {
    auto r = replicas_.find(name);
    if (r == replicas_.end()) continue;
    ServiceLoad& s = increments_[r->second->service];
    s.requests += load.requests;
    for (size_t b = 0; b < s.ttft.size(); ++b) s.ttft[b] += load.ttft[b];
    s.ttft_overdue += load.ttft_overdue;
    s.ttft_overdue_answered += load.ttft_overdue_answered;
    for (size_t b = 0; b < s.itl.size(); ++b) s.itl[b] += load.itl[b];
    // The service's, and its revision's ("SERVICE#N").
    const Revision* revision = r->second->revision.get();
    for (const std::string& key :
         {r->second->service,
          revision ? fmt::format("{}#{}", r->second->service, revision->number) : std::string()}) {
      if (key.empty()) continue;
      TrafficSample& t = traffic[key];
      t.requests += load.requests;
      t.failures += load.failures;
      for (size_t b = 0; b < t.ttft.size(); ++b) t.ttft[b] += load.ttft[b];
      for (size_t b = 0; b < t.itl.size(); ++b) t.itl[b] += load.itl[b];
    }
  }
  traffic_.add(traffic, clock_.now());
}

ServiceLoad Controller::service_load(const std::string& service) const {
  ServiceLoad load;
  if (auto it = increments_.find(service); it != increments_.end()) load = it->second;
  std::set<std::string> adapters;
  for (const auto& [name, r] : replicas_) {
    if (r->service != service) continue;
    load.in_flight += static_cast<double>(r->in_flight);
    load.prefill_tokens += r->prefill_tokens;
    adapters.insert(r->adapters.begin(), r->adapters.end());
    if (r->state != ReplicaState::kReady) continue;
    ++load.ready;
    if (r->start_s) load.cold_start_s = std::max(load.cold_start_s.value_or(0), *r->start_s);
    load.waiting += r->waiting;
    load.kv_usage_sum += r->kv_usage;
  }
  load.held = demand_.count(service) > 0;
  if (auto it = held_.find(service); it != held_.end()) load.held_requests = it->second;
  if (auto it = queued_.find(service); it != queued_.end())
    load.queued = static_cast<double>(it->second);
  if (auto it = queued_overdue_.find(service); it != queued_overdue_.end())
    load.queued_overdue = static_cast<double>(it->second);
  load.adapters = static_cast<double>(adapters.size());
  return load;
}

void Controller::scale(const api::InferenceService& svc, Clock::time_point now) {
  const std::string& svc_name = svc.metadata.name;
  auto found = current_.find(svc_name);
  if (found == current_.end()) return;  // no revision until its model's source resolves
  const std::shared_ptr<const Revision>& current = found->second;
  std::vector<Replica*> active;
  std::set<uint32_t> used;
  bool old = false;
  for (auto& [name, r] : replicas_) {
    if (r->service != svc_name) continue;
    used.insert(r->index);
    if (r->state == ReplicaState::kTerminating) continue;
    // Unknown (a controller before rollouts), or its revision came back
    // renumbered: it runs the current one.
    if (!r->revision || r->revision->hash == current->hash) r->revision = current;
    old = old || r->revision != current;
    active.push_back(r.get());
  }
  // While old replicas remain, the surge above the desired count is the
  // rollout's, not the autoscaler's to count.
  const uint32_t counted =
      old ? std::min(static_cast<uint32_t>(active.size()), scaler_.desired(svc))
          : static_cast<uint32_t>(active.size());
  const bool decided_before = scaler_.last_decision(svc_name) != nullptr;
  const uint32_t desired = scaler_.decide(svc, counted, service_load(svc_name), now);
  if (desired != counted) {
    const autoscaler::Decision* d = scaler_.last_decision(svc_name);
    std::string why = d && decided_before ? d->reason
                      : desired == 0      ? fmt::format("idle for {}s", svc.spec.idle_timeout_s)
                                          : std::string("spec.replicas");
    events_.normal(svc_name, desired > counted ? "ScaledUp" : "ScaledDown",
                   fmt::format("{} -> {}: {}", counted, desired, why));
  }
  std::vector<RolloutView> views;
  for (const Replica* r : active) {
    RolloutView v{r->name, r->index, r->revision, r->ever_launched,
                  r->state == ReplicaState::kReady};
    v.staged = v.ready || r->cold_start.seconds_to(kStaged).has_value();
    v.new_weights_here = r->revision != current && weights_here(*r, *current);
    // Not placed in an earlier pass: the scheduler has no room for it.
    v.unplaced = r->state == ReplicaState::kPending && r->created < now &&
                 placement_.where(r->name) == nullptr;
    if (const Placed* at = placement_.where(r->name))
      v.node_gpu_free_milli = placement_.gpu_milli_free(at->node);
    if (!v.ready) v.message = r->message;
    views.push_back(std::move(v));
  }
  RolloutActions actions = rollouts_.plan(svc, current, desired, std::move(views), now);
  for (auto& [name, revision] : actions.retarget) replicas_.at(name)->revision = revision;
  for (auto& revision : actions.create) new_replica(svc_name, used, revision, now);
  if (desired == 0 && !actions.drain.empty())
    spdlog::info("service {}: idle for {}s; scaling to zero", svc_name, svc.spec.idle_timeout_s);
  for (const std::string& name : actions.drain) begin_termination(*replicas_.at(name));
  for (const auto& [name, weight] : actions.canary_weights) {
    uint32_t& now_weight = canary_weights_[name];
    if (now_weight != weight) runtime_.route_share(name, weight);
    now_weight = weight;
  }
}

void Controller::new_replica(const std::string& service, std::set<uint32_t>& used,
                             std::shared_ptr<const Revision> revision, Clock::time_point now) {
  uint32_t index = 0;  // new replicas take the lowest free index
  while (used.count(index)) ++index;
  used.insert(index);
  auto r = std::make_unique<Replica>();
  r->name = fmt::format("{}-{}", service, index);
  r->created = now;
  r->cold_start = ColdStart(now);
  r->service = service;
  r->index = index;
  r->revision = std::move(revision);
  replicas_.emplace(r->name, std::move(r));
}

bool Controller::weights_here(const Replica& r, const Revision& to) {
  if (!to.model) return false;
  if (r.revision && r.revision->model &&
      r.revision->model->metadata.name == to.model->metadata.name)
    return r.revision->model->spec == to.model->spec &&
           r.revision->model_version ==
               to.model_version;  // the same weights, or other bytes by that name
  const Placed* where = placement_.where(r.name);
  return where && runtime_.models_on(where->node).count(to.model->metadata.name) > 0;
}

void Controller::find_revisions() {
  const uint64_t at = store_.revision();
  const uint64_t versions_at = versions_.generation();
  if (at == revisions_found_at_ && versions_at == versions_found_at_ &&
      current_.size() == services_.size())
    return;
  revisions_found_at_ = at;
  versions_found_at_ = versions_at;
  std::map<std::string, std::shared_ptr<const Revision>> found;
  std::set<std::string> versioned;
  unresolved_.clear();
  for (const auto& [name, svc] : services_) {
    const auto model = store_.get("Model", svc.spec.model);
    const api::Model* m = model ? std::get_if<api::Model>(&*model) : nullptr;
    // Adapters loaded at start are part of what a replica runs.
    std::vector<api::Model> adapters;
    if (svc.spec.lora && !svc.spec.lora->on_demand)
      for (const std::string& adapter : svc.spec.lora->adapters)
        if (auto a = store_.get("Model", adapter))
          if (const auto* am = std::get_if<api::Model>(&*a)) adapters.push_back(*am);
    if (!m || !source_has_versions(m->spec.source)) {
      found[name] = history_.current(svc, m, "", clock_.wall(), adapters);
      continue;
    }
    const std::string& source = m->spec.source;
    versioned.insert(source);
    if (auto version = versions_.version(source)) {
      auto latest = history_.latest_of(svc, m, adapters);
      if (latest && latest->model_version.empty() &&
          legacy_versions_.try_emplace(source, *version).first->second == *version) {
        found[name] = latest;  // recorded before model versions: taken to run this one
        continue;
      }
      found[name] = history_.current(svc, m, *version, clock_.wall(), adapters);
    } else if (auto latest = history_.latest_of(svc, m, adapters)) {
      found[name] = latest;  // as before this controller (or a failing resolve): no rollout
    } else {
      const std::string error = versions_.error(source);
      unresolved_[name] = error.empty() ? fmt::format("resolving {}", source)
                                        : fmt::format("cannot resolve {}: {}", source, error);
    }
  }
  versions_.want(versioned);
  current_ = std::move(found);
}

void Controller::place(const std::vector<api::Node>& nodes, const std::vector<api::Queue>& queues,
                       Clock::time_point now) {
  PlacementPass pass;
  pass.nodes = &nodes;
  pass.queues = &queues;
  pass.services = &services_;
  for (const auto& [name, r] : replicas_)
    pass.replicas.push_back({name, r->service, nullptr, r->state == ReplicaState::kTerminating,
                             r->launched, r->launched || r->state != ReplicaState::kPending});
  if (jobs_)
    for (PlacementReplica& job : jobs_->placement_units(seconds(now)))
      pass.replicas.push_back(std::move(job));
  if (admissions_)
    for (PlacementReplica& unit : admissions_->placement_units(placement_))
      pass.replicas.push_back(std::move(unit));
  pass.models_on = [this](const std::string& node) { return runtime_.models_on(node); };
  const PlacementChanges changes = placement_.pass(pass, seconds(now));
  for (const auto& [name, why] : changes.displaced)
    if (auto it = replicas_.find(name); it != replicas_.end()) {
      events_.warning(it->second->service, "Displaced", fmt::format("replica {}: {}", name, why));
      stop_engine(*it->second, why);
    } else if (jobs_ && jobs_->has(name)) {
      jobs_->displaced(name, why, seconds(now));
    }
  for (const auto& name : changes.placed)
    if (auto it = replicas_.find(name); it != replicas_.end()) mark(*it->second, kPlaced, now);
  for (const auto& [name, why] : changes.waiting)
    if (auto it = replicas_.find(name);
        it != replicas_.end() && it->second->state == ReplicaState::kPending)
      it->second->message = why;
    else if (admissions_ && admissions_->has(name))
      admissions_->waiting(name, why);
    else if (jobs_)
      jobs_->waiting(name, why);
  if (admissions_ && !stopping_) admissions_->release(placement_, seconds(now));
}

void Controller::observe_jobs(std::vector<api::Job> declared, Clock::time_point now) {
  if (!jobs_) {
    for (const api::Job& job : declared)
      if (jobs_refused_.insert(job.metadata.name).second)
        events_.record("Job", job.metadata.name, "Warning", "NotSupported",
                       "this runtime runs no Jobs yet (`loadstar up` does)");
    return;
  }
  jobs_->sync(std::move(declared), placement_, seconds(now));
  jobs_->observe(placement_, seconds(now));
}

std::optional<routing::RoutingInputs> Controller::reconcile() {
  const auto pass_started = std::chrono::steady_clock::now();
  // At least four times what the rest of the last pass took: a pass's own
  // cost (placement, statuses) grows with the replicas, and launches cut
  // too short would spend most of the time on passes instead of launches.
  const auto launch_budget = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(std::max(options_.launch_budget_s, 4 * last_pass_overhead_s_)));
  std::optional<std::chrono::steady_clock::time_point> first_launch;
  std::chrono::steady_clock::duration launching{};
  if (!adopted_) {
    adopt_existing();
    adopted_ = true;
  }
  // Desired state.
  services_.clear();
  tenant_specs_.clear();
  route_specs_.clear();
  std::vector<api::Node> nodes;
  std::vector<api::Queue> queues;
  std::vector<api::Job> jobs;
  for (auto& resource : store_.list()) {
    if (auto* node = std::get_if<api::Node>(&resource)) nodes.push_back(std::move(*node));
    if (auto* queue = std::get_if<api::Queue>(&resource)) queues.push_back(std::move(*queue));
    if (auto* job = std::get_if<api::Job>(&resource)) jobs.push_back(std::move(*job));
    if (auto* svc = std::get_if<api::InferenceService>(&resource)) {
      // A disaggregated service runs as two: itself and its prefill pool.
      for (api::InferenceService& role : api::role_services(*svc))
        services_.emplace(role.metadata.name, std::move(role));
    } else if (auto* tenant = std::get_if<api::Tenant>(&resource))
      tenant_specs_.push_back(std::move(*tenant));
    else if (auto* route = std::get_if<api::Route>(&resource))
      route_specs_.push_back(std::move(*route));
  }
  const auto now = clock_.now();
  increments_.clear();
  apply_load();

  cards_.clear();
  for (auto& [name, r] : replicas_) observe(*r);
  observe_jobs(std::move(jobs), now);
  // Which card a Pod gets is the kubelet's choice: the bookkeeping follows.
  for (const std::string& name : placement_.follow_devices(cards_, seconds(now)))
    if (const Placed* where = placement_.where(name))
      spdlog::info("replica {}: on {} {}, the cards its node's device plugin handed it", name,
                   where->node, where->devices);
  find_revisions();
  for (const auto& [svc_name, svc] : services_) scale(svc, now);
  rollouts_.retain(services_);
  std::erase_if(canary_weights_, [this](const auto& kv) { return !replicas_.count(kv.first); });
  for (auto& [name, r] : replicas_)
    if (!services_.count(r->service)) begin_termination(*r);
  scaler_.retain(services_);
  traffic_.retain([this](const std::string& key) {
    return services_.count(key.substr(0, key.rfind('#'))) > 0;
  });

  place(nodes, queues, now);
  if (jobs_ && !stopping_) jobs_->launch(placement_, seconds(now));

  // Act per replica.
  for (auto it = replicas_.begin(); it != replicas_.end();) {
    Replica& r = *it->second;
    const bool placed = placement_.where(r.name) != nullptr;
    const bool startable = r.state == ReplicaState::kPending ||
                           (r.state == ReplicaState::kFailed && now >= r.next_restart);
    // Its devices are a preempted job's until that job's workers have
    // checkpointed and ended.
    const std::string blocker = placed && startable ? placement_.blocker(r.name) : "";
    if (!blocker.empty()) {
      r.message =
          fmt::format("placed; waiting for preempted job {} to checkpoint and stop", blocker);
    } else if (placed && !stopping_ && startable) {
      // The budget runs from this pass's first launch: every pass starts
      // at least one, however long the rest of it took.
      const auto wall = std::chrono::steady_clock::now();
      if (!first_launch) first_launch = wall;
      if (wall - *first_launch < launch_budget) {
        launch(r);
        launching += std::chrono::steady_clock::now() - wall;
      } else
        dirty_ = true;  // the next pass goes on at once
    } else if (r.state == ReplicaState::kTerminating && drain(r, now)) {
      spdlog::info("replica {}: stopped", r.name);
      placement_.remove(r.name, seconds(now));
      it = replicas_.erase(it);
      continue;
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
    const uint32_t nodes_wanted = scaler_.weights_nodes(svc);
    if (nodes_wanted == 0) continue;
    auto current = current_.find(name);
    if (current == current_.end() || !current->second->model) continue;
    runtime_.keep_warm(*current->second->model, nodes_wanted, current->second->model_version);
  }
  // The models running engines read (the local agent does not evict them).
  std::vector<std::string> in_use;
  for (const auto& [name, r] : replicas_) {
    auto svc = services_.find(r->service);
    if (!r->launched || svc == services_.end()) continue;
    in_use.push_back(svc->second.spec.model);
    // Adapters too: engines read them (vLLM lazily, when first asked for).
    if (svc->second.spec.lora)
      for (const std::string& adapter : svc->second.spec.lora->adapters) in_use.push_back(adapter);
    if (r->revision && r->revision->service.spec.lora)
      for (const std::string& adapter : r->revision->service.spec.lora->adapters)
        in_use.push_back(adapter);
  }
  runtime_.end_pass(in_use);
  auto inputs = routing_if_changed(clock_.now());  // after this pass's ready marks
  publish_statuses();
  save_usage(false);
  const double pass_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - pass_started).count();
  ++passes_;
  pass_seconds_sum_ += pass_s;
  pass_seconds_max_ = std::max(pass_seconds_max_, pass_s);
  last_pass_overhead_s_ = pass_s - std::chrono::duration<double>(launching).count();
  MetricsText text;  // after the pass: this pass's starts included
  placement_.render(text);
  if (jobs_) jobs_->render(text);
  cold_starts_.render(text);
  std::map<std::pair<std::string, std::string>, int> states;
  for (const auto& [name, r] : replicas_) ++states[{r->service, replica_state_name(r->state)}];
  auto& replica_gauge = text.gauge("loadstar_replicas", "Replicas by service and state");
  for (const auto& [key, n] : states)
    replica_gauge.add(n, {{"service", key.first}, {"state", key.second}});
  auto& failures =
      text.counter("loadstar_replica_failures_total",
                   "Engines that ended on their own: StartFailed before Ready, EngineExited after");
  for (const auto& [key, n] : replica_failures_)
    failures.add(static_cast<double>(n), {{"service", key.first}, {"reason", key.second}});
  text.counter("loadstar_controller_passes_total", "Reconcile passes").add(passes_);
  text.counter("loadstar_controller_pass_seconds_total", "Wall time spent in reconcile passes")
      .add(pass_seconds_sum_);
  text.gauge("loadstar_controller_pass_seconds", "The last reconcile pass's wall time").add(pass_s);
  text.gauge("loadstar_controller_pass_seconds_max", "The longest reconcile pass so far")
      .add(pass_seconds_max_);
  std::string rendered = text.str();
  std::lock_guard lock(metrics_mu_);
  metrics_text_ = std::move(rendered);
  return inputs;
}

std::optional<routing::RoutingInputs> Controller::routing_if_changed(Clock::time_point now) {
  // The specs are compared by value; the rest (ready endpoints, adapters
  // staged) by key.
  const bool specs_changed = services_ != published_services_ ||
                             tenant_specs_ != published_tenants_ ||
                             route_specs_ != published_routes_;
  std::vector<std::string> key;
  auto weight = [this](const std::string& replica) {
    auto it = canary_weights_.find(replica);
    return it == canary_weights_.end() ? 0u : it->second;
  };
  for (const auto& [name, r] : replicas_)
    if (r->state == ReplicaState::kReady)
      key.push_back(
          fmt::format("ep:{}:{}:{}:{}:{}", name, r->host, r->port, weight(name), r->kv_events));
  // Adapters loaded on demand, as they become staged (staging starts here).
  std::map<std::string, std::map<std::string, std::string>> adapter_paths;
  for (const auto& [name, svc] : services_) {
    if (!svc.spec.lora || !svc.spec.lora->on_demand) continue;
    for (const std::string& adapter : svc.spec.lora->adapters) {
      auto m = store_.get("Model", adapter);
      const auto* model = m ? std::get_if<api::Model>(&*m) : nullptr;
      if (!model || model->spec.adapter_of != svc.spec.model) {
        std::string& said = adapter_errors_[name + "/" + adapter];
        const std::string why = model ? "not an adapter of " + svc.spec.model : "no such Model";
        if (said != why) spdlog::warn("service {}: adapter {}: {}", name, adapter, why);
        said = why;
        continue;
      }
      auto path = runtime_.adapter_path(*model);
      // Why one is not there yet is said once per change of reason (the
      // gateway answers its requests 503 meanwhile).
      std::string& said = adapter_errors_[name + "/" + adapter];
      if (!path.ok()) {
        if (said != path.error().message)
          spdlog::warn("service {}: adapter {}: {}", name, adapter, path.error().message);
        said = path.error().message;
        continue;
      }
      said.clear();
      key.push_back(fmt::format("ad:{}:{}:{}", name, adapter, *path));
      adapter_paths[name][adapter] = *path;
    }
  }
  if (!specs_changed && key == published_key_) return std::nullopt;
  published_key_ = key;
  published_services_ = services_;
  published_tenants_ = tenant_specs_;
  published_routes_ = route_specs_;
  routing::RoutingInputs inputs;
  inputs.adapter_paths = std::move(adapter_paths);
  inputs.services = services_;
  inputs.tenants = tenant_specs_;
  inputs.routes = route_specs_;
  for (const auto& [name, r] : replicas_)
    if (r->state == ReplicaState::kReady && services_.count(r->service)) {
      // The adapters its engine loaded at start, in flag order: its revision's.
      std::vector<std::string> adapters;
      if (r->revision && r->revision->service.spec.lora &&
          !r->revision->service.spec.lora->on_demand)
        adapters = r->revision->service.spec.lora->adapters;
      inputs.ready[r->service].push_back(
          {name, r->host, r->port, weight(name), adapters, r->kv_events});
      mark(*r, kRouted, now);  // the inputs go out at the end of this pass
    }
  return inputs;
}

}  // namespace loadstar::controller
