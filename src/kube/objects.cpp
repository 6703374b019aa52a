#include "kube/objects.h"

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/strings.h"
#include "kube/client.h"  // parse_quantity

namespace loadstar::kube {

using nlohmann::json;

namespace {

const json& member(const json& object, const char* key) {
  static const json kNull;
  if (!object.is_object()) return kNull;
  auto it = object.find(key);
  return it == object.end() ? kNull : *it;
}

std::string text(const json& object, const char* key) {
  const json& v = member(object, key);
  return v.is_string() ? v.get<std::string>() : std::string();
}

std::map<std::string, std::string> strings(const json& object) {
  std::map<std::string, std::string> out;
  if (!object.is_object()) return out;
  for (const auto& [k, v] : object.items())
    if (v.is_string()) out[k] = v.get<std::string>();
  return out;
}

std::vector<ContainerState> states(const json& list) {
  std::vector<ContainerState> out;
  if (!list.is_array()) return out;
  for (const json& c : list) {
    ContainerState s;
    s.name = text(c, "name");
    const json& state = member(c, "state");
    for (const char* kind : {"waiting", "running", "terminated"}) {
      const json& detail = member(state, kind);
      if (!detail.is_object()) continue;
      s.state = kind;
      s.reason = text(detail, "reason");
      s.message = text(detail, "message");
      const json& code = member(detail, "exitCode");
      if (code.is_number_integer()) s.exit_code = code.get<int>();
      break;
    }
    const json& last = member(member(c, "lastState"), "terminated");
    if (last.is_object()) {
      const json& code = member(last, "exitCode");
      if (code.is_number_integer()) s.last_exit_code = code.get<int>();
      s.last_message = text(last, "message");
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

std::string ContainerState::describe() const {
  std::string out;
  if (state == "waiting") out = fmt::format("{} waiting: {} {}", name, reason, message);
  if (state == "terminated") out = fmt::format("{} exited with code {}", name, exit_code);
  if (state == "running") out = name + " running";
  if (last_exit_code && *last_exit_code != 0 && state != "running") {
    const std::string said = last_error_line_of(last_message);
    out += fmt::format("; last exit {}{}{}", *last_exit_code, said.empty() ? "" : ": ", said);
  }
  return out;
}

std::optional<int> Pod::port(std::string_view container, std::string_view port_name) const {
  std::optional<int> out;
  for (const Port& p : ports)
    if ((container.empty() || p.container == container) &&
        (port_name.empty() || p.name == port_name))
      out = p.port;
  return out;
}

const ContainerState* Pod::container(std::string_view name) const {
  for (const auto& c : containers)
    if (c.name == name) return &c;
  return nullptr;
}

Pod pod_from_json(const json& object) {
  Pod pod;
  const json& meta = member(object, "metadata");
  pod.name = text(meta, "name");
  pod.namespace_name = text(meta, "namespace");
  pod.labels = strings(member(meta, "labels"));
  pod.annotations = strings(member(meta, "annotations"));
  pod.deleting = !member(meta, "deletionTimestamp").is_null();
  const json& spec = member(object, "spec");
  pod.node_name = text(spec, "nodeName");
  if (const json& containers = member(spec, "containers"); containers.is_array())
    for (const json& c : containers) {
      const std::string name = text(c, "name");
      if (const json& ports = member(c, "ports"); ports.is_array())
        for (const json& p : ports) {
          const json& number = member(p, "containerPort");
          if (number.is_number_integer() && number.get<int64_t>() > 0 &&
              number.get<int64_t>() <= 65535)
            pod.ports.push_back({name, text(p, "name"), number.get<int>()});
        }
    }
  const json& status = member(object, "status");
  pod.phase = text(status, "phase");
  if (pod.phase.empty()) pod.phase = "Pending";
  pod.reason = text(status, "reason");
  pod.message = text(status, "message");
  pod.pod_ip = text(status, "podIP");
  if (const json& conditions = member(status, "conditions"); conditions.is_array())
    for (const json& c : conditions) {
      const bool is_true = text(c, "status") == "True";
      if (text(c, "type") == "Ready") pod.ready = is_true;
      if (text(c, "type") == "Initialized") pod.initialized = is_true;
    }
  pod.containers = states(member(status, "containerStatuses"));
  pod.init_containers = states(member(status, "initContainerStatuses"));
  return pod;
}

std::string Node::label(std::string_view key) const {
  auto it = labels.find(std::string(key));
  return it == labels.end() ? std::string() : it->second;
}

bool Node::repels_replicas() const {
  for (const Taint& t : taints)
    if ((t.effect == "NoSchedule" || t.effect == "NoExecute") &&
        !(t.key == kToleratedGpuTaint && t.effect == "NoSchedule"))
      return true;
  return false;
}

double Node::allocatable_or_zero(std::string_view resource) const {
  auto it = allocatable.find(std::string(resource));
  return it == allocatable.end() ? 0 : it->second;
}

Node node_from_json(const json& object) {
  Node node;
  const json& meta = member(object, "metadata");
  node.name = text(meta, "name");
  node.labels = strings(member(meta, "labels"));
  const json& unschedulable = member(member(object, "spec"), "unschedulable");
  node.unschedulable = unschedulable.is_boolean() && unschedulable.get<bool>();
  if (const json& taints = member(member(object, "spec"), "taints"); taints.is_array())
    for (const json& t : taints)
      if (std::string key = text(t, "key"); !key.empty())
        node.taints.push_back({std::move(key), text(t, "value"), text(t, "effect")});
  const json& status = member(object, "status");
  if (const json& addresses = member(status, "addresses"); addresses.is_array())
    for (const json& a : addresses)
      if (text(a, "type") == "InternalIP" && node.internal_ip.empty())
        node.internal_ip = text(a, "address");
  if (const json& conditions = member(status, "conditions"); conditions.is_array())
    for (const json& c : conditions)
      if (text(c, "type") == "Ready") node.ready = text(c, "status") == "True";
  if (const json& allocatable = member(status, "allocatable"); allocatable.is_object())
    for (const auto& [resource, value] : allocatable.items())
      if (value.is_string())
        if (auto q = parse_quantity(value.get<std::string>())) node.allocatable[resource] = *q;
  return node;
}

std::vector<EndpointAddress> ready_endpoints(const json& endpoints, std::string_view port_name) {
  std::vector<EndpointAddress> out;
  const json& subsets = member(endpoints, "subsets");
  if (!subsets.is_array()) return out;
  for (const json& subset : subsets) {
    const json& ports = member(subset, "ports");
    std::optional<uint16_t> port;
    if (ports.is_array())
      for (const json& p : ports) {
        const json& number = member(p, "port");
        if (!number.is_number_integer() || number.get<int64_t>() <= 0 ||
            number.get<int64_t>() > 65535)
          continue;
        if (port_name.empty() ? ports.size() == 1 : text(p, "name") == port_name)
          port = static_cast<uint16_t>(number.get<int64_t>());
      }
    const json& addresses = member(subset, "addresses");
    if (!port || !addresses.is_array()) continue;
    for (const json& a : addresses)
      if (std::string ip = text(a, "ip"); !ip.empty())
        out.push_back({std::move(ip), *port, text(a, "nodeName")});
  }
  std::sort(out.begin(), out.end());
  // The same address in two subsets is one endpoint; keep its node name.
  std::vector<EndpointAddress> unique;
  for (EndpointAddress& a : out) {
    if (!unique.empty() && unique.back().ip == a.ip && unique.back().port == a.port) {
      if (unique.back().node_name.empty()) unique.back().node_name = std::move(a.node_name);
      continue;
    }
    unique.push_back(std::move(a));
  }
  return unique;
}

}  // namespace loadstar::kube
