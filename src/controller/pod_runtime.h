// Engines as Pods (Kubernetes mode). Each replica is one Pod named after it,
// owned by its InferenceService (deleting the service deletes its Pods),
// created with `schedulerName: loadstar` and bound by the controller to the
// node its scheduler chose (the Binding subresource), so no other scheduler
// places it. The Pod's init container asks the node's agent to stage the
// model (`loadstar stage`, agent on the node's address); the engine reads it
// read-only from the agent's cache (a hostPath) through models/NAME/current.
// An informer on the Pods tells each engine's state: staged (init done),
// started (engine running), ready (the Ready condition), at the Pod's IP.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "controller/runtime.h"
#include "http/server.h"
#include "kube/client.h"
#include "kube/informer.h"
#include "store/kube_store.h"

namespace loadstar::controller {

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
};

// Where a GGUF model's one file is in its staged directory: its path in a
// Hub repository (hf://ORG/NAME/PATH), the file name of a URL or file, else
// model.gguf (synthetic models, directories).
std::string gguf_name(const std::string& source);

// The Pod of a replica (JSON), as PodRuntime creates it.
kube::json replica_pod(const EngineLaunch& launch, const PodRuntimeOptions& options,
                       const std::string& namespace_name, const std::string& service_uid);

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
  bool engines_outlive_controller() const override { return true; }
  std::vector<ExistingEngine> existing() override;
  // Asks the agents of `nodes` GPU nodes (those that hold the model first,
  // then by name) to stage it, again every few seconds while it is kept
  // warm.
  void keep_warm(const api::Model& model, uint32_t nodes) override;
  // What the node's agent listed in its cache (read every 10 s), and the
  // models of Pods staged there since.
  std::set<std::string, std::less<>> models_on(const std::string& node) override;
  void end_pass(const std::vector<std::string>& models_in_use) override;

 private:
  std::string pod_path(const std::string& name) const;
  void remove(const std::string& name, int64_t grace_s);

  const kube::Client& client_;
  const store::KubeStore& store_;
  PodRuntimeOptions options_;
  std::string namespace_;
  std::unique_ptr<kube::Informer> pods_;
  std::set<std::string> stopping_;  // deleted by us: their disappearance is no failure
  // Created, not yet seen by the informer.
  std::map<std::string, std::chrono::steady_clock::time_point> created_;
  // Reads every agent's cache listing, at most every 10 s unless `now`.
  void refresh_holdings(bool now = false);
  std::vector<http::Header> agent_headers() const;

  // Models the nodes' agents hold: their listings, staging answers, staged Pods.
  std::map<std::string, std::set<std::string, std::less<>>> held_;
  std::chrono::steady_clock::time_point listed_{};
  std::set<std::string> warmed_;  // models kept warm so far
  // When each (model, node) was last asked to stage.
  std::map<std::pair<std::string, std::string>, std::chrono::steady_clock::time_point> asked_;
};

}  // namespace loadstar::controller
