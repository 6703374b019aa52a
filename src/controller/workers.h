// Where a Job's workers run: the seam between the controller's job
// lifecycle (jobs.h) and processes. `loadstar up` runs them as child
// processes (LocalWorkers); Kubernetes mode as Pods. The lifecycle decides
// when an attempt starts and stops; a runtime starts, watches and stops
// workers by name.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "api/resources.h"
#include "common/result.h"
#include "controller/runtime.h"  // DeviceShare

namespace loadstar::controller {

struct WorkerLaunch {
  std::string worker;  // "<job>-worker-<index>"; at most one process (Pod) per name
  const api::Job* job = nullptr;
  uint32_t index = 0;    // 0: the leader
  uint32_t attempt = 1;  // 1 + failed attempts + preemptions
  std::string node;      // where the scheduler placed it
  std::string devices;   // "gpu0,gpu1", "gpu0:500m"
  std::vector<DeviceShare> shares;
};

// A worker that runs already: a controller that takes over finds its Pod.
struct RunningWorker {
  std::string worker;  // as WorkerLaunch::worker
  uint32_t index = 0;
  uint32_t attempt = 0;
  std::string node, devices;
  std::vector<DeviceShare> shares;
};

struct WorkerStatus {
  bool exists = false;  // started and not yet gone
  bool exited = false;  // it ended (the runtime then forgets it)
  int exit_code = 0;    // once exited: 0 succeeded; 128+N a signal
  std::string message;  // an exited worker's own last error line, with where its log is
};

// The environment every worker gets (both runtimes), besides the job's own
// spec.env: who it is within its gang and where the leader is, in
// Loadstar's names, LeaderWorkerSet's (LWS_LEADER_ADDRESS, LWS_GROUP_SIZE,
// LWS_WORKER_INDEX) and an Indexed batch/v1 Job's (JOB_COMPLETION_INDEX).
std::map<std::string, std::string> worker_env(const WorkerLaunch& launch,
                                              const std::string& leader_address);

class WorkerRuntime {
 public:
  virtual ~WorkerRuntime() = default;
  // Starts one worker. kUnavailable: not yet (try again next pass); other
  // errors: it cannot start (the attempt fails).
  virtual Status start(const WorkerLaunch& launch) = 0;
  virtual WorkerStatus status(const std::string& worker) = 0;
  // SIGTERM now, SIGKILL after `grace_s` (its time to checkpoint). It
  // exists until it has ended.
  virtual void stop(const std::string& worker, double grace_s) = 0;
  // Where the job's workers' logs and checkpoints are, for `loadstar get jobs`.
  virtual std::string logs_of(const std::string& job) const = 0;
  // How a job ended ("Succeeded" or "Failed", and a message), kept where a
  // restarted controller finds it: an ended job is not run again. forget()
  // drops it (the job was deleted; one created again under its name runs).
  virtual void record_end(const std::string& /*job*/, const std::string& /*phase*/,
                          const std::string& /*message*/) {}
  virtual std::optional<std::pair<std::string, std::string>> ended(const std::string& /*job*/) {
    return std::nullopt;
  }
  virtual void forget(const std::string& /*job*/) {}
  // The workers of `job` that run already, started by a controller before
  // this one (Pods outlive it; local processes do not: none).
  virtual std::vector<RunningWorker> running_workers(const std::string& /*job*/) { return {}; }
};

}  // namespace loadstar::controller
