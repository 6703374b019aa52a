#include "controller/pod_groups.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace loadstar::controller {

using kube::json;

std::string group_pod_name(const std::string& replica, uint32_t rank) {
  return rank == 0 ? replica : fmt::format("{}-node{}", replica, rank);
}

kube::NamespaceScope::Name PodGroups::member_name(const std::string& replica, uint32_t rank) const {
  kube::NamespaceScope::Name name = scope_.split(replica);
  name.name = group_pod_name(name.name, rank);
  return name;
}

void PodGroups::launched(const std::string& replica, std::vector<json> members) {
  Group& g = groups_[replica];
  g.size = static_cast<uint32_t>(members.size()) + 1;
  g.pending.clear();
  for (json& m : members) g.pending.emplace_back(std::move(m));
  g.created.clear();
}

void PodGroups::adopted(const std::string& replica, uint32_t size) {
  Group& g = groups_[replica];
  g.size = size;
  g.pending.assign(size - 1, std::nullopt);
  g.created.clear();
}

std::optional<std::string> PodGroups::tend(const std::string& replica, const kube::Pod& leader) {
  auto it = groups_.find(replica);
  if (it == groups_.end()) return std::nullopt;
  Group& g = it->second;
  const auto now = std::chrono::steady_clock::now();
  for (uint32_t rank = 1; rank < g.size; ++rank) {
    const kube::NamespaceScope::Name name = member_name(replica, rank);
    std::optional<json>& pending = g.pending[rank - 1];
    if (pending) {
      if (leader.pod_ip.empty()) continue;  // told the leader's address, or not yet made
      for (json& var : (*pending)["spec"]["containers"][0]["env"])
        if (var.value("name", "") == kLeaderAddressEnv) var["value"] = leader.pod_ip;
      auto created =
          client_.create(kube::collection_path("v1", name.namespace_name, "pods"), *pending);
      if (!created.ok() && created.error().code != ErrorCode::kConflict)
        return fmt::format("node {}: creating pod {}: {}", rank, name.name,
                           created.error().message);
      pending.reset();
      g.created[rank] = now;
      spdlog::info("replica {}: node {} pod {} created, leader at {}", replica, rank, name.name,
                   leader.pod_ip);
      continue;
    }
    auto object = pods_.get(name);
    if (!object) {
      auto created = g.created.find(rank);
      if (created != g.created.end() && now - created->second < std::chrono::seconds(30))
        continue;  // not in the informer yet
      return fmt::format("node {}: its pod {} was deleted", rank, name.name);
    }
    g.created.erase(rank);
    const kube::Pod p = kube::pod_from_json(*object);
    if (p.deleting) return fmt::format("node {}: its pod {} is being deleted", rank, name.name);
    if (p.phase != "Failed" && p.phase != "Succeeded") continue;
    // Its engine's own last words (FallbackToLogsOnError), where the user looks.
    const kube::ContainerState* c = p.container("engine");
    std::string why = fmt::format("node {}: pod {} {}", rank, name.name,
                                  c ? c->describe() : p.phase + " " + p.message);
    if (c && !c->message.empty()) why += ": " + c->message;
    return why;
  }
  return std::nullopt;
}

std::optional<std::vector<json>> PodGroups::members(const std::string& replica) const {
  auto it = groups_.find(replica);
  if (it == groups_.end()) return std::vector<json>{};
  std::vector<json> out;
  for (uint32_t rank = 1; rank < it->second.size; ++rank) {
    auto object = pods_.get(member_name(replica, rank));
    if (!object || kube::pod_from_json(*object).deleting) return std::nullopt;
    out.push_back(std::move(*object));
  }
  return out;
}

void PodGroups::remove(const std::string& replica, int64_t grace_s) {
  auto it = groups_.find(replica);
  if (it == groups_.end()) return;
  for (uint32_t rank = 1; rank < it->second.size; ++rank) {
    if (it->second.pending[rank - 1]) continue;  // never created
    const kube::NamespaceScope::Name name = member_name(replica, rank);
    auto r = client_.remove(
        kube::collection_path("v1", name.namespace_name, "pods") + "/" + name.name, grace_s);
    if (!r.ok() && r.error().code != ErrorCode::kNotFound)
      spdlog::warn("deleting pod {}: {}", name.name, r.error().message);
  }
  groups_.erase(it);
}

}  // namespace loadstar::controller
