#include "controller/batch_admission.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "controller/runtime.h"
#include "kube/objects.h"

namespace loadstar::controller {

using kube::json;

namespace {

bool condition_true(const json& job, std::string_view type) {
  const json status = job.value("status", json::object());
  for (const json& c : status.value("conditions", json::array()))
    if (c.value("type", "") == type && c.value("status", "") == "True") return true;
  return false;
}

// The sum over a pod template's containers of `resource` in `section`
// (limits, requests); nullopt: one does not parse.
std::optional<double> container_sum(const json& pod_spec, const std::string& section,
                                    const std::string& resource) {
  double total = 0;
  for (const json& c : pod_spec.value("containers", json::array())) {
    const json amounts = c.value("resources", json::object()).value(section, json::object());
    if (!amounts.contains(resource)) continue;
    const json& v = amounts[resource];
    auto q = v.is_number() ? std::optional<double>(v.get<double>())
                           : kube::parse_quantity(v.is_string() ? v.get<std::string>() : "");
    if (!q) return std::nullopt;
    total += *q;
  }
  return total;
}

}  // namespace

Result<api::Job> admitted_workload(const json& job, const std::string& name, bool admitted) {
  const json meta = job.value("metadata", json::object());
  const json labels = meta.value("labels", json::object());
  const json spec = job.value("spec", json::object());
  const json pod_spec = spec.value("template", json::object()).value("spec", json::object());
  api::Job w;
  w.metadata.name = name;
  for (const auto& [k, v] : labels.items())
    if (v.is_string()) w.metadata.labels[k] = v.get<std::string>();
  w.spec.queue = labels.value(kQueueLabel, "");
  if (w.spec.queue.empty())
    return make_error(ErrorCode::kInvalidArgument, "metadata.labels.{}: empty", kQueueLabel);
  if (auto p = labels.find(kPriorityLabel); p != labels.end()) {
    const std::string text = p->is_string() ? p->get<std::string>() : "";
    char* end = nullptr;
    const long value = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || value < -1000000 || value > 1000000)
      return make_error(ErrorCode::kInvalidArgument, "metadata.labels.{}: '{}' is not an integer",
                        kPriorityLabel, text);
    w.spec.priority = static_cast<int32_t>(value);
  }
  const bool suspended = spec.value("suspend", false);
  if (!admitted && !suspended && pod_spec.value("schedulerName", "") != "loadstar")
    return make_error(ErrorCode::kInvalidArgument,
                      "not held: set spec.template.spec.schedulerName: loadstar (or create the "
                      "Job with spec.suspend: true, Kubernetes 1.21 and later), or its pods run "
                      "wherever another scheduler puts them");
  const int64_t parallelism = spec.value("parallelism", int64_t{1});
  if (parallelism < 1 || parallelism > 4096)
    return make_error(ErrorCode::kInvalidArgument, "spec.parallelism: {} (1 to 4096 pods)",
                      parallelism);
  w.spec.workers = static_cast<uint32_t>(parallelism);
  auto gpus = container_sum(pod_spec, "limits", "nvidia.com/gpu");
  auto cpu = container_sum(pod_spec, "requests", "cpu");
  auto memory = container_sum(pod_spec, "requests", "memory");
  if (!gpus || !cpu || !memory)
    return make_error(ErrorCode::kInvalidArgument,
                      "spec.template.spec.containers[].resources: a quantity that does not parse");
  if (*gpus != std::floor(*gpus))
    return make_error(ErrorCode::kInvalidArgument, "nvidia.com/gpu: {} is not a whole number",
                      *gpus);
  w.spec.gpu.count = static_cast<uint32_t>(*gpus);
  w.spec.cpu = *cpu;
  w.spec.memory_bytes = static_cast<uint64_t>(*memory);
  // Its pods are the Job controller's: Loadstar holds and releases them,
  // never stops them.
  w.spec.preemptible = false;
  return w;
}

std::optional<std::vector<Placed>> recorded_placement(const json& job) {
  const json meta = job.value("metadata", json::object());
  const json annotations = meta.value("annotations", json::object());
  const json spec = job.value("spec", json::object());
  if (spec.value("suspend", false) || !annotations.contains(kPlacementAnnotation) ||
      !annotations[kPlacementAnnotation].is_string())
    return std::nullopt;
  const json recorded =
      json::parse(annotations[kPlacementAnnotation].get<std::string>(), nullptr, false);
  if (!recorded.is_array()) return std::nullopt;
  std::vector<Placed> pods;
  for (const json& p : recorded) {
    if (!p.is_object() || !p.contains("node") || !p["node"].is_string() ||
        p["node"].get<std::string>().empty())
      return std::nullopt;
    const json shares = p.value("shares", json("[]"));
    pods.push_back({p["node"].get<std::string>(), "",
                    shares_from_json(shares.is_string() ? shares.get<std::string>() : "")});
  }
  const json parallelism = spec.value("parallelism", json(1));
  if (!parallelism.is_number_integer() || pods.size() != parallelism.get<uint64_t>())
    return std::nullopt;
  return pods;
}

