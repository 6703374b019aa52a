#include "controller/placement.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api/disaggregation.h"

namespace loadstar::controller {

void Placement::adopt(const std::string& replica, std::vector<Placed> pods) {
  Replica& r = replicas_[replica];
  r.submitted = false;
  // Where it runs already; the scheduler is told at the next pass.
  r.members = pods;
  r.placed = pods.empty() ? std::nullopt : std::optional<Placed>(pods.front());
  r.adopted = std::move(pods);
}

std::optional<std::vector<DeviceShare>> shares_on(std::vector<DeviceShare> shares,
                                                  std::vector<int> cards) {
  if (cards.empty() || shares.size() != cards.size()) return std::nullopt;
  for (const DeviceShare& s : shares)
    if (s.mig_slices > 0) return std::nullopt;
  std::sort(shares.begin(), shares.end(),
            [](const DeviceShare& a, const DeviceShare& b) { return a.device < b.device; });
  std::sort(cards.begin(), cards.end());
  bool same = true;
  for (size_t i = 0; i < shares.size(); ++i) {
    same &= shares[i].device == cards[i];
    shares[i].device = cards[i];
  }
  if (same) return std::nullopt;
  return shares;
}

std::vector<std::string> Placement::follow_devices(
    const std::map<std::string, std::vector<int>>& cards, double t) {
  struct Move {
    std::string replica;
    scheduler::Workload workload;
    scheduler::Allocation before, after;
  };
  std::vector<Move> moves;
  for (const auto& [name, given] : cards) {
    auto it = replicas_.find(name);
    const scheduler::WorkloadStatus* st = scheduler_ ? scheduler_->status(name) : nullptr;
    const scheduler::Workload* w = scheduler_ ? scheduler_->workload(name) : nullptr;
    if (it == replicas_.end() || !it->second.placed || !st || !w ||
        st->state != scheduler::WorkloadState::kRunning || st->allocations.size() != 1)
      continue;
    const scheduler::Allocation& before = st->allocations.front();
    std::vector<DeviceShare> shares;
    for (const auto& s : before.shares) shares.push_back({s.device, s.milli, s.mig_slices});
    auto moved = shares_on(std::move(shares), given);
    if (!moved) continue;
    const size_t devices = cluster_.nodes()[before.node].devices.size();
    scheduler::Allocation after = before;
    after.shares.clear();
    bool exists = true;
    for (const DeviceShare& d : *moved) {
      exists &= d.device >= 0 && static_cast<size_t>(d.device) < devices;
      after.shares.push_back({d.device, d.milli, d.mig_slices});
    }
    if (exists) moves.push_back({name, *w, before, std::move(after)});
  }
  if (moves.empty()) return {};
  for (const Move& m : moves) scheduler_->remove(m.replica, t);
  size_t adopted = 0;
  while (adopted < moves.size() &&
         scheduler_->adopt(moves[adopted].workload, {moves[adopted].after}, t).ok())
    ++adopted;
  if (adopted < moves.size()) {
    // A card is still booked to a replica not reported yet: as it was.
    for (size_t i = 0; i < adopted; ++i) scheduler_->remove(moves[i].replica, t);
    for (const Move& m : moves) (void)scheduler_->adopt(m.workload, {m.before}, t);
    return {};
  }
  std::vector<std::string> out;
  for (const Move& m : moves) {
    set_placed(replicas_[m.replica], {m.after});
    out.push_back(m.replica);
  }
  device_moves_ += out.size();
  return out;
}

Placed Placement::placed_from(const scheduler::Allocation& a) const {
  Placed out;
  out.node = cluster_.nodes()[a.node].name;
  for (const auto& share : a.shares) {
    out.shares.push_back({share.device, share.milli, share.mig_slices});
    out.devices += fmt::format("{}gpu{}", out.devices.empty() ? "" : ",", share.device);
    if (share.mig_slices) {
      out.devices += fmt::format(":{}g", share.mig_slices);
    } else if (share.milli < scheduler::kMilliPerGpu) {
      out.devices += fmt::format(":{}m", share.milli);
    }
  }
  return out;
}

scheduler::PodRequest Placement::pod_of(double cpu, uint64_t memory_bytes,
                                        const api::GpuRequirements& g) {
  scheduler::PodRequest pod;
  pod.cpu_milli = static_cast<uint64_t>(cpu * 1000);
  pod.memory_mib = memory_bytes >> 20;
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
  return pod;
}

scheduler::Workload Placement::workload_of(const std::string& replica,
                                           const api::InferenceService& svc) {
  scheduler::PodRequest pod = pod_of(svc.spec.cpu, svc.spec.memory_bytes, svc.spec.gpu);
  pod.model = svc.spec.model;
  // A disaggregated service's two pools are one group: each replica prefers
  // nodes near the other pool's (their KV crosses between them).
  if (svc.spec.prefill) pod.group = api::served_name(svc);
  scheduler::Workload w;
  w.name = replica;
  w.queue = svc.spec.queue;
  auto tenant = svc.metadata.labels.find("loadstar.dev/tenant");
  w.tenant = tenant != svc.metadata.labels.end() ? tenant->second : svc.spec.queue;
  w.priority = svc.spec.priority;
  w.preemptible = svc.spec.preemptible;
  w.pods = {pod};
  // A multi-node replica: its pods, all or none, in one topology domain.
  if (svc.spec.multi_node) {
    w.pods.assign(svc.spec.multi_node->size, pod);
    w.topology_level = svc.spec.multi_node->topology;
    w.topology_required = true;
  }
  return w;
}

scheduler::Workload Placement::workload_of(const std::string& name, const api::Job& job) {
  const api::JobSpec& spec = job.spec;
  scheduler::Workload w;
  w.name = name;
  w.queue = spec.queue;
  auto tenant = job.metadata.labels.find("loadstar.dev/tenant");
  w.tenant = tenant != job.metadata.labels.end() ? tenant->second : spec.queue;
  w.priority = spec.priority;
  w.preemptible = spec.preemptible;
  w.pods.assign(spec.workers, pod_of(spec.cpu, spec.memory_bytes, spec.gpu));
  if (spec.topology) {
    w.topology_level = spec.topology->level;
    w.topology_required = spec.topology->required;
  }
  return w;
}

std::optional<scheduler::Workload> Placement::workload_of(const PlacementPass& pass,
                                                          const PlacementReplica& r) {
  if (r.job) return workload_of(r.name, *r.job);
  auto svc = pass.services->find(r.service);
  if (svc == pass.services->end()) return std::nullopt;
  return workload_of(r.name, svc->second);
}

void Placement::set_placed(Replica& r, const std::vector<scheduler::Allocation>& allocations) {
  r.members.clear();
  for (const auto& a : allocations) r.members.push_back(placed_from(a));
  if (r.members.empty())
    r.placed.reset();
  else
    r.placed = r.members.front();
}

const std::vector<Placed>& Placement::members(const std::string& name) const {
  static const std::vector<Placed> none;
  auto it = replicas_.find(name);
  return it != replicas_.end() ? it->second.members : none;
}

void Placement::vacated(const std::string& job, double t) {
  auto it = vacating_.find(job);
  if (it == vacating_.end()) return;
  const Vacating& v = it->second;
  if (scheduler_)
    scheduler_->add_gpu_seconds(v.queue, v.tenant, v.gpus * std::max(0.0, t - v.since));
  vacating_.erase(it);
}

std::string Placement::blocker(const std::string& name) const {
  for (const Placed& mine : members(name))
    for (const auto& [job, held] : vacating_) {
      if (job == name) continue;
      for (const Placed& theirs : held.members) {
        if (theirs.node != mine.node) continue;
        for (const DeviceShare& a : mine.shares)
          for (const DeviceShare& b : theirs.shares)
            if (a.device == b.device) return job;
      }
    }
  return "";
}

std::vector<std::pair<std::string, std::string>> Placement::sync_cluster(const PlacementPass& pass,
                                                                         double t) {
  std::vector<std::pair<std::string, std::string>> displaced;
  if (scheduler_ && synced_nodes_ == *pass.nodes) return displaced;
  synced_nodes_ = *pass.nodes;
  // Where each placed replica is, by node name, to keep it there.
  struct Kept {
    std::vector<std::string> nodes;
    std::vector<scheduler::Allocation> allocations;
  };
  std::map<std::string, Kept> kept;
  scheduler::Scheduler::Accounting accounting;
  if (scheduler_) {
    accounting = scheduler_->accounting();
    for (const PlacementReplica& r : pass.replicas) {
      const scheduler::WorkloadStatus* st = scheduler_->status(r.name);
      if (!st || st->state != scheduler::WorkloadState::kRunning) continue;
      Kept& k = kept[r.name];
      k.allocations = st->allocations;
      for (const auto& a : st->allocations) k.nodes.push_back(cluster_.nodes()[a.node].name);
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
  if (pass.nodes->empty()) {
    // Nothing declared: this machine, without GPUs.
    add("local", std::thread::hardware_concurrency(),
        static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE), nullptr);
  }
  for (const auto& n : *pass.nodes) add(n.metadata.name, n.spec.cpu, n.spec.memory_bytes, &n.spec);
  auto policy = scheduler::PlacementPolicy::parse(policy_);
  if (!policy.ok()) policy = scheduler::PlacementPolicy::named("loadstar");
  scheduler_ = std::make_unique<scheduler::Scheduler>(cluster_, *policy, nullptr);
  synced_queues_.reset();
  synced_target_.reset();
  spdlog::info("scheduler: {} nodes, {:.0f} GPUs, policy {}", cluster_.nodes().size(),
               cluster_.gpu_milli_total() / 1000.0, policy->name);
  sync_queues(*pass.queues);
  scheduler_->restore_accounting(accounting);
  // Replicas stay where they run when their node and devices still exist;
  // the others are placed again (a running engine is stopped first).
  for (const PlacementReplica& pr : pass.replicas) {
    Replica& r = replicas_[pr.name];
    r.submitted = false;
    auto it = kept.find(pr.name);
    auto workload = workload_of(pass, pr);
    bool stays = it != kept.end() && workload;
    std::vector<scheduler::Allocation> allocations;
    for (size_t i = 0; stays && i < it->second.allocations.size(); ++i) {
      scheduler::Allocation a = it->second.allocations[i];
      a.node = cluster_.find_node(it->second.nodes[i]);
      stays = a.node >= 0;
      for (const auto& share : a.shares)
        stays = stays && share.device < static_cast<int>(cluster_.nodes()[a.node].devices.size());
      allocations.push_back(std::move(a));
    }
    stays = stays && scheduler_->adopt(std::move(*workload), std::move(allocations), t).ok();
    r.submitted = stays;
    if (stays || it == kept.end()) continue;
    r.placed.reset();
    r.members.clear();
    if (!pr.terminating && pr.engine_active) {
      spdlog::warn("replica {}: its node or devices changed; placing it again", pr.name);
      displaced.emplace_back(pr.name, "its node or devices changed; placing it again");
    }
  }
  return displaced;
}

void Placement::sync_queues(const std::vector<api::Queue>& queues) {
  if (synced_queues_ == queues) return;
  synced_queues_ = queues;
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

void Placement::sync_target(const std::map<std::string, api::InferenceService>& services) {
  // FGD's target workload: the declared services' replica shapes, weighted
  // by how many replicas each wants.
  if (synced_target_ == services) return;
  synced_target_ = services;
  std::vector<scheduler::TaskType> target;
  double total = 0;
  for (const auto& [name, svc] : services) total += std::max<uint32_t>(svc.spec.replicas, 1);
  for (const auto& [name, svc] : services) {
    auto w = workload_of("", svc);
    target.push_back({w.pods[0], std::max<uint32_t>(svc.spec.replicas, 1) / total});
  }
  scheduler_->set_target(std::make_shared<const scheduler::Fragmentation>(std::move(target)));
}

void Placement::sync_groups(const PlacementPass& pass) {
  // Where each group's replicas are: their nodes, and the NVLink domains
  // and racks of those nodes.
  std::map<std::string, std::set<std::string, std::less<>>> at;  // "node=N", "rack=R" -> groups
  for (const PlacementReplica& pr : pass.replicas) {
    auto svc = pass.services->find(pr.service);
    auto r = replicas_.find(pr.name);
    if (svc == pass.services->end() || !svc->second.spec.prefill || r == replicas_.end() ||
        !r->second.placed)
      continue;
    const std::string& group = api::served_name(svc->second);
    at["node=" + r->second.placed->node].insert(group);
    const int n = cluster_.find_node(r->second.placed->node);
    if (n < 0) continue;
    for (const auto& [level, domain] : cluster_.nodes()[n].topology)
      if (level == "nvlink" || level == "rack") at[level + "=" + domain].insert(group);
  }
  for (auto& node : cluster_.nodes()) {
    std::set<std::string, std::less<>> near;
    auto add = [&](const std::string& key) {
      if (auto it = at.find(key); it != at.end()) near.insert(it->second.begin(), it->second.end());
    };
    add("node=" + node.name);
    for (const auto& [level, domain] : node.topology)
      if (level == "nvlink" || level == "rack") add(level + "=" + domain);
    if (node.groups_near == near) continue;
    node.groups_near = std::move(near);
    ++node.generation;
  }
}

PlacementChanges Placement::pass(const PlacementPass& pass, double t) {
  PlacementChanges changes;
  changes.displaced = sync_cluster(pass, t);
  sync_queues(*pass.queues);
  // What the agents hold, as the runtime knows it: the locality scorer
  // prefers those nodes for replicas of those models.
  if (pass.models_on)
    for (auto& node : cluster_.nodes()) {
      std::set<std::string, std::less<>> cached = pass.models_on(node.name);
      if (node.cached_models == cached) continue;
      node.cached_models = std::move(cached);
      ++node.generation;
    }
  sync_groups(pass);
  sync_target(*pass.services);
  auto displace = [&](const std::string& name, std::string why) {
    changes.displaced.emplace_back(name, std::move(why));
  };
  for (const PlacementReplica& pr : pass.replicas) {
    Replica& r = replicas_[pr.name];
    // A replica scaled down before its engine started gives its place back
    // now, so this pass neither places it nor preempts anything for it.
    if (pr.terminating && !pr.launched) {
      scheduler_->remove(pr.name, t);
      r.submitted = false;
      r.placed.reset();
      r.members.clear();
      continue;
    }
    if (r.adopted && !pr.terminating) {
      // An engine (or a job's workers) that runs already keeps its nodes
      // and devices if they exist.
      auto workload = workload_of(pass, pr);
      if (!workload) continue;
      scheduler::Workload w = std::move(*workload);
      // Every pod where it runs (a multi-node replica's group whole), or
      // none: a group that lost a pod or changed size is placed anew.
      std::vector<scheduler::Allocation> allocations;
      bool kept = r.adopted->size() == w.pods.size();
      for (size_t i = 0; kept && i < w.pods.size(); ++i) {
        const Placed& pod = (*r.adopted)[i];
        scheduler::Allocation a;
        a.node = cluster_.find_node(pod.node);
        a.cpu_milli = w.pods[i].cpu_milli;
        a.memory_mib = w.pods[i].memory_mib;
        for (const DeviceShare& d : pod.shares)
          a.shares.push_back({d.device, d.milli, d.mig_slices});
        kept = a.node >= 0;
        allocations.push_back(std::move(a));
      }
      kept = kept && scheduler_->adopt(std::move(w), allocations, t).ok();
      r.adopted.reset();
      if (kept) {
        r.submitted = true;
        set_placed(r, allocations);
        continue;
      }
      spdlog::warn("replica {}: its node or devices are gone; placing it again", pr.name);
      displace(pr.name, "its node or devices are gone; placing it again");
      set_placed(r, {});
    }
    if (r.submitted || pr.terminating) continue;
    auto workload = workload_of(pass, pr);
    if (!workload) continue;
    scheduler_->remove(pr.name, t);
    if (auto s = scheduler_->submit(std::move(*workload), t); !s.ok()) {
      changes.waiting[pr.name] = s.error().message;
      continue;
    }
    r.submitted = true;
  }
  const scheduler::CycleReport report = scheduler_->schedule(t);
  std::set<std::string, std::less<>> jobs;
  for (const PlacementReplica& pr : pass.replicas)
    if (pr.job) jobs.insert(pr.name);
  for (const auto& name : report.preempted) {
    auto it = replicas_.find(name);
    if (it == replicas_.end()) continue;
    // A job's workers checkpoint before they end: its devices are held till then.
    if (jobs.count(name) && !it->second.members.empty()) {
      const scheduler::Workload* w = scheduler_->workload(name);
      Vacating& v = vacating_[name];
      v = {it->second.members, w ? w->queue : "", w ? w->tenant : "", t, 0};
      for (const Placed& p : v.members)
        for (const DeviceShare& d : p.shares) v.gpus += d.milli / double(scheduler::kMilliPerGpu);
    }
    const std::string why = scheduler_->status(name)->reason;
    spdlog::warn("replica {}: {}", name, why);
    displace(name, why);
  }
  for (const PlacementReplica& pr : pass.replicas) {
    const scheduler::WorkloadStatus* st = scheduler_->status(pr.name);
    if (!st) continue;
    Replica& r = replicas_[pr.name];
    if (st->state == scheduler::WorkloadState::kRunning) {
      if (r.placed) continue;
      set_placed(r, st->allocations);
      changes.placed.push_back(pr.name);
      for (const Placed& p : r.members)
        spdlog::info("{} {}: placed on {} {}", pr.job ? "job" : "replica", pr.name, p.node,
                     p.devices.empty() ? "(no GPU)" : p.devices);
    } else {
      set_placed(r, {});
      changes.waiting[pr.name] = st->reason.empty() ? "waiting to be placed" : st->reason;
    }
  }
  return changes;
}

void Placement::remove(const std::string& replica, double t) {
  if (scheduler_) scheduler_->remove(replica, t);
  replicas_.erase(replica);
}

uint64_t Placement::gpu_milli_free(const std::string& node) const {
  const int n = cluster_.find_node(node);
  return n < 0 ? 0 : cluster_.nodes()[n].gpu_milli_free();
}

const Placed* Placement::where(const std::string& replica) const {
  auto it = replicas_.find(replica);
  return it != replicas_.end() && it->second.placed ? &*it->second.placed : nullptr;
}

std::vector<NodeStatus> Placement::nodes() const {
  std::vector<NodeStatus> out;
  std::map<std::string, size_t, std::less<>> index;
  for (const scheduler::Node& n : cluster_.nodes()) {
    NodeStatus node{.name = n.name,
                    .schedulable = n.schedulable,
                    .models = {n.cached_models.begin(), n.cached_models.end()},
                    .topology = n.topology};
    for (size_t d = 0; d < n.devices.size(); ++d) {
      const scheduler::Device& device = n.devices[d];
      node.devices.push_back({.index = static_cast<int>(d),
                              .model = device.model < cluster_.models().size()
                                           ? cluster_.models()[device.model]
                                           : std::string(),
                              .memory_mib = device.memory_mib,
                              .milli_used = device.milli_used,
                              .mig_slices = device.mig_slices,
                              .mig_used = device.mig_used});
    }
    index[n.name] = out.size();
    out.push_back(std::move(node));
  }
  auto book = [&](const std::string& name, const Placed& placed) {
    auto it = index.find(placed.node);
    if (it == index.end()) return;
    std::vector<DeviceStatus>& devices = out[it->second].devices;
    for (const DeviceShare& share : placed.shares)
      if (share.device >= 0 && static_cast<size_t>(share.device) < devices.size())
        devices[share.device].holders.push_back({name, share.milli, share.mig_slices});
  };
  for (const auto& [name, r] : replicas_) {
    const std::vector<Placed>& members = r.members;
    for (size_t m = 0; m < members.size(); ++m)
      book(members.size() > 1 ? fmt::format("{}/{}", name, m) : name, members[m]);
  }
  for (const auto& [name, v] : vacating_)
    for (size_t m = 0; m < v.members.size(); ++m)
      book(fmt::format("{}/{} (stopping)", name, m), v.members[m]);
  return out;
}

std::vector<scheduler::QueueStatus> Placement::queues() const {
  return scheduler_ ? scheduler_->queues() : std::vector<scheduler::QueueStatus>{};
}

void Placement::render(MetricsText& text) const {
  text.counter("loadstar_controller_device_moves_total",
               "Replicas whose device bookkeeping moved onto the cards their node's device "
               "plugin handed them")
      .add(static_cast<double>(device_moves_));
  if (!scheduler_) return;
  const auto queues = scheduler_->queues();
  auto& allocated = text.gauge("loadstar_scheduler_queue_allocated_gpus",
                               "GPUs allocated to the queue and its children");
  for (const auto& q : queues) allocated.add(q.allocated.gpu, {{"queue", q.name}});
  auto& deserved =
      text.gauge("loadstar_scheduler_queue_deserved_gpus", "The queue's deserved GPU quota");
  for (const auto& q : queues) deserved.add(q.deserved.gpu, {{"queue", q.name}});
  auto& fair =
      text.gauge("loadstar_scheduler_queue_fair_share_gpus", "The queue's fair share of GPUs now");
  for (const auto& q : queues) fair.add(q.fair_share.gpu, {{"queue", q.name}});
  auto& waiting = text.gauge("loadstar_scheduler_queue_pending_workloads",
                             "Workloads of the queue waiting to be placed");
  for (const auto& q : queues) waiting.add(q.waiting, {{"queue", q.name}});
  auto& queue_seconds =
      text.counter("loadstar_scheduler_queue_gpu_seconds_total",
                   "GPU-seconds allocated to the queue and its children (fractions count as such)");
  for (const auto& q : queues) queue_seconds.add(q.gpu_seconds, {{"queue", q.name}});
  auto& tenant_seconds =
      text.counter("loadstar_scheduler_tenant_gpu_seconds_total",
                   "GPU-seconds allocated to the tenant's workloads, for chargeback");
  for (const auto& [tenant, seconds] : scheduler_->tenant_gpu_seconds())
    tenant_seconds.add(seconds, {{"tenant", tenant}});
  text.counter("loadstar_scheduler_preemptions_total", "Workloads evicted by preemption or reclaim")
      .add(static_cast<double>(scheduler_->preemptions()));
  text.gauge("loadstar_scheduler_gpus", "GPUs on schedulable nodes")
      .add(cluster_.gpu_milli_total() / 1000.0);
  text.gauge("loadstar_scheduler_gpus_allocated", "GPUs allocated (fractions count as such)")
      .add(cluster_.gpu_milli_used() / 1000.0);
}

}  // namespace loadstar::controller
