// Which devices the kubelet handed to which Pod, as its device manager
// records them in its checkpoint (DEVICE_PLUGINS_DIR/kubelet_internal_checkpoint,
// the record the kubelet itself restores allocations from after a restart):
// the devices each plugin registered, and per Pod and container the IDs
// the plugin was asked to allocate. The agent reads it on its node so that
// the controller's device bookkeeping can follow what the kubelet chose.
// Pure: fuzzed and unit-tested on its own.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::agent {

struct DeviceAssignments {
  // resource ("nvidia.com/gpu") -> the device IDs its plugin registered
  std::map<std::string, std::vector<std::string>> registered;
  // pod UID -> resource -> device IDs handed to its containers
  std::map<std::string, std::map<std::string, std::vector<std::string>>> pods;
};

// The checkpoint's JSON ({"Data": {"PodDeviceEntries": [...],
// "RegisteredDevices": {...}}, "Checksum": N}); DeviceIDs as Kubernetes
// 1.20+ writes them (per NUMA node) or as a plain list (before).
Result<DeviceAssignments> parse_device_checkpoint(std::string_view text);

// The agent's answer at GET /v1/devices, and the controller's reading of it.
std::string device_listing_json(const DeviceAssignments& assignments);
Result<DeviceAssignments> parse_device_listing(std::string_view text);

// The physical card of a device ID: NVIDIA's time-sliced replicas
// ("GPU-<uuid>::<n>") are one card.
std::string physical_device(std::string_view id);

// The cards of `resource` on the node in a stable order (by ID), so that a
// card has one index for everybody: the index of each card handed to
// `pod_uid`; empty when the Pod holds none (or is unknown).
std::vector<int> cards_of(const DeviceAssignments& assignments, const std::string& pod_uid,
                          const std::string& resource = "nvidia.com/gpu");

}  // namespace loadstar::agent
