// Engines as Pods (Kubernetes mode). Each replica is one Pod named after it,
// in its service's namespace (outside the home namespace replicas, services
// and models are "NAMESPACE/NAME" to the controller, kube/scope.h), owned
// by its InferenceService (deleting the service deletes its Pods), created
// with `schedulerName: loadstar` and already bound to the node the
// controller's scheduler chose (spec.nodeName), so no other scheduler
// places it. The Pod's init container asks the node's agent to stage the
// model (`loadstar stage`, agent on the node's address); the engine reads it
// read-only from the agent's cache (a hostPath) through models/NAME/current
// (NAMESPACE_NAME outside the home namespace: one cache serves every team,
// and a team's token stages only its own names).
// An informer on the Pods tells each engine's state: staged (init done),
// started (engine running), ready (the Ready condition), at the Pod's IP.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "agent/device_checkpoint.h"
#include "controller/pod_groups.h"
#include "controller/runtime.h"
#include "http/server.h"
#include "kube/client.h"
#include "kube/informer.h"
#include "kube/scope.h"
#include "store/kube_store.h"

namespace loadstar::controller {

// Where an engine Pod publishes its KV events (vLLM's default port).
inline constexpr int kKvEventsPort = 5557;

struct PodRuntimeOptions {
  std::string image = "loadstar:0.1.0";  // runs `loadstar engine-sim` and `loadstar stage`
  // Per engine, an image instead of the engine table's pinned default (a
  // service's spec.engine.image overrides both).
  std::map<std::string, std::string> engine_images;
  std::string shm_size = "2Gi";  // /dev/shm of engines that need one (vLLM, SGLang)
  std::string image_pull_policy = "IfNotPresent";
  uint16_t engine_port = 8000;
  uint16_t agent_port = 8070;  // the agent DaemonSet's port on each node (host network)
  std::string cache_host_path = "/var/lib/loadstar/agent";  // the agents' cache on each node
  int64_t termination_grace_s = 30;                         // a stopping engine drains this long
  // The agents' API needs the internal token: the controller sends this
  // Authorization value ("Bearer ..."; "" none), and replica Pods' stage
  // init container reads $LOADSTAR_TOKEN from this Secret's key `token`.
  std::string agent_authorization;
  std::string token_secret = "loadstar-internal";
  // The internal token itself. Outside the home namespace the controller
  // keeps `token_secret` holding the namespace's own token derived from it
  // (http::BearerToken::for_namespace): Pods there stage with that, which
  // lets them stage their namespace's models and nothing else.
  std::string internal_token;
};

// Where a GGUF model's one file is in its staged directory: its path in a
// Hub repository (hf://ORG/NAME/PATH), the file name of a URL or file, else
// model.gguf (synthetic models, directories).
std::string gguf_name(const std::string& source);

// The Pod of a replica (JSON), as PodRuntime creates it; `rank` > 0: that
// pod of its multi-node group (EngineLaunch::members[rank - 1]).
kube::json replica_pod(const EngineLaunch& launch, const PodRuntimeOptions& options,
                       const std::string& namespace_name, const std::string& service_uid,
                       uint32_t rank = 0);

class PodRuntime : public EngineRuntime {
 public:
  PodRuntime(const kube::Client& client, const store::KubeStore& store, PodRuntimeOptions options);
  ~PodRuntime() override;
  // Starts the Pod informer and waits for its first list.
  Status start(double timeout_s);

  Status launch(const EngineLaunch& launch) override;
  EngineStatus status(const std::string& replica) override;
  void stop(const std::string& replica) override;
  void kill(const std::string& replica) override;
  void unroute(const std::string& replica) override;
  void route_share(const std::string& replica, uint32_t weight) override;
  bool engines_outlive_controller() const override { return true; }
  std::vector<ExistingEngine> existing() override;
  // Asks the agents of `nodes` GPU nodes (those that hold the model first,
  // then by name) to stage it, again every few seconds while it is kept
  // warm.
  void keep_warm(const api::Model& model, uint32_t nodes,
                 const std::string& model_version) override;
  // What the node's agent listed in its cache (read every 10 s), and the
  // models of Pods staged there since.
  std::set<std::string, std::less<>> models_on(const std::string& node) override;
  void end_pass(const std::vector<std::string>& models_in_use) override;
  // Asks the agents (POST /v1/resolve; by node name, the first that
  // answers): they hold the credentials and the source policy.
  Result<std::string> resolve_version(const std::string& source) override;

 private:
  std::string pod_path(const std::string& replica) const;
  void remove(const std::string& replica, int64_t grace_s);
  // Makes sure `namespace_name` holds the Secret its replica Pods stage
  // with (outside the home namespace: that namespace's derived token).
  Status ensure_token_secret(const std::string& namespace_name);
  // ...in every namespace with a service (every 10 s), so that a team's
  // gateway has its token before any replica starts there.
  void keep_token_secrets();
  std::chrono::steady_clock::time_point secrets_checked_{};

  const kube::Client& client_;
  const store::KubeStore& store_;
  PodRuntimeOptions options_;
  const kube::NamespaceScope& scope_;
  std::unique_ptr<kube::ScopedInformer> pods_;
  PodGroups groups_;                     // multi-node replicas' other pods
  std::set<std::string> token_secrets_;  // namespaces whose Secret is in place
  std::set<std::string> stopping_;       // deleted by us: their disappearance is no failure
  // Created, not yet seen by the informer.
  std::map<std::string, std::chrono::steady_clock::time_point> created_;
  // Reads every agent's cache listing, at most every 10 s unless `now`.
  void refresh_holdings(bool now = false);
  std::vector<http::Header> agent_headers() const;

  // Which cards each node's kubelet handed to which Pod, as its agent reads
  // them (GET /v1/devices, with the cache listings); nodes whose agent
  // reads no checkpoint are not asked again.
  std::map<std::string, agent::DeviceAssignments> devices_;
  std::set<std::string> no_devices_;
  // The cards of a Pod on `node` (the annotation follows them).
  std::vector<int> cards_of(const kube::Pod& pod, const kube::json& object);
  // Models the nodes' agents hold: their listings, staging answers, staged Pods.
  std::map<std::string, std::set<std::string, std::less<>>> held_;
  std::chrono::steady_clock::time_point listed_{};
  std::set<std::string> warmed_;  // models kept warm so far
  // When each (model, node) was last asked to stage.
  std::map<std::pair<std::string, std::string>, std::chrono::steady_clock::time_point> asked_;
};

}  // namespace loadstar::controller
