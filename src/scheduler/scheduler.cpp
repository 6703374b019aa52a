#include "scheduler/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include <fmt/format.h>

#include "common/check.h"

namespace loadstar::scheduler {

namespace {
constexpr double kEps = 1e-9;
}

Resources resources_of(const PodRequest& pod) {
  return {pod.gpu_milli_request() / 1000.0, pod.cpu_milli / 1000.0, pod.memory_mib / 1024.0};
}

namespace {

// The least GPU capacity `pod` can be charged once placed: a MIG slice is at
// least 1/8 of a card, a memory share at least one milli.
Resources minimum_of(const PodRequest& pod) {
  Resources r = resources_of(pod);
  if (pod.mig_slices > 0) r.gpu = pod.mig_slices / 8.0;
  if (pod.gpu_memory_mib > 0) r.gpu = 0.001;
  return r;
}

Resources used_by(const std::vector<Allocation>& allocations) {
  Resources used;
  for (const auto& a : allocations) used += resources_of(a);
  return used;
}

// Everything about a workload that decides whether it can be placed or can
// preempt: its queue, priority and pod (not its name). Names are length-
// prefixed, so no two different requests share a key.
std::string attempt_key(const Workload& w) {
  const PodRequest& p = w.pods.front();
  return fmt::format("{}:{},{},{},{},{},{},{},{},{},{}:{},{}:{},{}", w.queue.size(), w.queue,
                     w.priority, p.cpu_milli, p.memory_mib, p.gpu_count, p.gpu_milli,
                     p.gpu_memory_mib, p.mig_slices, p.mig_memory_mib, p.model.size(), p.model,
                     p.group.size(), p.group, fmt::join(p.allowed_models, "|"));
}

}  // namespace

Resources resources_of(const Allocation& a) {
  return {a.gpu_milli() / 1000.0, a.cpu_milli / 1000.0, a.memory_mib / 1024.0};
}

Scheduler::Scheduler(Cluster& cluster, PlacementPolicy policy,
                     std::shared_ptr<const Fragmentation> fragmentation, uint64_t seed)
    : cluster_(cluster), placer_(cluster, std::move(policy), std::move(fragmentation), seed) {}

int Scheduler::queue_index(const std::string& name) const {
  for (size_t i = 0; i < queues_.size(); ++i)
    if (queues_[i].spec.name == name) return static_cast<int>(i);
  return -1;
}

Status Scheduler::set_queues(std::vector<QueueSpec> specs) {
  std::vector<QueueNode> nodes;
  std::set<std::string> names;
  for (auto& s : specs) {
    if (s.name.empty()) return make_error(ErrorCode::kInvalidArgument, "a queue has no name");
    if (!names.insert(s.name).second)
      return make_error(ErrorCode::kInvalidArgument, "queue '{}' is declared twice", s.name);
    if (!(s.over_quota_weight >= 0))
      return make_error(ErrorCode::kInvalidArgument, "queue '{}': overQuotaWeight must be >= 0",
                        s.name);
    QueueNode n;
    n.spec = std::move(s);
    nodes.push_back(std::move(n));
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    const std::string& parent = nodes[i].spec.parent;
    if (parent.empty()) continue;
    auto it = std::find_if(nodes.begin(), nodes.end(),
                           [&](const QueueNode& q) { return q.spec.name == parent; });
    if (it == nodes.end())
      return make_error(ErrorCode::kInvalidArgument, "queue '{}': parent '{}' does not exist",
                        nodes[i].spec.name, parent);
    nodes[i].parent = static_cast<int>(it - nodes.begin());
    it->children.push_back(static_cast<int>(i));
  }
  for (size_t i = 0; i < nodes.size(); ++i) {  // a chain longer than the tree is a loop
    int at = static_cast<int>(i);
    for (size_t hops = 0; at >= 0; ++hops, at = nodes[at].parent)
      if (hops > nodes.size())
        return make_error(ErrorCode::kInvalidArgument, "queue '{}': parents form a loop",
                          nodes[i].spec.name);
  }
  // GPU-seconds stay with the queue's name, across trees and removals.
  for (const auto& old : queues_) orphan_gpu_seconds_[old.spec.name] = old.gpu_seconds;
  for (auto& q : nodes) {
    auto it = orphan_gpu_seconds_.find(q.spec.name);
    q.gpu_seconds = it == orphan_gpu_seconds_.end() ? 0 : it->second;
    if (it != orphan_gpu_seconds_.end()) orphan_gpu_seconds_.erase(it);
  }
  queues_ = std::move(nodes);
  for (auto& [name, e] : entries_) {
    if (e.status.state != WorkloadState::kRunning) continue;
    Resources used;
    for (const auto& a : e.status.allocations) used += resources_of(a);
    charge(queue_index(e.workload.queue), used);
  }
  return {};
}

void Scheduler::charge(int queue, const Resources& delta) {
  for (int q = queue; q >= 0; q = queues_[q].parent) queues_[q].allocated += delta;
}

Status Scheduler::submit(Workload w, double now) {
  advance(now);
  if (w.name.empty()) return make_error(ErrorCode::kInvalidArgument, "a workload has no name");
  if (entries_.count(w.name))
    return make_error(ErrorCode::kInvalidArgument, "workload '{}' exists", w.name);
  if (w.pods.empty())
    return make_error(ErrorCode::kInvalidArgument, "workload '{}' has no pods", w.name);
  if (w.min_members > w.pods.size())
    return make_error(ErrorCode::kInvalidArgument,
                      "workload '{}': minMembers {} is more than its {} pods", w.name,
                      w.min_members, w.pods.size());
  if (!w.topology_level.empty() && std::find(std::begin(kTopologyLevels), std::end(kTopologyLevels),
                                             w.topology_level) == std::end(kTopologyLevels))
    return make_error(ErrorCode::kInvalidArgument,
                      "workload '{}': topology level '{}' is not one of nvlink, rack, spine, zone",
                      w.name, w.topology_level);
  if (w.tenant.empty()) w.tenant = w.queue;
  Entry e;
  e.request = {};
  for (const auto& p : w.pods) {
    e.request += resources_of(p);
    e.minimum += minimum_of(p);
  }
  e.workload = std::move(w);
  e.status.submitted_at = now;
  e.sequence = next_sequence_++;
  const std::string name = e.workload.name;
  entries_.emplace(name, std::move(e));
  return {};
}

Status Scheduler::adopt(Workload w, std::vector<Allocation> allocations, double now) {
  const std::string name = w.name;
  // A pod that asks for GPUs runs on some: an allocation that names none
  // (not recorded) would let them be handed out twice.
  for (size_t i = 0; i < allocations.size() && i < w.pods.size(); ++i)
    if (w.pods[i].wants_gpu() && allocations[i].shares.empty())
      return make_error(ErrorCode::kInvalidArgument,
                        "workload '{}': pod {} asks for GPUs and its allocation names none", name,
                        i);
  LS_RETURN_IF_ERROR(submit(std::move(w), now));
  Entry& e = entries_.at(name);
  for (size_t i = 0; i < allocations.size(); ++i) {
    if (!cluster_.restore(allocations[i])) {
      for (size_t j = 0; j < i; ++j) cluster_.release(allocations[j]);
      entries_.erase(name);
      return make_error(
          ErrorCode::kResourceExhausted, "workload '{}': its devices on node '{}' are not free",
          name,
          allocations[i].placed() && allocations[i].node < static_cast<int>(cluster_.nodes().size())
              ? cluster_.nodes()[allocations[i].node].name
              : "?");
    }
  }
  start(e, std::move(allocations), now);
  return {};
}

Scheduler::Accounting Scheduler::accounting() const {
  Accounting a;
  a.queue_gpu_seconds = orphan_gpu_seconds_;
  for (const auto& q : queues_) a.queue_gpu_seconds[q.spec.name] = q.gpu_seconds;
  a.tenant_gpu_seconds = tenant_gpu_seconds_;
  a.preemptions = preemptions_;
  return a;
}

void Scheduler::restore_accounting(const Accounting& a) {
  orphan_gpu_seconds_.clear();
  for (const auto& [name, seconds] : a.queue_gpu_seconds) {
    if (int q = queue_index(name); q >= 0)
      queues_[q].gpu_seconds = seconds;
    else
      orphan_gpu_seconds_[name] = seconds;
  }
  tenant_gpu_seconds_ = a.tenant_gpu_seconds;
  preemptions_ = a.preemptions;
}

void Scheduler::remove(const std::string& name, double now) {
  advance(now);
  auto it = entries_.find(name);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  if (e.status.state == WorkloadState::kRunning) {
    Resources used;
    for (const auto& a : e.status.allocations) {
      cluster_.release(a);
      used += resources_of(a);
    }
    const int q = queue_index(e.workload.queue);
    if (q >= 0) charge(q, Resources{} - used);
  }
  entries_.erase(it);
}

void Scheduler::advance(double now) {
  if (!clock_started_) {
    clock_started_ = true;
    now_ = now;
    return;
  }
  const double dt = now - now_;
  if (dt <= 0) return;
  now_ = now;
  for (auto& [name, e] : entries_) {
    if (e.status.state != WorkloadState::kRunning) continue;
    uint64_t milli = 0;
    for (const auto& a : e.status.allocations) milli += a.gpu_milli();
    const double gpu_seconds = milli / 1000.0 * dt;
    tenant_gpu_seconds_[e.workload.tenant] += gpu_seconds;
    if (int q = queue_index(e.workload.queue); q >= 0) queues_[q].gpu_seconds += gpu_seconds;
  }
}

void Scheduler::add_gpu_seconds(const std::string& queue, const std::string& tenant,
                                double gpu_seconds) {
  tenant_gpu_seconds_[tenant] += gpu_seconds;
  if (int q = queue_index(queue); q >= 0)
    queues_[q].gpu_seconds += gpu_seconds;
  else
    orphan_gpu_seconds_[queue] += gpu_seconds;
}

void Scheduler::compute_fair_shares() {
  for (auto& q : queues_) q.demand = {};
  for (const auto& [name, e] : entries_) {
    Resources want = e.request;
    if (e.status.state == WorkloadState::kRunning) {
      want = {};
      for (const auto& a : e.status.allocations) want += resources_of(a);
    }
    for (int q = queue_index(e.workload.queue); q >= 0; q = queues_[q].parent)
      queues_[q].demand += want;
  }
  Resources capacity;
  for (const Node& n : cluster_.nodes())
    if (n.schedulable)
      capacity +=
          Resources{n.gpu_milli_total() / 1000.0, n.cpu_milli / 1000.0, n.memory_mib / 1024.0};
  std::vector<int> top;
  for (size_t i = 0; i < queues_.size(); ++i)
    if (queues_[i].parent < 0) top.push_back(static_cast<int>(i));
  // Water-filling per resource: deserved first (capped at demand), then what
  // is left by over-quota weight among queues that still want more.
  std::vector<std::pair<std::vector<int>, Resources>> levels = {{top, capacity}};
  while (!levels.empty()) {
    auto [siblings, cap] = levels.back();
    levels.pop_back();
    for (int r = 0; r < 3; ++r) {
      double given = 0;
      std::vector<double> ceiling(siblings.size());
      for (size_t i = 0; i < siblings.size(); ++i) {
        QueueNode& q = queues_[siblings[i]];
        ceiling[i] = q.demand[r];
        if (q.spec.limit) ceiling[i] = std::min(ceiling[i], (*q.spec.limit)[r]);
        q.fair_share[r] = std::min(q.spec.deserved[r], ceiling[i]);
        given += q.fair_share[r];
      }
      if (given > cap[r] + kEps && given > 0) {  // quotas oversubscribe the parent
        for (int s : siblings) queues_[s].fair_share[r] *= cap[r] / given;
        continue;
      }
      double left = cap[r] - given;
      for (int round = 0; round < 64 && left > kEps; ++round) {
        double weights = 0;
        for (size_t i = 0; i < siblings.size(); ++i) {
          const QueueNode& q = queues_[siblings[i]];
          if (q.fair_share[r] < ceiling[i] - kEps) weights += q.spec.over_quota_weight;
        }
        if (weights <= 0) break;
        double handed = 0;
        for (size_t i = 0; i < siblings.size(); ++i) {
          QueueNode& q = queues_[siblings[i]];
          if (q.fair_share[r] >= ceiling[i] - kEps) continue;
          const double add =
              std::min(left * q.spec.over_quota_weight / weights, ceiling[i] - q.fair_share[r]);
          q.fair_share[r] += add;
          handed += add;
        }
        left -= handed;
        if (handed <= kEps) break;
      }
    }
    for (int s : siblings)
      if (!queues_[s].children.empty())
        levels.push_back({queues_[s].children, queues_[s].fair_share});
  }
}

double Scheduler::dominant_share(int queue) const {
  const QueueNode& q = queues_[queue];
  double share = 0;
  for (int r = 0; r < 3; ++r) {
    if (q.allocated[r] <= kEps) continue;
    share = std::max(share, q.fair_share[r] > kEps ? q.allocated[r] / q.fair_share[r]
                                                   : std::numeric_limits<double>::infinity());
  }
  return share;
}

std::string Scheduler::over_limit(int queue, const Resources& request) const {
  for (int q = queue; q >= 0; q = queues_[q].parent) {
    const QueueNode& n = queues_[q];
    if (!n.spec.limit) continue;
    const Resources after = n.allocated + request;
    std::vector<std::string> over;
    const char* units[] = {"GPUs", "cores", "GiB of memory"};
    for (int r = 0; r < 3; ++r)
      if (after[r] > (*n.spec.limit)[r] + kEps)
        over.push_back(
            fmt::format("{:g} {} ({:g} in use)", (*n.spec.limit)[r], units[r], n.allocated[r]));
    if (!over.empty())
      return fmt::format("queue '{}' would exceed its limit of {}", n.spec.name,
                         fmt::join(over, ", "));
  }
  return {};
}

bool Scheduler::within_deserved(int queue, const Resources& request) const {
  // GPUs always count; CPU and memory only where the queue deserves some (a
  // quota that names only GPUs does not make every pod with a CPU request
  // "borrowing").
  const QueueNode& q = queues_[queue];
  const Resources after = q.allocated + request;
  for (int r = 0; r < 3; ++r)
    if ((r == 0 || q.spec.deserved[r] > 0) && after[r] > q.spec.deserved[r] + kEps) return false;
  return true;
}

bool Scheduler::place_in(Entry& e, const std::vector<int>* candidates,
                         std::vector<Allocation>& out) {
  out.clear();
  const auto& pods = e.workload.pods;
  const size_t needed = e.workload.min_members ? e.workload.min_members : pods.size();
  for (const PodRequest& pod : pods) {
    Placer::Decision d = placer_.place(pod, candidates);
    if (d.node < 0) break;
    out.push_back(cluster_.allocate(d.node, pod, d.choice));
  }
  if (out.size() >= needed) return true;
  for (const auto& a : out) cluster_.release(a);
  out.clear();
  return false;
}

bool Scheduler::place(Entry& e, std::string& reason) {
  std::vector<Allocation> allocations;
  const Workload& w = e.workload;
  if (!w.topology_level.empty() && w.pods.size() > 1) {
    // Try each domain of the level; keep the one left tightest (packing).
    std::map<std::string, std::vector<int>> domains;
    for (size_t n = 0; n < cluster_.nodes().size(); ++n) {
      const auto& topo = cluster_.nodes()[n].topology;
      if (auto it = topo.find(w.topology_level); it != topo.end())
        domains[it->second].push_back(static_cast<int>(n));
    }
    const std::vector<int>* best = nullptr;
    double best_free = std::numeric_limits<double>::infinity();
    for (const auto& [domain, nodes] : domains) {
      if (!place_in(e, &nodes, allocations)) continue;
      double free = 0;
      for (int n : nodes) free += cluster_.nodes()[n].gpu_milli_free();
      for (const auto& a : allocations) cluster_.release(a);
      if (free < best_free) best_free = free, best = &nodes;
    }
    if (best && place_in(e, best, allocations)) {
      e.status.allocations = std::move(allocations);
      return true;
    }
    if (w.topology_required) {
      reason = fmt::format("no {} domain can hold {} of its {} pods together", w.topology_level,
                           w.min_members ? w.min_members : w.pods.size(), w.pods.size());
      return false;
    }
  }
  if (place_in(e, nullptr, allocations)) {
    e.status.allocations = std::move(allocations);
    return true;
  }
  // Say why, as kube-scheduler does: "0/N nodes are available: ...", for the
  // first pod that fits nowhere given the others placed before it.
  std::vector<Allocation> partial;
  const PodRequest* stuck = &w.pods.front();
  for (const PodRequest& pod : w.pods) {
    Placer::Decision d = placer_.place(pod);
    if (d.node < 0) {
      stuck = &pod;
      break;
    }
    partial.push_back(cluster_.allocate(d.node, pod, d.choice));
  }
  std::map<std::string_view, int> why;
  for (size_t n = 0; n < cluster_.nodes().size(); ++n) {
    std::string_view m = cluster_.misfit(static_cast<int>(n), *stuck);
    ++why[m.empty() ? std::string_view("taken by the gang's other pods") : m];
  }
  for (const auto& a : partial) cluster_.release(a);
  std::vector<std::string> parts;
  for (const auto& [m, count] : why) parts.push_back(fmt::format("{} {}", count, m));
  reason = fmt::format("{}fits on no node: 0/{} nodes are available: {}",
                       w.pods.size() > 1 ? fmt::format("gang of {}: ", w.pods.size()) : "",
                       cluster_.nodes().size(), fmt::join(parts, ", "));
  return false;
}

bool Scheduler::try_preemption(Entry& e, bool limited, std::vector<std::string>& preempted) {
  const int q = queue_index(e.workload.queue);
  // Reclaim: a queue below its fair share takes back capacity from queues
  // above theirs, never pushing a lender below its own fair share.
  // Within its deserved quota a queue's claim is guaranteed: it takes back
  // whatever others borrowed beyond their own deserved quota, even below
  // their fair share (a borrowing gang goes whole or not at all). Beyond
  // it, only within its fair share, and never pushing a lender below its own.
  const bool guaranteed = !limited && within_deserved(q, e.request);
  const bool in_quota =
      guaranteed || (!limited && (queues_[q].allocated + e.request).fits_in(queues_[q].fair_share));
  auto floor_of = [&](int vq) {
    return guaranteed ? queues_[vq].spec.deserved.gpu : queues_[vq].fair_share.gpu;
  };
  std::vector<Entry*> victims;
  for (Entry* v : preemptible_) {
    if (v == &e || v->status.state != WorkloadState::kRunning) continue;
    const int vq = v->queue;
    if (vq < 0) continue;
    if (vq == q) {
      if (v->workload.priority < e.workload.priority) victims.push_back(v);
    } else if (in_quota && queues_[vq].allocated.gpu > floor_of(vq) + kEps) {
      victims.push_back(v);  // reclaim what that queue borrowed
    }
  }
  if (victims.empty()) return false;
  // Lowest priority first; among equals, the most recently started.
  std::sort(victims.begin(), victims.end(), [](const Entry* a, const Entry* b) {
    if (a->workload.priority != b->workload.priority)
      return a->workload.priority < b->workload.priority;
    if (a->status.started_at != b->status.started_at)
      return a->status.started_at > b->status.started_at;
    return a->sequence > b->sequence;
  });
  std::vector<Entry*> taken;
  std::map<int, Resources> reclaimed;  // per victim queue, this round
  // Whether evicting `v` keeps its queue at or above its fair share (reclaim
  // never pushes a lender below it); counts it if so.
  auto may_take = [&](Entry* v) {
    const int vq = v->queue;
    Resources used;
    for (const auto& a : v->status.allocations) used += resources_of(a);
    if (vq != q && queues_[vq].allocated.gpu - reclaimed[vq].gpu - used.gpu < floor_of(vq) - kEps)
      return false;
    reclaimed[vq] += used;
    return true;
  };
  // Victims of e's own queue free room under its limit.
  Resources freed;
  auto limit_ok = [&](const Resources& charge) {
    return !limited || over_limit(q, charge - freed).empty();
  };
  auto note_freed = [&](Entry* v) {
    if (v->queue == q) freed += used_by(v->status.allocations);
  };
  std::string reason;
  bool placed = false;
  if (e.workload.pods.size() == 1) {
    // One pod: per node, as kube-scheduler does. On each node, victims in
    // order until the pod fits there; the node whose victims are least
    // important (highest priority taken, then how many) wins. Victims spread
    // over many nodes would free capacity the pod cannot use.
    const PodRequest& pod = e.workload.pods[0];
    std::vector<Entry*> best;
    int best_node = -1;
    std::pair<int32_t, size_t> best_cost{INT32_MAX, SIZE_MAX};
    std::vector<DeviceChoice> fits;
    // The candidates on each node, in victim order (a gang's on each of its
    // nodes); a node with none cannot make room.
    std::vector<std::vector<Entry*>> by_node(cluster_.nodes().size());
    for (Entry* v : victims)
      for (const auto& a : v->status.allocations)
        if (by_node[a.node].empty() || by_node[a.node].back() != v) by_node[a.node].push_back(v);
    for (size_t n = 0; n < cluster_.nodes().size(); ++n) {
      if (by_node[n].empty()) continue;
      if (cluster_.misfit(static_cast<int>(n), pod) == "GPU model not allowed") continue;
      std::vector<Entry*> on_node;
      reclaimed.clear();
      freed = {};
      bool fit = false;
      for (Entry* v : by_node[n]) {
        if (!may_take(v)) continue;
        for (const auto& a : v->status.allocations) cluster_.release(a);
        on_node.push_back(v);
        note_freed(v);
        cluster_.choices(static_cast<int>(n), pod, fits);
        if ((fit = !fits.empty() && limit_ok(e.minimum))) break;
      }
      for (Entry* v : on_node)
        for (const auto& a : v->status.allocations) LS_CHECK(cluster_.restore(a));
      if (!fit) continue;
      const std::pair<int32_t, size_t> cost{on_node.back()->workload.priority, on_node.size()};
      if (cost < best_cost) {
        best_cost = cost;
        best = std::move(on_node);
        best_node = static_cast<int>(n);
      }
    }
    if (!best.empty()) {
      for (Entry* v : best)
        for (const auto& a : v->status.allocations) cluster_.release(a);
      taken = std::move(best);
      freed = {};
      for (Entry* v : taken) note_freed(v);
      const std::vector<int> node = {best_node};
      std::vector<Allocation> allocations;
      placed = place_in(e, &node, allocations);
      LS_CHECK(placed);  // the plan found room there
      e.status.allocations = std::move(allocations);
    }
  } else {
    freed = {};
    for (Entry* v : victims) {
      if (!may_take(v)) continue;
      for (const auto& a : v->status.allocations) cluster_.release(a);
      taken.push_back(v);
      note_freed(v);
      if (limit_ok(e.minimum) && place(e, reason)) {
        placed = true;
        break;
      }
    }
  }
  // What it was really charged (a memory share lands as some milli of a
  // card) must fit under the limit too.
  if (placed && !limit_ok(used_by(e.status.allocations))) {
    for (const auto& a : e.status.allocations) cluster_.release(a);
    e.status.allocations.clear();
    placed = false;
  }
  if (!placed) {
    for (Entry* v : taken)
      for (const auto& a : v->status.allocations) LS_CHECK(cluster_.restore(a));
    return false;
  }
  // Spare every victim whose devices are still free, most important first
  // (under a limit, the victims' charge is what makes room: spare none).
  for (auto it = taken.rbegin(); it != taken.rend() && !limited; ++it) {
    Entry* v = *it;
    std::vector<const Allocation*> restored;
    bool all = true;
    for (const auto& a : v->status.allocations) {
      if (!cluster_.restore(a)) {
        all = false;
        break;
      }
      restored.push_back(&a);
    }
    if (all) {
      *it = nullptr;
    } else {
      for (const Allocation* a : restored) cluster_.release(*a);
    }
  }
  for (Entry* v : taken) {
    if (!v) continue;
    Resources used;
    for (const auto& a : v->status.allocations) used += resources_of(a);
    charge(v->queue, Resources{} - used);
    v->status.allocations.clear();
    v->status.state = WorkloadState::kPending;
    v->status.reason = fmt::format(
        "preempted by '{}' ({})", e.workload.name,
        v->queue == q ? (limited ? "higher priority in the same queue, at its limit"
                                 : "higher priority in the same queue")
                      : fmt::format("queue '{}' reclaimed its quota", e.workload.queue));
    ++v->status.preemptions;
    ++preemptions_;
    preempted.push_back(v->workload.name);
  }
  return true;
}

void Scheduler::start(Entry& e, std::vector<Allocation> allocations, double now) {
  const int q = queue_index(e.workload.queue);
  e.status.borrowing = !within_deserved(q, e.request);
  e.status.state = WorkloadState::kRunning;
  e.status.allocations = std::move(allocations);
  e.status.started_at = now;
  e.status.reason.clear();
  e.queue = q;
  if (e.workload.preemptible) preemptible_.push_back(&e);
  Resources used;
  for (const auto& a : e.status.allocations) used += resources_of(a);
  charge(q, used);
}

CycleReport Scheduler::schedule(double now) {
  advance(now);
  compute_fair_shares();
  CycleReport report;
  // Pending work per leaf queue, by priority then arrival.
  std::map<int, std::vector<Entry*>> pending;
  preemptible_.clear();
  for (auto& [name, e] : entries_) {
    e.queue = queue_index(e.workload.queue);
    if (e.status.state == WorkloadState::kRunning && e.workload.preemptible)
      preemptible_.push_back(&e);
    if (e.status.state != WorkloadState::kPending) continue;
    const int q = e.queue;
    if (q < 0) {
      e.status.reason = fmt::format("queue '{}' does not exist", e.workload.queue);
      continue;
    }
    if (!queues_[q].children.empty()) {
      e.status.reason =
          fmt::format("queue '{}' has child queues; submit to a leaf queue", e.workload.queue);
      continue;
    }
    pending[q].push_back(&e);
  }
  for (auto& [q, list] : pending)
    std::sort(list.begin(), list.end(), [](const Entry* a, const Entry* b) {
      if (a->workload.priority != b->workload.priority)
        return a->workload.priority > b->workload.priority;
      return a->sequence < b->sequence;
    });
  std::map<int, size_t> next;
  std::set<std::string> preempted_now;
  // Until the next start or preemption changes the cluster, a workload like
  // one that found neither a place nor victims finds none either: it keeps
  // that reason without the search (a backlog of like jobs costs one).
  std::map<std::string, std::string> failed;
  while (true) {
    // The queue furthest below its fair share goes next.
    int pick = -1;
    double pick_share = 0;
    for (const auto& [q, list] : pending) {
      if (next[q] >= list.size()) continue;
      const double share = dominant_share(q);
      if (pick < 0 || share < pick_share - kEps) pick = q, pick_share = share;
    }
    if (pick < 0) break;
    Entry& e = *pending[pick][next[pick]++];
    if (e.status.state != WorkloadState::kPending) continue;
    if (preempted_now.count(e.workload.name)) continue;  // not back in the same pass
    // One pod only: a gang's pods are placed greedily, where the first lands
    // (random ties) deciding whether the rest fit; a pod that fits nowhere
    // draws nothing, so skipping its search changes no later placement.
    const bool like_others = e.workload.pods.size() == 1;
    std::string key = like_others ? attempt_key(e.workload) : std::string();
    if (auto it = failed.find(key); like_others && it != failed.end()) {
      e.status.reason = it->second;
      continue;
    }
    // A queue's limit: checked on the least the workload can be charged,
    // then on what it was charged once placed.
    std::string limit = over_limit(pick, e.minimum);
    std::string reason;
    if (limit.empty() && place(e, reason)) {
      limit = over_limit(pick, used_by(e.status.allocations));
      if (limit.empty()) {
        auto allocations = std::move(e.status.allocations);
        start(e, std::move(allocations), now);
        report.started.push_back(e.workload.name);
        failed.clear();
        continue;
      }
      for (const auto& a : e.status.allocations) cluster_.release(a);
      e.status.allocations.clear();
    }
    std::vector<std::string> victims;
    if (try_preemption(e, !limit.empty(), victims)) {
      for (auto& name : victims) {
        preempted_now.insert(name);
        report.preempted.push_back(std::move(name));
      }
      auto allocations = std::move(e.status.allocations);
      start(e, std::move(allocations), now);
      report.started.push_back(e.workload.name);
      if (!victims.empty()) report.started_by_preemption.push_back(e.workload.name);
      failed.clear();
      continue;
    }
    e.status.reason = limit.empty() ? reason : limit;
    if (like_others) failed.emplace(std::move(key), e.status.reason);
  }
  preemptible_.clear();
  return report;
}

const WorkloadStatus* Scheduler::status(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second.status;
}

const Workload* Scheduler::workload(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second.workload;
}

std::vector<QueueStatus> Scheduler::queues() const {
  std::vector<QueueStatus> out;
  for (const auto& q : queues_) {
    QueueStatus s;
    s.name = q.spec.name;
    s.parent = q.spec.parent;
    s.deserved = q.spec.deserved;
    s.limit = q.spec.limit;
    s.allocated = q.allocated;
    s.fair_share = q.fair_share;
    s.gpu_seconds = q.gpu_seconds;
    out.push_back(std::move(s));
  }
  for (const auto& [name, e] : entries_) {
    int q = queue_index(e.workload.queue);
    if (q < 0) continue;
    (e.status.state == WorkloadState::kRunning ? out[q].running : out[q].waiting)++;
    if (e.status.state == WorkloadState::kPending)
      for (; q >= 0; q = queues_[q].parent) out[q].pending += e.request;
  }
  // A parent's GPU-seconds include its children's.
  for (size_t i = 0; i < queues_.size(); ++i)
    for (int a = queues_[i].parent; a >= 0; a = queues_[a].parent)
      out[a].gpu_seconds += queues_[i].gpu_seconds;
  return out;
}

}  // namespace loadstar::scheduler
