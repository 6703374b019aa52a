#include "scheduler/cluster.h"

#include <algorithm>

#include "common/check.h"

namespace loadstar::scheduler {

uint64_t Node::gpu_milli_free() const {
  uint64_t free = 0;
  for (const Device& d : devices) free += d.free_milli();
  return free;
}

uint64_t PodRequest::gpu_milli_request() const {
  if (gpu_count > 0) return uint64_t{gpu_count} * kMilliPerGpu;
  if (gpu_milli > 0) return gpu_milli;
  if (gpu_memory_mib > 0 || mig_slices > 0) return kMilliPerGpu;
  return 0;
}

uint64_t Allocation::gpu_milli() const {
  uint64_t total = 0;
  for (const Share& s : shares) total += s.milli;
  return total;
}

uint32_t memory_share_milli(uint64_t want_mib, uint64_t device_memory_mib) {
  if (device_memory_mib == 0) return kMilliPerGpu + 1;  // cannot be served
  const uint64_t milli = (want_mib * kMilliPerGpu + device_memory_mib - 1) / device_memory_mib;
  return static_cast<uint32_t>(std::min<uint64_t>(milli, kMilliPerGpu + 1));
}

uint32_t Cluster::intern_model(std::string_view model) {
  for (size_t i = 0; i < models_.size(); ++i)
    if (models_[i] == model) return static_cast<uint32_t>(i);
  models_.emplace_back(model);
  return static_cast<uint32_t>(models_.size() - 1);
}

uint32_t Cluster::model_id(std::string_view model) const {
  for (size_t i = 0; i < models_.size(); ++i)
    if (models_[i] == model) return static_cast<uint32_t>(i);
  return UINT32_MAX;
}

int Cluster::add_node(Node node) {
  LS_CHECK(node.devices.size() <= kMaxDevicesPerNode);
  const int index = static_cast<int>(nodes_.size());
  node_index_[node.name] = index;
  for (const Device& d : node.devices) gpu_milli_used_ += d.milli_used;
  gpu_milli_total_ += node.gpu_milli_total();
  nodes_.push_back(std::move(node));
  return index;
}

int Cluster::find_node(std::string_view name) const {
  auto it = node_index_.find(name);
  return it == node_index_.end() ? -1 : it->second;
}

namespace {

bool model_allowed(const PodRequest& r, uint32_t model) {
  return r.allowed_models.empty() || std::find(r.allowed_models.begin(), r.allowed_models.end(),
                                               model) != r.allowed_models.end();
}

// The milli the next `slices` MIG slices of `d` account for: a fixed
// floor(slices * 1000 / mig_slices), except that the slices completing the
// card take whatever is left, so a fully partitioned card is exactly 1000.
// (Charging by position, after - before, would depend on the order in which
// slices came and went, and could overrun the card.)
uint32_t mig_milli(const Device& d, uint32_t slices) {
  if (d.mig_used + slices == d.mig_slices) return kMilliPerGpu - d.milli_used;
  return slices * kMilliPerGpu / d.mig_slices;
}

}  // namespace

std::string_view Cluster::misfit(int n, const PodRequest& r) const {
  const Node& node = nodes_[n];
  if (!node.schedulable) return "node is not schedulable";
  if (node.cpu_free() < r.cpu_milli) return "insufficient cpu";
  if (node.memory_free() < r.memory_mib) return "insufficient memory";
  if (!r.wants_gpu()) return {};
  bool any_model = false;
  for (const Device& d : node.devices) any_model |= model_allowed(r, d.model);
  if (!any_model) return node.devices.empty() ? "no GPU" : "GPU model not allowed";
  if (r.mig_slices > 0) {
    bool mig = false;
    for (const Device& d : node.devices) mig |= d.mig_slices > 0 && model_allowed(r, d.model);
    if (!mig) return "no MIG-capable GPU";
  }
  std::vector<DeviceChoice> out;
  choices(n, r, out);
  return out.empty() ? "insufficient GPU" : std::string_view{};
}

void Cluster::choices(int n, const PodRequest& r, std::vector<DeviceChoice>& out) const {
  out.clear();
  const Node& node = nodes_[n];
  if (!node.schedulable || node.cpu_free() < r.cpu_milli || node.memory_free() < r.memory_mib)
    return;
  if (!r.wants_gpu()) {
    out.emplace_back();
    return;
  }
  const auto& devices = node.devices;
  if (r.gpu_count > 0) {
    // Idle cards are interchangeable for placement; take the first ones.
    DeviceChoice choice;
    for (size_t i = 0; i < devices.size() && choice.size() < r.gpu_count; ++i)
      if (devices[i].idle() && model_allowed(r, devices[i].model))
        choice.push_back({static_cast<int>(i), kMilliPerGpu, 0});
    if (choice.size() == r.gpu_count) out.push_back(std::move(choice));
    return;
  }
  // One choice per distinct (model, free) card: two cards alike score alike.
  for (size_t i = 0; i < devices.size(); ++i) {
    const Device& d = devices[i];
    if (!model_allowed(r, d.model)) continue;
    uint32_t milli = 0, slices = 0;
    if (r.mig_slices > 0) {
      if (d.mig_slices == 0 || (d.milli_used > 0 && d.mig_used == 0)) continue;
      if (d.mig_used + r.mig_slices > d.mig_slices) continue;
      if (r.mig_memory_mib > d.memory_mib) continue;
      slices = r.mig_slices;
      milli = mig_milli(d, slices);
    } else {
      if (d.mig_used > 0) continue;
      milli = r.gpu_milli > 0 ? r.gpu_milli : memory_share_milli(r.gpu_memory_mib, d.memory_mib);
      if (milli > d.free_milli()) continue;
    }
    bool seen = false;
    for (const DeviceChoice& c : out) {
      const Device& o = devices[c[0].device];
      seen |= o.model == d.model && o.milli_used == d.milli_used && o.mig_used == d.mig_used &&
              o.memory_mib == d.memory_mib;
    }
    if (!seen) out.push_back({{static_cast<int>(i), milli, slices}});
  }
}

Allocation Cluster::allocate(int n, const PodRequest& r, const DeviceChoice& choice) {
  Node& node = nodes_[n];
  LS_CHECK(node.cpu_free() >= r.cpu_milli && node.memory_free() >= r.memory_mib);
  Allocation a;
  a.node = n;
  a.cpu_milli = r.cpu_milli;
  a.memory_mib = r.memory_mib;
  a.shares = choice;
  node.cpu_used += r.cpu_milli;
  node.memory_used += r.memory_mib;
  for (const auto& s : choice) {
    Device& d = node.devices[s.device];
    LS_CHECK(d.milli_used + s.milli <= kMilliPerGpu);
    LS_CHECK(d.mig_used + s.mig_slices <= std::max<uint32_t>(d.mig_slices, 0));
    d.milli_used += s.milli;
    d.mig_used += s.mig_slices;
    gpu_milli_used_ += s.milli;
  }
  ++node.generation;
  return a;
}

bool Cluster::restore(const Allocation& a) {
  if (!a.placed() || a.node >= static_cast<int>(nodes_.size())) return false;
  Node& node = nodes_[a.node];
  if (node.cpu_free() < a.cpu_milli || node.memory_free() < a.memory_mib) return false;
  for (const auto& s : a.shares) {
    // What a previous controller recorded (an annotation) may name a card
    // this node no longer has.
    if (s.device < 0 || s.device >= static_cast<int>(node.devices.size())) return false;
    const Device& d = node.devices[s.device];
    if (d.milli_used + s.milli > kMilliPerGpu) return false;
    if (s.mig_slices > 0
            ? d.mig_used + s.mig_slices > d.mig_slices || (d.milli_used > 0 && d.mig_used == 0)
            : d.mig_used > 0)
      return false;
  }
  node.cpu_used += a.cpu_milli;
  node.memory_used += a.memory_mib;
  for (const auto& s : a.shares) {
    node.devices[s.device].milli_used += s.milli;
    node.devices[s.device].mig_used += s.mig_slices;
    gpu_milli_used_ += s.milli;
  }
  ++node.generation;
  return true;
}

void Cluster::release(const Allocation& a) {
  if (!a.placed()) return;
  Node& node = nodes_[a.node];
  LS_CHECK(node.cpu_used >= a.cpu_milli && node.memory_used >= a.memory_mib);
  node.cpu_used -= a.cpu_milli;
  node.memory_used -= a.memory_mib;
  for (const auto& s : a.shares) {
    Device& d = node.devices[s.device];
    LS_CHECK(d.milli_used >= s.milli && d.mig_used >= s.mig_slices);
    d.milli_used -= s.milli;
    d.mig_used -= s.mig_slices;
    gpu_milli_used_ -= s.milli;
  }
  ++node.generation;
}

}  // namespace loadstar::scheduler
