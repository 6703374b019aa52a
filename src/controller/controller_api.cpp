// The controller as the admin API, the CLI and the Kubernetes status
// subresource see it: replicas, services and their rollouts, history,
// events and queues, and the operator's rollout actions (undo, pause,
// resume, promote, abort). Everything here takes the controller's lock.
#include <algorithm>
#include <chrono>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "controller/controller.h"

#include <cmath>

#include "api/disaggregation.h"
#include "controller/replica.h"

namespace loadstar::controller {

void Controller::publish_statuses() {
  // A disaggregated service's prefill pool reports inside its status.
  auto status_of = [this](const std::string& name, const api::InferenceService& svc) {
    nlohmann::json replicas = nlohmann::json::object();
    uint32_t ready = 0, total = 0;
    for (const auto& [rn, r] : replicas_) {
      if (r->service != name) continue;
      ++total;
      ready += r->state == ReplicaState::kReady;
      const Placed* where = placement_.where(rn);
      replicas[rn] = {{"state", replica_state_name(r->state)},
                      {"node", where ? where->node : ""},
                      {"devices", where ? where->devices : ""},
                      {"message", r->message}};
    }
    const RolloutStatus rollout = rollout_status(name);
    nlohmann::json revisions = nlohmann::json::array();
    for (const RevisionStatus& rev : rollout.revisions)
      revisions.push_back({{"revision", rev.number},
                           {"hash", rev.hash},
                           {"replicas", rev.replicas},
                           {"readyReplicas", rev.ready}});
    nlohmann::json status = {{"desiredReplicas", scaler_.desired(svc)},
                             {"readyReplicas", ready},
                             {"replicas", total},
                             {"replicaStatus", replicas},
                             {"currentRevision", rollout.revision},
                             {"revisions", revisions},
                             {"rollout", rollout.message}};
    if (const autoscaler::Decision* d = scaler_.last_decision(name)) {
      status["scaleReason"] = d->reason;
      // Nodes asked to hold the weights (more than desired on a rising trend).
      if (svc.spec.warm_nodes > 0) status["weightsNodes"] = scaler_.weights_nodes(svc);
    }
    return status;
  };
  for (const auto& [name, svc] : services_) {
    if (!svc.spec.prefill_of.empty()) continue;
    nlohmann::json status = status_of(name, svc);
    if (svc.spec.prefill)
      if (auto p = services_.find(api::prefill_service_name(name)); p != services_.end())
        status["prefill"] = status_of(p->first, p->second);
    store_.publish_status("InferenceService", name, status.dump());
  }
  if (!jobs_) return;
  // What changes with its lifecycle only (a status write per change, not
  // per pass: GPU-seconds are the admin API's and the metrics').
  for (const JobStatus& j : jobs_->statuses(placement_, seconds(clock_.now()))) {
    const nlohmann::json status = {{"phase", job_phase_name(j.phase)},
                                   {"workers", j.workers},
                                   {"running", j.running},
                                   {"attempts", j.attempts},
                                   {"failures", j.failures},
                                   {"preemptions", j.preemptions},
                                   {"nodes", j.nodes},
                                   {"message", j.message},
                                   {"logs", j.logs}};
    store_.publish_status("Job", j.name, status.dump());
  }
}

std::vector<JobStatus> Controller::jobs() const {
  std::lock_guard lock(mu_);
  return jobs_ ? jobs_->statuses(placement_, seconds(clock_.now())) : std::vector<JobStatus>{};
}

std::vector<ReplicaStatus> Controller::replicas() const {
  std::lock_guard lock(mu_);
  std::vector<ReplicaStatus> out;
  const auto now = clock_.now();
  for (const auto& [name, r] : replicas_) {
    ReplicaStatus s;
    s.name = name;
    s.service = r->service;
    if (auto it = services_.find(r->service); it != services_.end()) {
      s.model = it->second.spec.model;
      s.queue = it->second.spec.queue;
    }
    s.state = r->state;
    s.message = r->message;
    // Ready once the gateways have it: the pass that found it ready
    // publishes the routing after the pass.
    if (s.state == ReplicaState::kReady && r->ready_pass > published_pass_) {
      s.state = ReplicaState::kStarting;
      s.message = "ready; its route is being published";
    }
    if (s.state == ReplicaState::kTerminating && r->drain_pass > published_pass_) {
      s.state = ReplicaState::kReady;
      s.message = "draining; its route is being withdrawn";
    }
    s.pid = r->pid;
    s.port = r->port;
    s.restarts = r->restarts;
    s.age_s = seconds_between(r->created, now);
    s.start_s = r->start_s;
    s.in_flight = r->in_flight;
    if (const Placed* where = placement_.where(name)) {
      s.node = where->node;
      s.devices = where->devices;
    }
    if (r->revision) s.revision = r->revision->number;
    s.starts = r->cold_start.starts();
    for (int i = 0; i < kColdStartEventCount; ++i) s.timeline[i] = r->cold_start.seconds_to(i);
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
    s.desired = scaler_.desired(svc);
    if (const autoscaler::Decision* d = scaler_.last_decision(name)) s.scale_reason = d->reason;
    s.rollout = rollout_status(name);
    s.events = events_.of(name);
    s.traffic = traffic_.summary(name, clock_.now());
    for (const auto& [rn, r] : replicas_) {
      if (r->service != name) continue;
      ++s.total;
      s.ready += r->state == ReplicaState::kReady;
    }
    out.push_back(std::move(s));
  }
  return out;
}

namespace {

RevisionStatus describe_revision(const Revision& rev) {
  RevisionStatus out;
  out.number = rev.number;
  out.hash = rev.hash;
  out.created = rev.created;
  out.model = rev.model ? fmt::format("{} ({})", rev.model->metadata.name, rev.model->spec.source)
                        : rev.service.spec.model;
  if (!rev.model_version.empty()) out.model += " version " + rev.model_version;
  out.engine = rev.service.spec.engine.name;
  for (const std::string& arg : rev.service.spec.engine.args) out.engine += " " + arg;
  return out;
}

}  // namespace

RolloutStatus Controller::rollout_status(const std::string& service) const {
  RolloutStatus out;
  const auto current = current_.find(service);
  if (current != current_.end()) out.revision = current->second->number;
  out.rolling = rollouts_.rolling(service);
  out.aborted = rollouts_.aborted(service);
  out.message = rollouts_.message(service);
  if (auto waiting = unresolved_.find(service); waiting != unresolved_.end())
    out.message = waiting->second;
  std::map<std::string, RevisionStatus> by_hash;
  for (const auto& [name, r] : replicas_) {
    if (r->service != service) continue;
    const std::string hash = r->revision ? r->revision->hash : "";
    auto [it, added] = by_hash.try_emplace(hash);
    if (added && r->revision) it->second = describe_revision(*r->revision);
    ++it->second.replicas;
    it->second.ready += r->state == ReplicaState::kReady;
  }
  for (auto& [hash, rev] : by_hash) {
    rev.current = current != current_.end() && hash == current->second->hash;
    if (rev.number > 0)
      rev.traffic = traffic_.summary(fmt::format("{}#{}", service, rev.number), clock_.now());
    out.revisions.push_back(std::move(rev));
  }
  std::sort(out.revisions.begin(), out.revisions.end(),
            [](const RevisionStatus& a, const RevisionStatus& b) { return a.number > b.number; });
  if (!out.rolling && out.message.empty() && current != current_.end())
    out.message = fmt::format("revision {} rolled out", current->second->number);
  return out;
}

Result<std::vector<RevisionStatus>> Controller::history(const std::string& service) const {
  std::lock_guard lock(mu_);
  if (!services_.count(service))
    return make_error(ErrorCode::kNotFound, "InferenceService '{}' does not exist", service);
  const RolloutStatus now = rollout_status(service);
  std::vector<RevisionStatus> out;
  for (const auto& rev : history_.of(service)) {
    RevisionStatus s = describe_revision(*rev);
    for (const RevisionStatus& running : now.revisions)
      if (running.hash == rev->hash) {
        s.replicas = running.replicas;
        s.ready = running.ready;
      }
    s.current = s.number == now.revision;
    out.push_back(std::move(s));
  }
  return out;
}

Result<std::string> Controller::undo(const std::string& service, uint32_t to) {
  std::shared_ptr<const Revision> target;
  {
    std::lock_guard lock(mu_);
    const auto current = current_.find(service);
    if (!services_.count(service) || current == current_.end())
      return make_error(ErrorCode::kNotFound, "InferenceService '{}' does not exist", service);
    const auto revisions = history_.of(service);
    std::vector<std::string> kept;
    for (const auto& rev : revisions) {
      kept.push_back(std::to_string(rev->number));
      if (to != 0 ? rev->number == to : rev->number < current->second->number) target = rev;
    }
    if (!target)
      return make_error(ErrorCode::kNotFound, "service {} has {} (its history keeps revision{} {})",
                        service, to ? fmt::format("no revision {}", to) : "no earlier revision",
                        kept.size() == 1 ? "" : "s", fmt::join(kept, ", "));
    if (target->hash == current->second->hash)
      return make_error(ErrorCode::kInvalidArgument, "service {} runs revision {} already", service,
                        target->number);
    // Undo writes specs back, and a source's bytes are not in a spec: a
    // revision whose source now holds other bytes cannot come back this way.
    if (target->model && !target->model_version.empty() &&
        source_has_versions(target->model->spec.source)) {
      const auto now = versions_.version(target->model->spec.source);
      if (now && *now != target->model_version)
        return make_error(
            ErrorCode::kInvalidArgument,
            "revision {} ran version {} of {}, which now holds version {}: undo restores specs, "
            "not a source's old bytes; pin the source to the revision you want "
            "(hf://ORG/NAME@COMMIT) or restore the old bytes there",
            target->number, target->model_version, target->model->spec.source, *now);
    }
  }
  // The store's watch takes mu_: written without it.
  auto stored = store_.get("InferenceService", service);
  if (!stored || !std::holds_alternative<api::InferenceService>(*stored))
    return make_error(ErrorCode::kNotFound, "InferenceService '{}' does not exist", service);
  api::InferenceService svc = std::get<api::InferenceService>(*stored);
  const api::InferenceServiceSpec& from = target->service.spec;
  svc.spec.model = from.model;
  svc.spec.engine = from.engine;
  svc.spec.cpu = from.cpu;
  svc.spec.memory_bytes = from.memory_bytes;
  svc.spec.gpu = from.gpu;
  std::string also;
  if (target->model) {
    auto model = store_.get("Model", target->model->metadata.name);
    const api::Model* now = model ? std::get_if<api::Model>(&*model) : nullptr;
    if (!now || !(now->spec == target->model->spec)) {
      api::Model restored = *target->model;
      if (now) restored.metadata = now->metadata;
      LS_RETURN_IF_ERROR(store_.apply(restored));
      also = fmt::format("; Model {} restored to its spec then (source {})", restored.metadata.name,
                         restored.spec.source);
    }
  }
  LS_RETURN_IF_ERROR(store_.apply(svc));
  return fmt::format("service {} rolling back to revision {} ({}){}", service, target->number,
                     target->hash, also);
}

std::vector<store::Event> Controller::events(const std::string& service) const {
  std::lock_guard lock(mu_);
  return events_.of(service);
}

Result<std::string> Controller::control_canary(const std::string& service,
                                               const std::string& action) {
  std::string done;
  {
    std::lock_guard lock(mu_);
    if (!services_.count(service))
      return make_error(ErrorCode::kNotFound, "InferenceService '{}' does not exist", service);
    LS_ASSIGN_OR_RETURN(done, rollouts_.control(service, action, clock_.now()));
    dirty_ = true;
  }
  wake_.notify_all();
  return done;
}

std::vector<scheduler::QueueStatus> Controller::queues() const {
  std::lock_guard lock(mu_);
  return placement_.queues();
}

std::vector<NodeStatus> Controller::nodes() const {
  std::lock_guard lock(mu_);
  return placement_.nodes();
}

std::vector<UsageRow> Controller::usage(int64_t from_s, int64_t to_s) const {
  std::lock_guard lock(mu_);
  return usage_.rows(from_s, to_s);
}

std::vector<TenantStatus> Controller::tenants(int64_t from_s) const {
  std::lock_guard lock(mu_);
  std::map<std::string, TenantStatus> out;
  for (const api::Tenant& t : tenant_specs_) {
    TenantStatus& s = out[t.metadata.name];
    s.name = t.metadata.name;
    s.declared = true;
    s.requests_per_minute = t.spec.requests_per_minute;
    s.tokens_per_minute = t.spec.tokens_per_minute;
    s.max_concurrent_requests = t.spec.max_concurrent_requests;
    s.priority = t.spec.priority;
  }
  for (const auto& [name, usage] : usage_.by_tenant(from_s, INT64_MAX)) {
    out[name].name = name;
    out[name].usage = usage;
  }
  for (const auto& [name, seconds] : placement_.tenant_gpu_seconds()) {
    out[name].name = name;
    out[name].gpu_seconds = seconds;
  }
  std::vector<TenantStatus> list;
  for (auto& [name, s] : out) list.push_back(std::move(s));
  return list;
}

std::string Controller::scheduler_metrics() const {
  std::lock_guard lock(metrics_mu_);
  return metrics_text_;
}

}  // namespace loadstar::controller
