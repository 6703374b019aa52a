// The scheduler's picture of the cluster: nodes with CPU, memory and GPU
// devices described by attributes (model, memory, MIG slices, topology
// labels), in the spirit of Kubernetes Dynamic Resource Allocation, and what
// a pod asks of them. Pure data and arithmetic: no I/O, no clock.
//
// Units: CPU in millicores, memory in MiB, a GPU's compute share in milli
// (1000 = one whole card). Every GPU allocation is accounted in milli, so
// fractions, memory-sized shares, MIG slices and whole cards add up on one
// axis (the FGD paper's "GPU allocation ratio").
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/units.h"  // parse_mig_profile

namespace loadstar::scheduler {

inline constexpr uint32_t kMilliPerGpu = 1000;
inline constexpr int kMaxDevicesPerNode = 16;

struct Device {
  uint32_t model = 0;  // interned in Cluster::models()
  uint64_t memory_mib = 0;
  uint32_t mig_slices = 0;  // compute slices when partitioned (7 on A100/H100); 0: no MIG
  // State. A card serves either shares/whole requests or MIG slices, never
  // both at once (as with real MIG mode).
  uint32_t milli_used = 0;
  uint32_t mig_used = 0;

  uint32_t free_milli() const { return kMilliPerGpu - milli_used; }
  bool idle() const { return milli_used == 0; }
};

// Topology levels a gang can be constrained to, narrowest first.
inline constexpr std::string_view kTopologyLevels[] = {"nvlink", "rack", "spine", "zone"};

struct Node {
  std::string name;
  uint64_t cpu_milli = 0;
  uint64_t memory_mib = 0;
  std::vector<Device> devices;
  std::map<std::string, std::string, std::less<>> topology;  // level -> domain name
  std::set<std::string, std::less<>> cached_models;          // weights its agent holds
  // Groups with a pod on this node or in its NVLink domain or rack (the
  // pools of a disaggregated service, which want to be near each other).
  std::set<std::string, std::less<>> groups_near;
  bool schedulable = true;

  // State.
  uint64_t cpu_used = 0;
  uint64_t memory_used = 0;
  // Bumped on every change, so scores cached for this node can be reused
  // until it changes.
  uint64_t generation = 0;

  uint64_t cpu_free() const { return cpu_milli - cpu_used; }
  uint64_t memory_free() const { return memory_mib - memory_used; }
  uint64_t gpu_milli_total() const { return devices.size() * uint64_t{kMilliPerGpu}; }
  uint64_t gpu_milli_free() const;
};

// What one pod asks for. At most one of the GPU forms is set: whole cards
// (`gpu_count`), a share of one card by compute (`gpu_milli`) or by memory
// (`gpu_memory_mib`), or a MIG profile.
struct PodRequest {
  uint64_t cpu_milli = 0;
  uint64_t memory_mib = 0;
  uint32_t gpu_count = 0;
  uint32_t gpu_milli = 0;  // 0 < milli < 1000: a share of one card
  uint64_t gpu_memory_mib = 0;
  uint32_t mig_slices = 0;  // from a profile such as "3g.40gb"
  uint64_t mig_memory_mib = 0;
  std::vector<uint32_t> allowed_models;  // interned; empty: any
  std::string model;                     // the weights it loads (locality)
  std::string group;                     // it wants to be near its group's other pods (locality)

  bool wants_gpu() const {
    return gpu_count > 0 || gpu_milli > 0 || gpu_memory_mib > 0 || mig_slices > 0;
  }
  // GPU capacity asked for, in milli (a memory share counts as a whole card
  // until a card is chosen; see Allocation::gpu_milli for what was taken).
  uint64_t gpu_milli_request() const;
};

// Where one pod went: its node and, per device, the milli it took.
struct Allocation {
  int node = -1;
  uint64_t cpu_milli = 0;
  uint64_t memory_mib = 0;
  struct Share {
    int device = 0;
    uint32_t milli = 0;
    uint32_t mig_slices = 0;
  };
  std::vector<Share> shares;

  bool placed() const { return node >= 0; }
  uint64_t gpu_milli() const;
};

// A placement choice on one node before it is made: which devices and how
// much of each (the same shape as an Allocation, without a node).
using DeviceChoice = std::vector<Allocation::Share>;

class Cluster {
 public:
  uint32_t intern_model(std::string_view model);
  // The interned id of `model`, or UINT32_MAX when no node has it.
  uint32_t model_id(std::string_view model) const;
  const std::vector<std::string>& models() const { return models_; }

  int add_node(Node node);
  std::vector<Node>& nodes() { return nodes_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  int find_node(std::string_view name) const;

  uint64_t gpu_milli_total() const { return gpu_milli_total_; }
  uint64_t gpu_milli_used() const { return gpu_milli_used_; }

  // Every way `request` fits on node `n` as it is now (no capacity check
  // failed), at most one per device for shares. Empty when it does not fit.
  void choices(int n, const PodRequest& request, std::vector<DeviceChoice>& out) const;
  // Why `request` does not fit on node `n` ("insufficient GPU", ...), or
  // empty when it does.
  std::string_view misfit(int n, const PodRequest& request) const;

  Allocation allocate(int n, const PodRequest& request, const DeviceChoice& choice);
  void release(const Allocation& allocation);
  // Takes exactly `allocation` again if its node still has room for it
  // (undoing a tentative release); false and no change otherwise.
  bool restore(const Allocation& allocation);

 private:
  std::vector<Node> nodes_;
  std::vector<std::string> models_;
  std::map<std::string, int, std::less<>> node_index_;
  uint64_t gpu_milli_total_ = 0;
  uint64_t gpu_milli_used_ = 0;
};

// The milli a memory-sized share takes on a card of `device_memory_mib`.
uint32_t memory_share_milli(uint64_t want_mib, uint64_t device_memory_mib);

}  // namespace loadstar::scheduler
