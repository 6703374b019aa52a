#include "agent/device_checkpoint.h"

#include <algorithm>
#include <iterator>
#include <set>

#include <nlohmann/json.hpp>

namespace loadstar::agent {

using nlohmann::json;

namespace {

// A JSON array of strings; anything else is an error naming `what`.
Result<std::vector<std::string>> strings(const json& value, std::string_view what) {
  if (!value.is_array())
    return make_error(ErrorCode::kCorrupt, "device checkpoint: {} is not a list", what);
  std::vector<std::string> out;
  for (const json& v : value) {
    if (!v.is_string())
      return make_error(ErrorCode::kCorrupt, "device checkpoint: {} holds a non-string", what);
    out.push_back(v.get<std::string>());
  }
  return out;
}

}  // namespace

Result<DeviceAssignments> parse_device_checkpoint(std::string_view text) {
  const json doc = json::parse(text, nullptr, false);
  if (!doc.is_object() || !doc.contains("Data") || !doc["Data"].is_object())
    return make_error(ErrorCode::kCorrupt, "device checkpoint: no \"Data\" object");
  const json& data = doc["Data"];
  DeviceAssignments out;
  if (auto it = data.find("RegisteredDevices"); it != data.end() && !it->is_null()) {
    if (!it->is_object())
      return make_error(ErrorCode::kCorrupt, "device checkpoint: RegisteredDevices is not a map");
    for (const auto& [resource, ids] : it->items()) {
      if (ids.is_null()) continue;
      LS_ASSIGN_OR_RETURN(out.registered[resource], strings(ids, "RegisteredDevices." + resource));
    }
  }
  if (auto it = data.find("PodDeviceEntries"); it != data.end() && !it->is_null()) {
    if (!it->is_array())
      return make_error(ErrorCode::kCorrupt, "device checkpoint: PodDeviceEntries is not a list");
    for (const json& entry : *it) {
      if (!entry.is_object() || !entry.contains("PodUID") || !entry["PodUID"].is_string() ||
          !entry.contains("ResourceName") || !entry["ResourceName"].is_string())
        return make_error(ErrorCode::kCorrupt,
                          "device checkpoint: an entry lacks PodUID or ResourceName");
      auto& ids =
          out.pods[entry["PodUID"].get<std::string>()][entry["ResourceName"].get<std::string>()];
      const json& devices = entry.value("DeviceIDs", json());
      if (devices.is_object()) {  // per NUMA node (1.20 on)
        for (const auto& [numa, some] : devices.items()) {
          if (some.is_null()) continue;
          LS_ASSIGN_OR_RETURN(auto list, strings(some, "DeviceIDs"));
          ids.insert(ids.end(), list.begin(), list.end());
        }
      } else if (!devices.is_null()) {
        LS_ASSIGN_OR_RETURN(auto list, strings(devices, "DeviceIDs"));
        ids.insert(ids.end(), list.begin(), list.end());
      }
    }
  }
  return out;
}

std::string device_listing_json(const DeviceAssignments& assignments) {
  return json({{"registered", assignments.registered}, {"pods", assignments.pods}}).dump();
}

Result<DeviceAssignments> parse_device_listing(std::string_view text) {
  const json doc = json::parse(text, nullptr, false);
  if (!doc.is_object() || !doc.contains("registered") || !doc["registered"].is_object() ||
      !doc.contains("pods") || !doc["pods"].is_object())
    return make_error(ErrorCode::kCorrupt, "device listing: no \"registered\" and \"pods\" maps");
  DeviceAssignments out;
  for (const auto& [resource, ids] : doc["registered"].items()) {
    LS_ASSIGN_OR_RETURN(out.registered[resource], strings(ids, "registered." + resource));
  }
  for (const auto& [uid, resources] : doc["pods"].items()) {
    if (!resources.is_object())
      return make_error(ErrorCode::kCorrupt, "device listing: pod {} is not a map", uid);
    for (const auto& [resource, ids] : resources.items()) {
      LS_ASSIGN_OR_RETURN(out.pods[uid][resource], strings(ids, "pods." + resource));
    }
  }
  return out;
}

std::string physical_device(std::string_view id) {
  return std::string(id.substr(0, id.find("::")));
}

std::vector<int> cards_of(const DeviceAssignments& assignments, const std::string& pod_uid,
                          const std::string& resource) {
  auto registered = assignments.registered.find(resource);
  auto pod = assignments.pods.find(pod_uid);
  if (registered == assignments.registered.end() || pod == assignments.pods.end()) return {};
  auto given = pod->second.find(resource);
  if (given == pod->second.end()) return {};
  std::set<std::string> cards;
  for (const auto& id : registered->second) cards.insert(physical_device(id));
  std::set<int> out;
  for (const auto& id : given->second) {
    auto it = cards.find(physical_device(id));
    if (it == cards.end()) return {};  // handed out, not registered: not ours to judge
    out.insert(static_cast<int>(std::distance(cards.begin(), it)));
  }
  return {out.begin(), out.end()};
}

}  // namespace loadstar::agent