BatchAdmission::BatchAdmission(const kube::Client& client, const kube::NamespaceScope& scope)
    : client_(client),
      scope_(scope),
      jobs_(
          std::make_unique<kube::ScopedInformer>(client_, scope_, "batch/v1", "jobs", kQueueLabel)),
      // The Job controller labels its pods job-name (1.20 and later).
      pods_(std::make_unique<kube::ScopedInformer>(client_, scope_, "v1", "pods", "job-name")) {}

BatchAdmission::~BatchAdmission() {
  jobs_->stop();
  pods_->stop();
}

Status BatchAdmission::start(double timeout_s) {
  jobs_->start(nullptr);
  pods_->start(nullptr);
  if (!jobs_->wait_synced(timeout_s) || !pods_->wait_synced(timeout_s))
    return make_error(ErrorCode::kUnavailable, "cannot list batch/v1 jobs and their pods in {}",
                      scope_.describe());
  return ok_status();
}

std::vector<PlacementReplica> BatchAdmission::placement_units(Placement& placement) {
  units_.clear();
  for (const json& job : jobs_->items()) {
    const json meta = job.value("metadata", json::object());
    if (meta.contains("deletionTimestamp")) continue;
    if (condition_true(job, "Complete") || condition_true(job, "Failed")) continue;
    Unit u;
    u.namespace_name = meta.value("namespace", "");
    u.job_name = meta.value("name", "");
    u.uid = meta.value("uid", "");
    const std::string name = "job.batch/" + scope_.qualify(u.namespace_name, u.job_name);
    // Running where a previous controller placed it (this controller's
    // first pass: a Job that comes later with the annotation was not
    // admitted by it, only copied): that place is held, and the Job is
    // admitted, un-suspended or not.
    std::optional<std::vector<Placed>> taken_over;
    if (first_pass_) taken_over = recorded_placement(job);
    // Once admitted it stays so while it runs (un-suspended, it is no
    // longer held, and need not be).
    auto workload = admitted_workload(job, name, placed_.count(name) > 0 || taken_over);
    if (!workload.ok()) {
      say(name, u.namespace_name, u.job_name, "NotAdmitted: " + workload.error().message);
      continue;
    }
    u.workload = std::move(*workload);
    u.suspended = job.value("spec", json::object()).value("suspend", false);
    if (taken_over) {
      placement.adopt(name, std::move(*taken_over));
      placed_.insert(name);
      unsuspended_.insert(name);
      said_[name] =
          meta.value("annotations", json::object()).value(kAdmissionAnnotation, std::string());
      spdlog::info("{}: running where it was admitted; taken over", name);
    }
    submitted_.insert(name);
    units_.emplace(name, std::move(u));
  }
  first_pass_ = false;
  // Completed, failed, deleted or no longer admitted: its place goes back.
  for (auto it = submitted_.begin(); it != submitted_.end();) {
    if (units_.count(*it)) {
      ++it;
      continue;
    }
    placement.remove(*it, 0);
    if (placed_.erase(*it)) spdlog::info("{}: ended; its place is given back", *it);
    unsuspended_.erase(*it);
    it = submitted_.erase(it);
  }
  std::vector<PlacementReplica> out;
  for (const auto& [name, u] : units_)
    out.push_back({name, "", &u.workload, false, placed_.count(name) > 0, placed_.count(name) > 0});
  return out;
}

void BatchAdmission::say(const std::string& name, const std::string& namespace_name,
                         const std::string& job_name, const std::string& what) {
  std::string& said = said_[name];
  if (said == what) return;
  const json patch = {{"metadata", {{"annotations", {{kAdmissionAnnotation, what}}}}}};
  auto r = client_.merge_patch(
      kube::collection_path("batch/v1", namespace_name, "jobs") + "/" + job_name, patch);
  if (!r.ok()) {
    if (r.error().code != ErrorCode::kNotFound)
      spdlog::warn("job.batch {}: writing its admission: {}", job_name, r.error().message);
    return;
  }
  said = what;
  spdlog::info("{}: {}", name, what);
}

void BatchAdmission::waiting(const std::string& name, const std::string& why) {
  auto it = units_.find(name);
  if (it != units_.end())
    say(name, it->second.namespace_name, it->second.job_name, "Waiting: " + why);
}

