// The other pods of multi-node replicas in Kubernetes mode (spec.multiNode,
// LeaderWorkerSet's shape). PodRuntime creates a group's leader, which is
// the replica's Pod; PodGroups holds the rest of the group: it creates
// them once the leader has a Pod IP (LWS_LEADER_ADDRESS in their
// environment: no headless Service or cluster DNS needed), watches them
// through the runtime's Pod informer, and says when one of them ended or
// vanished, so that the runtime ends the whole group and the controller
// starts it again (LWS's RecreateGroupOnPodRestart). Their Pods have
// restartPolicy Never: no pod of a group restarts alone.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kube/client.h"
#include "kube/objects.h"
#include "kube/scope.h"

namespace loadstar::controller {

// A multi-node replica's pods (spec.multiNode, LeaderWorkerSet's shape):
// the leader is the replica's Pod, the others "<replica>-node<rank>",
// labelled with the group's size and their rank, their component
// kGroupMemberComponent (gateways route to the leader alone), and given
// the leader's Pod IP as LWS_LEADER_ADDRESS once it has one.
inline constexpr const char* kGroupMemberComponent = "engine-worker";
inline constexpr const char* kGroupSizeLabel = "loadstar.dev/group-size";
inline constexpr const char* kGroupRankLabel = "loadstar.dev/group-rank";
inline constexpr const char* kLeaderAddressEnv = "LWS_LEADER_ADDRESS";
// The leader's group port for engines other than engine-sim (whose group
// port is its HTTP port): SGLang's --dist-init-addr, vLLM's --master-port.
inline constexpr uint16_t kGroupPort = 20000;
std::string group_pod_name(const std::string& replica, uint32_t rank);

class PodGroups {
 public:
  PodGroups(const kube::Client& client, const kube::NamespaceScope& scope,
            const kube::ScopedInformer& pods)
      : client_(client), scope_(scope), pods_(pods) {}

  // A launched leader's other pods (ranks 1 and up, in order), created by
  // tend() once the leader has an address.
  void launched(const std::string& replica, std::vector<kube::json> members);
  // A replica taken over from a previous controller: a group of `size`
  // pods, all created already.
  void adopted(const std::string& replica, uint32_t size);
  bool is_group(const std::string& replica) const { return groups_.count(replica) > 0; }

  // Creates the members the leader's address lets start; why the group
  // ended ("node 1: pod Failed: ..."), when one of its members did.
  std::optional<std::string> tend(const std::string& replica, const kube::Pod& leader);
  // The members as they run, ranks 1 and up; nullopt when one is missing.
  std::optional<std::vector<kube::json>> members(const std::string& replica) const;
  // Deletes its members (with `grace_s`) and forgets the group.
  void remove(const std::string& replica, int64_t grace_s);

 private:
  struct Group {
    uint32_t size = 1;
    // Not created yet, by rank - 1 (empty once created).
    std::vector<std::optional<kube::json>> pending;
    // When each rank was created (not yet seen by the informer within a
    // watch round trip is no loss).
    std::map<uint32_t, std::chrono::steady_clock::time_point> created;
  };
  kube::NamespaceScope::Name member_name(const std::string& replica, uint32_t rank) const;

  const kube::Client& client_;
  const kube::NamespaceScope& scope_;
  const kube::ScopedInformer& pods_;
  std::map<std::string, Group> groups_;
};

}  // namespace loadstar::controller
