// batch/v1 Jobs admitted through Loadstar's queues (Kubernetes mode), the
// workloads users already have, as Kueue admits them. A Job labelled
// loadstar.dev/queue=QUEUE is one gang of `parallelism` pods, each asking
// what its pod template's containers ask (nvidia.com/gpu limits, cpu and
// memory requests), in that queue, at the priority its
// loadstar.dev/priority label gives (default 0), not preemptible (its pods
// are the Job controller's to restart, not Loadstar's to stop), placed all
// or none like Loadstar's own Jobs and sharing their fair shares and
// GPU-seconds. Until admitted it is held:
//   - created with spec.suspend: true (Kubernetes >= 1.21, Kueue's way), it
//     is un-suspended when admitted, and its Job controller creates pods;
//   - pods whose template names `schedulerName: loadstar` (KAI's and
//     Volcano's way, the only one Kubernetes 1.20 has) wait unbound until
//     Loadstar binds each to a node its gang was placed on (pods/binding).
// A Job that does neither cannot be held (its pods run wherever its
// scheduler puts them): it is not admitted, and says why — unless it runs
// already where a previous controller admitted it (below). Where it stands
// is written on the Job as the annotation loadstar.dev/admission
// ("Waiting: <the scheduler's reason>", "Admitted: queue Q, nodes ..."),
// which `kubectl describe job` shows. Where it was placed is recorded on it
// (loadstar.dev/placement: each pod's node and cards), so that a controller
// that takes over holds the same place for it while it runs (read on its
// first pass only: a Job created later with the annotation copied into it
// is not taken over). Its place is
// given back when the Job completes or fails (its conditions), is deleted,
// or stops being one Loadstar admits (its label removed).
// A suspended Job is un-suspended once per admission, its pods steered to
// the gang's nodes (required node affinity on their hostnames, where the
// API server lets a suspended Job's template change: Kubernetes 1.27+).
// Suspending an admitted Job again is not honoured yet.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "api/resources.h"
#include "controller/admission.h"
#include "kube/client.h"
#include "kube/scope.h"

namespace loadstar::controller {

inline constexpr const char* kQueueLabel = "loadstar.dev/queue";
inline constexpr const char* kPriorityLabel = "loadstar.dev/priority";
inline constexpr const char* kAdmissionAnnotation = "loadstar.dev/admission";

inline constexpr const char* kPlacementAnnotation = "loadstar.dev/placement";

// What a batch/v1 Job (JSON) asks of the scheduler, as one of Loadstar's
// Jobs named `name`; an error says why it cannot be admitted (not held —
// unless `admitted` already —, no parallelism, a quantity that does not
// parse).
Result<api::Job> admitted_workload(const kube::json& job, const std::string& name,
                                   bool admitted = false);

// Where a running (not suspended) Job's pods were placed, as the controller
// that admitted it recorded (loadstar.dev/placement): one node, with its
// cards, per pod of its parallelism; none when it records no such thing.
std::optional<std::vector<Placed>> recorded_placement(const kube::json& job);

class BatchAdmission : public Admissions {
 public:
  BatchAdmission(const kube::Client& client, const kube::NamespaceScope& scope);
  ~BatchAdmission() override;
  // Starts the Job and Pod informers and waits for their first lists.
  Status start(double timeout_s);

  std::vector<PlacementReplica> placement_units(Placement& placement) override;
  bool has(const std::string& name) const override { return units_.count(name) > 0; }
  void waiting(const std::string& name, const std::string& why) override;
  void release(Placement& placement, double now) override;

 private:
  struct Unit {
    std::string namespace_name, job_name, uid;
    api::Job workload;
    bool suspended = false;
  };
  // Writes the admission annotation when it changed.
  void say(const std::string& name, const std::string& namespace_name, const std::string& job_name,
           const std::string& what);
  // Binds the job's unbound pods to the nodes of its gang that have room.
  void bind(const Unit& unit, const std::vector<Placed>& members);

  const kube::Client& client_;
  const kube::NamespaceScope& scope_;
  std::unique_ptr<kube::ScopedInformer> jobs_, pods_;
  std::map<std::string, Unit> units_;        // this pass's, by workload name
  std::map<std::string, std::string> said_;  // the annotation as last written
  std::set<std::string> submitted_;          // given to the scheduler, until gone
  std::set<std::string> placed_;             // holding a place
  std::set<std::string> unsuspended_;        // un-suspended in this admission
  bool first_pass_ = true;                   // Jobs a previous controller placed are taken over
};

}  // namespace loadstar::controller
