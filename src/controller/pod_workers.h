// A Job's workers as Pods (Kubernetes mode): one Pod per worker, named
// "<job>-worker-<index>" in the job's namespace, owned by the Job (deleting
// it deletes them), created already bound where the controller's scheduler
// put it (`schedulerName: loadstar`, spec.nodeName), with restartPolicy
// Never (an ended worker is the attempt's business, not the kubelet's),
// the job's terminationGracePeriodSeconds (its checkpoint window), and the
// gang's environment (workers.h). The leader (worker 0) is created first;
// the others once it has an address, which they get as
// LOADSTAR_LEADER_ADDRESS / LWS_LEADER_ADDRESS (a Pod IP: no Service and
// no cluster DNS needed). A worker that fails reports its container's
// termination message (FallbackToLogsOnError: its own last log lines).
// How a job ended is read back from its status, which the controller
// publishes (`kubectl get lsjobs`). A controller that takes over adopts an
// attempt whose every worker Pod runs (running_workers()); one that lost some of
// its workers is stopped (within its grace period, so the rest checkpoint)
// and the job runs again.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "controller/workers.h"
#include "kube/client.h"
#include "kube/scope.h"
#include "store/kube_store.h"

namespace loadstar::controller {

struct PodWorkersOptions {
  std::string image_pull_policy = "IfNotPresent";
};

// The Pod of a worker (JSON), as PodWorkers creates it: `leader_address`
// is worker 0's Pod IP (empty for worker 0 itself).
kube::json worker_pod(const WorkerLaunch& launch, const std::string& namespace_name,
                      const std::string& job_uid, const std::string& leader_address,
                      const PodWorkersOptions& options);

class PodWorkers : public WorkerRuntime {
 public:
  PodWorkers(const kube::Client& client, const store::KubeStore& store,
             PodWorkersOptions options = {});
  ~PodWorkers() override;
  // Starts the Pod informer and waits for its first list.
  Status start(double timeout_s);

  Status start(const WorkerLaunch& launch) override;
  WorkerStatus status(const std::string& worker) override;
  void stop(const std::string& worker, double grace_s) override;
  std::string logs_of(const std::string& job) const override;
  std::optional<std::pair<std::string, std::string>> ended(const std::string& job) override;
  // Its worker Pods that run (bound, not ended, not being deleted).
  std::vector<RunningWorker> running_workers(const std::string& job) override;

 private:
  Status create(const WorkerLaunch& launch, const std::string& leader_address);
  std::string pod_path(const std::string& worker) const;

  const kube::Client& client_;
  const store::KubeStore& store_;
  PodWorkersOptions options_;
  const kube::NamespaceScope& scope_;
  std::unique_ptr<kube::ScopedInformer> pods_;
  // Followers waiting for their leader's address, with the job they run
  // (a copy: the launch's pointer lives only through start()).
  struct Waiting {
    WorkerLaunch launch;
    api::Job job;
    std::string leader;
  };
  std::map<std::string, Waiting> waiting_;
  std::set<std::string> stopping_;  // deleted by us: their disappearance is no failure
  std::map<std::string, std::chrono::steady_clock::time_point> created_;  // not yet seen
  // Pod IPs as last read: a follower created after its leader ended (a
  // short first attempt's leader) is still told where it was.
  std::map<std::string, std::string> addresses_;
};

}  // namespace loadstar::controller
