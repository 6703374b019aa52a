// The scheduler: queues with quotas and fair share, gangs, preemption and
// reclaim, GPU-second accounting, on top of placement (placement.h). Pure:
// every call takes the time (seconds, any epoch) from the caller, so the
// controller drives it with the real clock and `loadstar sim` with a virtual
// one.
//
// Queues form a tree. Each has a deserved quota, an optional limit and an
// over-quota weight per resource. A queue's fair share is its deserved quota
// (capped at its demand) plus a weighted part of what its siblings leave
// unused, computed by water-filling down the tree. Pending work is taken
// from the queue furthest below its fair share (dominant resource first),
// then by priority, then first come first served.
//
// A workload within its queue's deserved quota reclaims capacity lent to
// queues above their deserved quota (a guarantee: even below their fair
// share); one beyond it but within its fair share reclaims from queues
// above their fair share, never pushing them below it. A workload may
// preempt lower-priority work of its own queue. Work marked not
// preemptible is never evicted.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "scheduler/cluster.h"
#include "scheduler/placement.h"

namespace loadstar::scheduler {

// GPUs (fractions allowed), CPU cores and memory GiB.
struct Resources {
  double gpu = 0, cpu = 0, memory = 0;

  Resources& operator+=(const Resources& o) {
    gpu += o.gpu, cpu += o.cpu, memory += o.memory;
    return *this;
  }
  Resources& operator-=(const Resources& o) {
    gpu -= o.gpu, cpu -= o.cpu, memory -= o.memory;
    return *this;
  }
  friend Resources operator+(Resources a, const Resources& b) { return a += b; }
  friend Resources operator-(Resources a, const Resources& b) { return a -= b; }
  // Every dimension of this at most `o`'s (with a rounding allowance).
  bool fits_in(const Resources& o) const {
    return gpu <= o.gpu + 1e-9 && cpu <= o.cpu + 1e-9 && memory <= o.memory + 1e-9;
  }
  double& operator[](int i) { return i == 0 ? gpu : i == 1 ? cpu : memory; }
  double operator[](int i) const { return i == 0 ? gpu : i == 1 ? cpu : memory; }
};
Resources resources_of(const PodRequest& pod);
Resources resources_of(const Allocation& allocation);

struct QueueSpec {
  std::string name;
  std::string parent;  // empty: a top-level queue
  Resources deserved;
  std::optional<Resources> limit;  // never exceeded, borrowed or not
  double over_quota_weight = 1;    // share of siblings' unused quota
};

struct Workload {
  std::string name;
  std::string queue;
  std::string tenant;  // for chargeback; defaults to the queue
  int32_t priority = 0;
  bool preemptible = true;
  // One pod, or a gang placed all or nothing: at least `min_members` pods
  // (0: all of them) at once, or none.
  std::vector<PodRequest> pods;
  uint32_t min_members = 0;
  // Gang topology: all pods in one domain of this level (kTopologyLevels).
  std::string topology_level;
  bool topology_required = false;  // else preferred
};

enum class WorkloadState { kPending, kRunning };

struct WorkloadStatus {
  WorkloadState state = WorkloadState::kPending;
  std::vector<Allocation> allocations;  // one per placed pod
  std::string reason;                   // why it is pending
  double submitted_at = 0;
  double started_at = 0;
  uint32_t preemptions = 0;
  bool borrowing = false;  // admitted beyond its queue's deserved quota
};

struct QueueStatus {
  std::string name;
  std::string parent;
  Resources deserved;
  std::optional<Resources> limit;
  Resources allocated;  // this queue and its children
  Resources fair_share;
  Resources pending;  // requested by its pending workloads
  uint32_t running = 0;
  uint32_t waiting = 0;
  double gpu_seconds = 0;
};

struct CycleReport {
  std::vector<std::string> started;
  std::vector<std::string> preempted;  // back to pending
  // Of `started`, those that took preempted workloads' places: they wait
  // for their victims' grace periods.
  std::vector<std::string> started_by_preemption;
};

class Scheduler {
 public:
  // `fragmentation` may be null unless the policy weighs it.
  Scheduler(Cluster& cluster, PlacementPolicy policy,
            std::shared_ptr<const Fragmentation> fragmentation, uint64_t seed = 1);

