// Resources from the Kubernetes API: the second ResourceStore. Informers
// follow Loadstar's custom resources in a scope of namespaces (one, a list,
// or all; names outside the home namespace are "NAMESPACE/NAME", and so are
// the references between them, kube/scope.h) and the cluster's
// Nodes; list() decodes the custom resources with the very decoder the
// local mode uses (an object it rejects is skipped, and its status says
// why), and turns Kubernetes Nodes into Loadstar Nodes: allocatable CPU and
// memory, `nvidia.com/gpu` devices described by GPU feature discovery's
// labels, topology from well-known labels.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kube/client.h"
#include "kube/informer.h"
#include "kube/scope.h"
#include "store/store.h"

namespace loadstar::store {

// Kubernetes Node (JSON) -> Loadstar Node.
api::Node node_from_kubernetes(const kube::json& node);

// A custom resource (JSON) -> the YAML document the decoder reads: apiVersion,
// kind, metadata.name/labels and spec; status and server-set metadata go.
std::string decodable_document(const kube::json& object);

class KubeStore : public ResourceStore {
 public:
  struct Options {
    std::string node_selector;  // a label selector: the Nodes replicas may use
    bool nodes = true;          // follow Nodes (the controller; gateways need not)
    bool write_status = true;   // say in an object's status why it was rejected
  };
  KubeStore(const kube::Client& client, kube::NamespaceScope scope, Options options);
  ~KubeStore() override;

  // Starts the informers and waits up to `timeout_s` for their first lists.
  Status start(double timeout_s);

  std::vector<api::Resource> list() const override;
  std::optional<api::Resource> get(std::string_view kind, std::string_view name) const override;
  // Resources are applied with kubectl in Kubernetes mode. The controller
  // itself writes back only what `loadstar rollout undo` restores: an
  // existing InferenceService's replica shape (model, engine, resources)
  // and an existing Model's spec, as merge patches; anything else is refused.
  Status apply(const api::Resource& resource) override;
  Status remove(std::string_view kind, std::string_view name) override;
  uint64_t revision() const override { return revision_.load(); }
  std::shared_ptr<void> watch(WatchCallback callback) override;
  void publish_status(std::string_view kind, std::string_view name,
                      const std::string& status_json) override;
  // Rollout history as ControllerRevisions (apps/v1, as Deployments' and
  // StatefulSets' own), one per revision, named SERVICE-HASH in the
  // service's namespace, owned by the service (deleted with it).
  Result<std::vector<RevisionRecord>> revisions(std::string_view service) const override;
  Status save_revision(std::string_view service, const RevisionRecord& record) override;
  Status remove_revision(std::string_view service, std::string_view hash) override;
  // A core/v1 Event on the object (kubectl describe and get events show
  // it), from component loadstar-controller; the same one again raises
  // its count.
  void record_event(const Event& event) override;
  // The usage ledger in the ConfigMap loadstar-usage of the home namespace
  // (data key usage.json).
  Result<std::string> load_usage() const override;
  Status save_usage(const std::string& document) override;

  // The object's uid (for owner references); empty when unknown.
  std::string uid_of(std::string_view kind, std::string_view name) const;
  // Each followed Node's InternalIP (where its agent listens).
  std::map<std::string, std::string> node_addresses() const;
  const std::string& namespace_name() const { return scope_.home(); }
  const kube::NamespaceScope& scope() const { return scope_; }

 private:
  struct Kind {
    std::string kind, plural;
    std::unique_ptr<kube::ScopedInformer> informer;
  };
  void changed();
  const Kind* kind_named(std::string_view kind) const;
  std::string status_path(const Kind& kind, std::string_view name) const;
  // Qualifies a decoded resource's name and its references to others.
  void qualify(api::Resource& resource, const std::string& namespace_name) const;

  const kube::Client& client_;
  kube::NamespaceScope scope_;
  std::vector<Kind> kinds_;
  Options options_;
  std::unique_ptr<kube::Informer> nodes_;  // null unless options_.nodes
  std::atomic<uint64_t> revision_{0};
  mutable std::mutex mu_;  // guards the members below
  // Decoded objects by (kind, name), with the resourceVersion decoded.
  mutable std::map<std::pair<std::string, std::string>, std::pair<std::string, api::Resource>>
      decoded_;
  mutable std::map<std::pair<std::string, std::string>, std::string> rejected_;  // rv -> logged
  std::map<std::pair<std::string, std::string>, std::string> published_;  // status as last written
  std::vector<std::weak_ptr<WatchCallback>> watchers_;
  std::map<std::string, std::string> event_names_;  // what an event says -> its object's name
};

}  // namespace loadstar::store
