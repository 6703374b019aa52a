// Where replicas run: the seam between the controller's reconcilers and the
// engines. `loadstar up` runs engines as child processes (LocalRuntime);
// Kubernetes mode runs them as Pods (PodRuntime). The controller decides
// which replicas exist, where they go and when they stop; a runtime starts,
// watches and stops engines, by replica name.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "api/resources.h"
#include "common/result.h"
#include "kube/objects.h"

namespace loadstar::controller {

using kube::kDrainingAnnotation;

// A replica's share of one GPU, as the scheduler allocated it.
struct DeviceShare {
  int device = 0;
  uint32_t milli = 0;  // 1000: the whole card
  uint32_t mig_slices = 0;
};

struct EngineLaunch {
  std::string replica;  // the replica's name; at most one engine per name
  uint32_t index = 0;   // its index within the service
  const api::InferenceService* service = nullptr;
  const api::Model* model = nullptr;
  std::string revision;  // the hash of what shapes it (rollout.h)
  // The version of the model's bytes it must run (model_versions.h): the
  // agent stages exactly that, or fails saying so. Empty: the source's own.
  std::string model_version;
  // The LoRA adapters its service serves (spec.lora.adapters), as Models.
  std::vector<api::Model> adapters;
  std::string node;     // where the scheduler placed it
  std::string devices;  // its devices ("gpu0,gpu1", "gpu0:500m", "gpu2:3g")
  std::vector<DeviceShare> shares;
  // How many times the node's device plugin advertises each card
  // (NVIDIA time-slicing); 1: whole cards.
  uint32_t device_replicas = 1;
  // A multi-node replica's other pods (spec.multiNode), ranks 1 and up:
  // where each is placed. Empty: one pod. The runtime starts them with the
  // leader, and when any of them ends the whole group ends (its status
  // says which and why), so the controller restarts it as a whole.
  struct Member {
    std::string node, devices;
    std::vector<DeviceShare> shares;
  };
  std::vector<Member> members;
};

// An engine as its runtime sees it now.
struct EngineStatus {
  bool exists = false;   // launched and not yet gone
  bool staged = false;   // its model is in place
  bool started = false;  // its process runs
  bool ready = false;    // it answers /health
  bool exited = false;   // it ended without being told to (the runtime then forgets it)
  std::string host;      // where it serves, once ready
  uint16_t port = 0;
  std::string kv_events;  // its KV events' ZeroMQ endpoint, when it publishes them
  int pid = 0;            // local processes only
  std::string message;    // what it is doing or why it ended
  // The cards the node's device plugin handed it, by index (a node's cards
  // in the order of their IDs); empty: not known. The controller's
  // bookkeeping follows them (Placement::follow_devices).
  std::vector<int> cards;
};

// `shares` moved onto `cards` (the lowest device to the lowest card, and so
// on; each share keeps its amount): what the bookkeeping of a replica the
// kubelet handed `cards` should say. nullopt when they cannot be one
// another's (MIG slices, a count that differs) or already are.
std::optional<std::vector<DeviceShare>> shares_on(std::vector<DeviceShare> shares,
                                                  std::vector<int> cards);

// Shares as the annotation on a replica's or worker's Pod records them
// (JSON), and back (an annotation that does not parse: none).
std::string shares_to_json(const std::vector<DeviceShare>& shares);
std::vector<DeviceShare> shares_from_json(std::string_view text);

// A replica that runs already (a restarted controller takes its Pods over).
struct ExistingEngine {
  std::string replica, service, node;
  std::string revision;  // as launched; empty: not recorded
  uint32_t index = 0;
  std::vector<DeviceShare> shares;
  bool draining = false;       // taken out of routing (unroute) by a previous controller
  uint32_t canary_weight = 0;  // as a previous controller left it (route_share)
  // A multi-node replica's other pods as they run (ranks 1 and up).
  std::vector<EngineLaunch::Member> members;
};

class EngineRuntime {
 public:
  virtual ~EngineRuntime() = default;
  // Starts the engine of a placed replica. kUnavailable: not yet (its model
  // is being staged, or its previous engine is still stopping; the message
  // says so) — the controller tries again next pass. Other errors: the start
  // failed.
  virtual Status launch(const EngineLaunch& launch) = 0;
  virtual EngineStatus status(const std::string& replica) = 0;
  // Asks the engine to stop: SIGTERM, or the Pod deleted with its grace
  // period; the runtime forces it after a grace period. It exists until it
  // has ended.
  virtual void stop(const std::string& replica) = 0;
  // Takes a replica's engine out of routing, first step of its drain: new
  // requests go elsewhere while it finishes what it has, and only then is it
  // stopped. Kubernetes mode's gateways route to Ready engine Pods, so the
  // Pod is marked (kDrainingAnnotation) and they skip it; locally the
  // controller's own routing table leaves the replica out, nothing to do.
  virtual void unroute(const std::string& /*replica*/) {}
  // A canary's replica gets `weight` percent of its service's requests
  // with the rest of its group (0: an ordinary replica again). Kubernetes
  // mode's gateways read it from the Pod (kCanaryWeightAnnotation); locally
  // the controller's routing table carries it, nothing to do.
  virtual void route_share(const std::string& /*replica*/, uint32_t /*weight*/) {}
  // Stops it now (SIGKILL, or a deletion without grace).
  virtual void kill(const std::string& replica) = 0;
  // A service's model stays staged on `nodes` nodes while it has no replica
  // (warm weights): `model_version` of it, its current revision's.
  virtual void keep_warm(const api::Model& /*model*/, uint32_t /*nodes*/,
                         const std::string& /*model_version*/) {}
  // What a model source holds now, as a version id (the agent's
  // Manifest::version_id): network I/O, called on the controller's
  // resolver thread (model_versions.h), never on the reconcile thread.
  virtual Result<std::string> resolve_version(const std::string& source) {
    return make_error(ErrorCode::kUnavailable, "this runtime cannot resolve {}", source);
  }
  // Where replicas load `adapter` from at runtime (spec.lora.loading:
  // onDemand), or why not yet (staging progress, an error).
  virtual Result<std::string> adapter_path(const api::Model& adapter) {
    return make_error(ErrorCode::kUnavailable, "this runtime does not stage adapter {} yet",
                      adapter.metadata.name);
  }
  // The models staged on `node`, as far as the runtime knows: the
  // scheduler's locality scorer prefers such nodes for their replicas.
  virtual std::set<std::string, std::less<>> models_on(const std::string& /*node*/) { return {}; }
  // The end of a reconcile pass, with the models running engines use.
  virtual void end_pass(const std::vector<std::string>& /*models_in_use*/) {}
  // Whether engines keep running when the controller stops (Pods do; a new
  // controller takes them over through existing()).
  virtual bool engines_outlive_controller() const { return false; }
  virtual std::vector<ExistingEngine> existing() { return {}; }
};

}  // namespace loadstar::controller
