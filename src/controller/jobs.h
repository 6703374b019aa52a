// Jobs' lifecycle: each declared Job is one workload of the GPU scheduler,
// its workers a gang placed all or none (Placement), in the same queues,
// fair shares and GPU-seconds as InferenceServices' replicas. Each pass:
//
//   Queued    waiting for a place, for its backoff after a failed attempt,
//             or for devices a preempted job is still checkpointing on
//   Running   an attempt's workers run; all ending 0 is Succeeded; one
//             ending otherwise stops the others and fails the attempt
//   Stopping  its workers were told to stop (SIGTERM, SIGKILL after
//             terminationGracePeriodSeconds): preempted -> Queued again;
//             a failed attempt -> Queued after a backoff while attempts
//             remain (backoffLimit), else Failed; deleted -> gone
//   Succeeded, Failed: its place given back, its record kept
//
// Preemption (the scheduler reclaiming a borrowing job's GPUs for a
// serving queue, or a higher priority in its own queue) never loses a job:
// it is requeued with its attempts and checkpoints, and what takes its
// devices waits until its workers have ended (Placement::blocker).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "api/resources.h"
#include "common/metrics_text.h"
#include "controller/events.h"
#include "controller/placement.h"
#include "controller/workers.h"

namespace loadstar::controller {

enum class JobPhase { kQueued, kRunning, kStopping, kSucceeded, kFailed };
const char* job_phase_name(JobPhase phase);

// What `loadstar get jobs` shows.
struct JobStatus {
  std::string name, queue;
  JobPhase phase = JobPhase::kQueued;
  uint32_t workers = 0;
  uint32_t running = 0;   // workers of the current attempt that run
  uint32_t attempts = 0;  // started
  uint32_t failures = 0;  // attempts that failed
  uint32_t preemptions = 0;
  double age_s = 0;
  double run_s = 0;  // wall time with an attempt running, all attempts
  double gpu_seconds = 0;
  std::vector<std::string> nodes;  // each worker's "node devices", while placed
  std::string message;             // why it waits, what it is doing, or how it ended
  std::string logs;                // where its workers' logs and checkpoints are
};

struct JobOptions {
  // After a failed attempt the next one waits backoff_s * 2^(failures-1),
  // at most backoff_max_s (as Kubernetes Jobs: 10 s, 6 min).
  double backoff_s = 10;
  double backoff_max_s = 360;
};

class Jobs {
 public:
  Jobs(WorkerRuntime& runtime, EventLog& events, JobOptions options = {})
      : runtime_(runtime), events_(events), options_(options) {}

  // The declared jobs this pass: new ones are queued (or, when every
  // worker of an attempt runs already, a previous controller's, taken over
  // where they run), removed ones stopped.
  void sync(std::vector<api::Job> declared, Placement& placement, double now);
  // Reads each running worker's state and moves jobs along; jobs done with
  // their place give it back to `placement`.
  void observe(Placement& placement, double now);
  // The jobs the scheduler must know of this pass (not those backing off
  // after a failed attempt: their GPUs are free meanwhile).
  std::vector<PlacementReplica> placement_units(double now) const;
  // Whether `name` is a job's (placement reports them with replicas').
  bool has(const std::string& name) const { return jobs_.count(name) > 0; }
  // The scheduler took its place (preempted or its node changed): its
  // workers stop within their grace period and it is queued again.
  void displaced(const std::string& name, const std::string& why, double now);
  // Why a queued job has no place.
  void waiting(const std::string& name, std::string why);
  // Starts every queued job whose gang is placed and free to start.
  void launch(Placement& placement, double now);
  // Stops every worker (the controller is stopping), each within its grace
  // period: nothing outlives it locally.
  void stop_all();
  bool any_running() const;

  std::vector<JobStatus> statuses(const Placement& placement, double now) const;
  // Jobs per queue and phase, and per job its attempts, failures,
  // preemptions and GPU-seconds (series of ended jobs stay until deleted).
  void render(MetricsText& text) const;

 private:
  // Why an attempt's workers are stopping; kRetry: a worker could not
  // start yet (its previous Pod is still going), no failure.
  enum class Stop { kNone, kPreempted, kFailed, kDeadline, kDeleted, kRetry };
  struct Job {
    api::Job job;
    JobPhase phase = JobPhase::kQueued;
    Stop stopping = Stop::kNone;
    bool deleted = false;
    uint32_t attempts = 0, failures = 0, preemptions = 0;
    std::vector<std::string> live;  // the current attempt's workers not yet ended
    std::vector<int> exit_codes;    // per worker of the current attempt; -1: running
    std::string message;
    double created_at = 0, started_at = 0, next_start = 0;
    double run_s = 0, gpu_seconds = 0, counted_to = 0;
  };
  void stop_workers(Job& j, Stop why, std::string message, double now);
  // Takes over an attempt whose every worker runs already; false: none.
  bool take_over(Job& j, const std::string& name, Placement& placement, double now);
  void end(Job& j, JobPhase phase, std::string message, Placement& placement);
  static std::string worker_name(const std::string& job, uint32_t index);
  double gpus_per_worker(const api::Job& job) const;

  WorkerRuntime& runtime_;
  EventLog& events_;
  JobOptions options_;
  std::map<std::string, Job> jobs_;
};

}  // namespace loadstar::controller
