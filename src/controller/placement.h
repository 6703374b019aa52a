// Where replicas go: the controller's side of the GPU scheduler
// (src/scheduler). Each pass it brings the scheduler's cluster and queues
// in line with the declared Node and Queue resources (rebuilding the
// cluster when nodes change, keeping replicas where they run when their
// node and devices still exist), tells it which models each node holds
// (for the locality scorer), submits the replicas that need a place, runs a
// scheduling cycle and says what changed: replicas placed, replicas whose
// place is gone (their engines must stop), and why the others wait.
// Owns the cluster, the scheduler and each replica's placement.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "api/resources.h"
#include "common/metrics_text.h"
#include "controller/runtime.h"
#include "scheduler/scheduler.h"

namespace loadstar::controller {

// A replica, or a job's gang of workers, as placement needs to know it
// this pass.
struct PlacementReplica {
  std::string name;
  std::string service;            // a replica's service, or
  const api::Job* job = nullptr;  // a job: its workers are placed all or none
  bool terminating = false;       // being drained or stopped: never placed again
  bool launched = false;          // its engine runs (or is stopping)
  bool engine_active = false;     // launched, or past Pending (a start under way)
};

struct PlacementPass {
  const std::vector<api::Node>* nodes = nullptr;
  const std::vector<api::Queue>* queues = nullptr;
  const std::map<std::string, api::InferenceService>* services = nullptr;
  std::vector<PlacementReplica> replicas;  // every replica, in name order
  // The models staged on a node, as the runtime knows it.
  std::function<std::set<std::string, std::less<>>(const std::string& node)> models_on;
};

struct PlacementChanges {
  std::vector<std::string> placed;  // given a node and devices this pass
  // Replicas whose place is gone (preempted, node or devices changed): stop
  // their engines; they are placed again.
  std::vector<std::pair<std::string, std::string>> displaced;  // (replica, why)
  std::map<std::string, std::string> waiting;                  // replica -> why it has no place
};

struct Placed {
  std::string node;
  std::string devices;  // "gpu0,gpu1", "gpu0:500m", "gpu2:3g"
  std::vector<DeviceShare> shares;
};

// A node as the scheduler books it (the dashboard's GPU map): each card,
// what is booked on it and by whom.
struct DeviceStatus {
  int index = 0;
  std::string model;  // "H100"; empty where the node did not say
  uint64_t memory_mib = 0;
  uint32_t milli_used = 0;  // 1000: the whole card
  uint32_t mig_slices = 0;  // 0: no MIG
  uint32_t mig_used = 0;
  struct Holder {
    std::string name;  // a replica, or a job's worker
    uint32_t milli = 0;
    uint32_t mig_slices = 0;
  };
  std::vector<Holder> holders;
};

struct NodeStatus {
  std::string name;
  bool schedulable = true;
  std::vector<DeviceStatus> devices;
  std::vector<std::string> models;  // weights its agent holds
  std::map<std::string, std::string, std::less<>> topology;
};

class Placement {
 public:
  // `policy`: scheduler::PlacementPolicy::named (an unknown one: "loadstar").
  explicit Placement(std::string policy) : policy_(std::move(policy)) {}

  // An engine that runs already (taken over at start), each of its pods
  // (one; a multi-node replica's: the leader first) on its node with its
  // shares: it keeps them if they exist at the next pass.
  void adopt(const std::string& replica, std::vector<Placed> pods);
  // `t`: seconds on the controller's clock.
  PlacementChanges pass(const PlacementPass& pass, double t);
  // The replica is gone: its place is given back.
  void remove(const std::string& replica, double t);
  // The cards each replica's node handed it (EngineStatus::cards): where
  // they differ from the bookkeeping, the bookkeeping moves onto them, all
  // of them or none (two replicas the kubelet swapped move together; while
  // a card is still booked to a replica not yet reported, nothing moves).
  // The replicas moved.
  std::vector<std::string> follow_devices(const std::map<std::string, std::vector<int>>& cards,
                                          double t);

  // Where the replica is placed (a job: its first worker); null while it
  // has no place.
  const Placed* where(const std::string& replica) const;
  // GPU capacity free on `node` (milli); 0 for a node the scheduler lacks.
  uint64_t gpu_milli_free(const std::string& node) const;
  // Where each pod of a job's gang is placed, by worker index; empty while
  // it has no place.
  const std::vector<Placed>& members(const std::string& name) const;

  // Devices given to another workload while the job preempted from them
  // is still stopping (its workers' grace period to checkpoint): whoever
  // is placed on them waits. A preempted job's devices are held so from
  // its displacement until vacated(job) says its workers have all ended.
  // Its queue is charged the GPU-seconds of that grace period.
  void vacated(const std::string& job, double t);
  // The preempted job still stopping on a device placed to `name`, or empty.
  std::string blocker(const std::string& name) const;
  // Every node with its cards' bookings.
  std::vector<NodeStatus> nodes() const;
  // GPU-seconds by tenant, since this controller started.
  std::map<std::string, double> tenant_gpu_seconds() const {
    return scheduler_ ? scheduler_->tenant_gpu_seconds() : std::map<std::string, double>{};
  }
  // Queues with usage against quota and fair share.
  std::vector<scheduler::QueueStatus> queues() const;
  // Per-queue allocation, fair share and GPU-seconds, per-tenant
  // GPU-seconds, preemptions, GPUs.
  void render(MetricsText& text) const;

 private:
  struct Replica {
    bool submitted = false;
    std::optional<Placed> placed;
    std::vector<Placed> members;  // every pod's (a replica's: its one)
    std::optional<std::vector<Placed>> adopted;
  };
  // Displaced replicas, when a change of nodes moved them.
  std::vector<std::pair<std::string, std::string>> sync_cluster(const PlacementPass& pass,
                                                                double t);
  void sync_queues(const std::vector<api::Queue>& queues);
  void sync_target(const std::map<std::string, api::InferenceService>& services);
  // Marks the nodes near each disaggregated service's replicas (the
  // scheduler's locality scorer draws its two pools together).
  void sync_groups(const PlacementPass& pass);
  scheduler::Workload workload_of(const std::string& replica, const api::InferenceService& svc);
  scheduler::Workload workload_of(const std::string& name, const api::Job& job);
  // The workload of `r` this pass; nullopt when its service is gone.
  std::optional<scheduler::Workload> workload_of(const PlacementPass& pass,
                                                 const PlacementReplica& r);
  scheduler::PodRequest pod_of(double cpu, uint64_t memory_bytes, const api::GpuRequirements& g);
  void set_placed(Replica& r, const std::vector<scheduler::Allocation>& allocations);
  Placed placed_from(const scheduler::Allocation& a) const;

  std::string policy_;
  scheduler::Cluster cluster_;
  std::unique_ptr<scheduler::Scheduler> scheduler_;
  // What the scheduler was last set up with, compared by value each pass
  // (nullopt: set it up again).
  std::optional<std::vector<api::Node>> synced_nodes_;
  std::optional<std::vector<api::Queue>> synced_queues_;
  std::optional<std::map<std::string, api::InferenceService>> synced_target_;
  std::map<std::string, Replica> replicas_;
  // Preempted jobs still stopping, with the devices they hold.
  struct Vacating {
    std::vector<Placed> members;
    std::string queue, tenant;
    double since = 0;
    double gpus = 0;
  };
  std::map<std::string, Vacating> vacating_;
  uint64_t device_moves_ = 0;  // replicas moved onto the cards their node gave them
};

}  // namespace loadstar::controller