void BatchAdmission::bind(const Unit& unit, const std::vector<Placed>& members) {
  // Room per node: the gang's slots there, less the job's pods that run there.
  std::map<std::string, int> room;
  for (const Placed& p : members) ++room[p.node];
  std::vector<json> unbound;
  for (const json& pod : pods_->items()) {
    const kube::Pod p = kube::pod_from_json(pod);
    if (p.namespace_name != unit.namespace_name || p.deleting) continue;
    bool ours = false;
    for (const json& owner :
         pod.value("metadata", json::object()).value("ownerReferences", json::array()))
      ours |= owner.value("uid", "") == unit.uid;
    if (!ours || p.phase == "Succeeded" || p.phase == "Failed") continue;
    if (!p.node_name.empty())
      --room[p.node_name];
    else if (pod.value("spec", json::object()).value("schedulerName", "") == "loadstar")
      unbound.push_back(pod);
  }
  for (const json& pod : unbound) {
    auto slot = std::find_if(room.begin(), room.end(), [](const auto& r) { return r.second > 0; });
    if (slot == room.end()) return;  // the gang's pods all run; a new one waits for one to end
    const std::string pod_name = pod["metadata"].value("name", "");
    const json binding = {
        {"apiVersion", "v1"},
        {"kind", "Binding"},
        {"metadata", {{"name", pod_name}, {"namespace", unit.namespace_name}}},
        {"target", {{"apiVersion", "v1"}, {"kind", "Node"}, {"name", slot->first}}}};
    auto r = client_.create(
        kube::collection_path("v1", unit.namespace_name, "pods") + "/" + pod_name + "/binding",
        binding);
    if (!r.ok() && r.error().code != ErrorCode::kConflict) {
      spdlog::warn("job.batch {}: binding pod {} to {}: {}", unit.job_name, pod_name, slot->first,
                   r.error().message);
      continue;
    }
    --slot->second;
    spdlog::info("job.batch {}: pod {} bound to {}", unit.job_name, pod_name, slot->first);
  }
}

void BatchAdmission::release(Placement& placement, double /*now*/) {
  for (const auto& [name, u] : units_) {
    const std::vector<Placed>& members = placement.members(name);
    if (members.empty()) continue;
    const std::string job_path =
        kube::collection_path("batch/v1", u.namespace_name, "jobs") + "/" + u.job_name;
    if (placed_.insert(name).second) {
      // Where it was placed, for a controller that takes over.
      json recorded = json::array();
      for (const Placed& p : members)
        recorded.push_back({{"node", p.node}, {"shares", shares_to_json(p.shares)}});
      auto r = client_.merge_patch(
          job_path, {{"metadata", {{"annotations", {{kPlacementAnnotation, recorded.dump()}}}}}});
      if (!r.ok() && r.error().code != ErrorCode::kNotFound)
        spdlog::warn("job.batch {}: recording its placement: {}", u.job_name, r.error().message);
    }
    std::vector<std::string> nodes;
    for (const Placed& p : members) nodes.push_back(p.node);
    say(name, u.namespace_name, u.job_name,
        fmt::format("Admitted: queue {}, nodes {}", u.workload.spec.queue, fmt::join(nodes, ",")));
    if (u.suspended && unsuspended_.insert(name).second) {
      // Kueue's way: its pods steered to the gang's nodes, then released.
      const std::set<std::string> hosts(nodes.begin(), nodes.end());
      json term = {{"matchExpressions",
                    {{{"key", "kubernetes.io/hostname"},
                      {"operator", "In"},
                      {"values", std::vector<std::string>(hosts.begin(), hosts.end())}}}}};
      json affinity = {{"nodeAffinity",
                        {{"requiredDuringSchedulingIgnoredDuringExecution",
                          {{"nodeSelectorTerms", json::array({term})}}}}}};
      json patch = {{"spec", {{"suspend", false}}}};
      patch["spec"]["template"]["spec"]["affinity"] = std::move(affinity);
      auto r = client_.merge_patch(job_path, patch);
      if (!r.ok() && r.error().code != ErrorCode::kNotFound) {
        // An API server that keeps a suspended Job's template as it is
        // (before 1.27): released without the steer.
        spdlog::warn("job.batch {}: steering its pods to {}: {}; un-suspending it without",
                     u.job_name, fmt::join(hosts, ","), r.error().message);
        r = client_.merge_patch(job_path, {{"spec", {{"suspend", false}}}});
        if (!r.ok() && r.error().code != ErrorCode::kNotFound)
          spdlog::warn("job.batch {}: un-suspending it: {}", u.job_name, r.error().message);
      }
    }
    bind(u, members);
  }
}

}  // namespace loadstar::controller