  // Replaces the queue tree. Every parent must exist and the tree must not
  // loop; work in a queue that disappears stays pending with the reason.
  Status set_queues(std::vector<QueueSpec> queues);

  // The workload FGD should expect (see Placer::set_fragmentation).
  void set_target(std::shared_ptr<const Fragmentation> target) {
    placer_.set_fragmentation(std::move(target));
  }

  Status submit(Workload workload, double now);
  // Registers a workload already running on exactly `allocations` (after
  // the cluster was rebuilt, say). Fails, changing nothing, when those
  // devices are not free.
  Status adopt(Workload workload, std::vector<Allocation> allocations, double now);

  // GPU-seconds and preemptions so far, to carry into a new Scheduler.
  struct Accounting {
    std::map<std::string, double> queue_gpu_seconds;  // own, not children's
    std::map<std::string, double> tenant_gpu_seconds;
    uint64_t preemptions = 0;
  };
  Accounting accounting() const;
  void restore_accounting(const Accounting& accounting);

  // Releases a workload's devices (finished or deleted). Unknown names are
  // ignored.
  void remove(const std::string& name, double now);

  // One scheduling pass: admits and places what it can, preempting and
  // reclaiming where the rules allow.
  CycleReport schedule(double now);

  // Adds GPU-seconds up to `now` (also done by every call that takes a time).
  void advance(double now);
  // GPU-seconds a workload used beyond its allocation: a preempted one's
  // grace period, while it still held the devices it was evicted from.
  void add_gpu_seconds(const std::string& queue, const std::string& tenant, double gpu_seconds);

  const WorkloadStatus* status(const std::string& name) const;
  const Workload* workload(const std::string& name) const;
  std::vector<QueueStatus> queues() const;
  const std::map<std::string, double>& tenant_gpu_seconds() const { return tenant_gpu_seconds_; }
  const Cluster& cluster() const { return cluster_; }
  uint64_t preemptions() const { return preemptions_; }

 private:
  struct Entry {
    Workload workload;
    WorkloadStatus status;
    uint64_t sequence = 0;
    Resources request;  // as asked (a memory share or MIG slice counts as a card)
    Resources minimum;  // the least it can be charged (a MIG slice: 1/8 card)
    int queue = -1;     // queue_index(workload.queue), as of the current pass
  };
  struct QueueNode {
    QueueSpec spec;
    std::vector<int> children;
    int parent = -1;
    Resources allocated, fair_share, demand;
    double gpu_seconds = 0;
  };

  void compute_fair_shares();
  int queue_index(const std::string& name) const;
  // Why the queue (or an ancestor) cannot take `request` more, or empty.
  std::string over_limit(int queue, const Resources& request) const;
  bool within_deserved(int queue, const Resources& request) const;
  // Places every pod of `e` (gang rules) or none; fills `reason` on failure.
  bool place(Entry& e, std::string& reason);
  bool place_in(Entry& e, const std::vector<int>* candidates, std::vector<Allocation>& out);
  // Evicts the fewest, least important victims the rules allow so that `e`
  // fits (placed in e.status.allocations); their names go to `preempted`.
  // With `limited`, the queue is at its limit: only its own lower-priority
  // work may go, and enough of it that the queue stays within the limit.
  bool try_preemption(Entry& e, bool limited, std::vector<std::string>& preempted);
  void start(Entry& e, std::vector<Allocation> allocations, double now);
  void evict(Entry& e);
  void charge(int queue, const Resources& delta);
  double dominant_share(int queue) const;

  Cluster& cluster_;
  Placer placer_;
  std::vector<QueueNode> queues_;
  std::map<std::string, double> orphan_gpu_seconds_;  // queues gone or not yet declared
  std::map<std::string, Entry> entries_;
  // During a pass: the preemptible workloads that ran at its start or
  // started in it (preemption's candidates; evicted ones stay listed).
  std::vector<Entry*> preemptible_;
  uint64_t next_sequence_ = 0;
  double now_ = 0;
  bool clock_started_ = false;
  uint64_t preemptions_ = 0;
  std::map<std::string, double> tenant_gpu_seconds_;
};

}  // namespace loadstar::scheduler
