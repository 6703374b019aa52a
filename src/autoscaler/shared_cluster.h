// `loadstar sim shared`: a day of serving, training and batch work on an
// openb-sized cluster, once shared through Loadstar's queues and once on
// statically split clusters, in virtual time with the product's own cores:
// the GPU scheduler (queues, gangs, reclaim, FGD placement) and the
// autoscaler.
//
// - Serving: one autoscaled service of `replica_gpus`-GPU replicas
//   (priority 100, not preemptible). Its in-flight requests follow the
//   Azure LLM trace's arrival rate (5-minute windows), stretched over the
//   day and scaled so that the peak asks for `serving_peak_share` of the
//   cluster's GPUs at `in_flight_per_replica`; the autoscaler's core
//   (panic and stable windows, scale-down stabilization) turns that into
//   replicas, each ready `replica_start_s` after it is placed.
// - Jobs: rows of an openb pod list with GPUs — their CPU, memory, GPU
//   count or share, GPU models and lifetime (deletion - creation) — in two
//   queues: best-effort QoS as batch (priority 0), the rest as training
//   (priority 10); all preemptible, a preempted job keeping the work it had
//   done (it checkpoints in its grace period). Each queue keeps `backlog`
//   jobs waiting (demand that never runs out; the same seeded stream in
//   every run), so utilisation measures how much of the cluster each way
//   of sharing can use.
// - Shared: queues serving (deserves its peak), training (deserves the
//   rest), batch (deserves nothing, borrows): jobs borrow serving's idle
//   GPUs and the autoscaler's replicas reclaim them; a replica whose place
//   preempted a job waits `grace_s` more (the job's checkpoint).
// - Split: nodes given to serving up to a share of the GPUs (taken
//   proportionally along the node list), the rest to jobs; no borrowing.
//   Shares are swept in `split_step`s and the best utilisation whose
//   serving SLO holds is the baseline.
// - The serving SLO: replica-seconds the autoscaler wanted but that had no
//   place (or waited on a checkpoint) at most `slo_pending` of the wanted.
//
// Pure: the caller reads the files; no clock, no threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "autoscaler/simulation.h"  // TraceRequest
#include "common/result.h"

namespace loadstar::autoscaler {

struct SharedClusterOptions {
  double day_s = 86400;
  double tick_s = 30;  // a scheduler pass and an autoscaler decision
  double serving_peak_share = 0.5;
  uint32_t replica_gpus = 1;
  double in_flight_per_replica = 8;
  uint32_t backlog = 200;
  double grace_s = 30;
  double replica_start_s = 60;
  double slo_pending = 0.005;
  double split_step = 0.05;
  uint64_t seed = 7;
  std::string policy = "loadstar";
  // Which replica a scale-down removes: "emptiest-node" (the controller's
  // rule: the one whose node has the most free GPU) or "newest" (its rule
  // before, highest index first).
  std::string scale_down = "emptiest-node";
};

struct SharedClusterRun {
  std::string name;
  double serving_share = 0;    // split: the GPUs given to serving; shared: 1
  double utilisation = 0;      // allocated GPU-seconds over the cluster's
  double serving_pending = 0;  // wanted replica-seconds without a place, over the wanted
  double wanted_replica_hours = 0;
  double job_gpu_hours = 0;
  uint64_t jobs_finished = 0;
  uint64_t preemptions = 0;
  bool slo_kept = false;
  bool stopped_early = false;  // over the SLO's allowance before the day ended
  double simulated_s = 0;
};

struct SharedClusterReport {
  uint32_t nodes = 0;
  double gpus = 0;
  uint32_t peak_replicas = 0;
  std::vector<SharedClusterRun> splits;
  SharedClusterRun shared;
  int best_split = -1;  // index into splits; -1: no split kept the SLO
  std::string table;    // human-readable
  std::string csv;
};

Result<SharedClusterReport> run_shared_cluster(std::string_view nodes_csv,
                                               std::string_view pods_csv,
                                               const std::vector<TraceRequest>& trace,
                                               const SharedClusterOptions& options);

}  // namespace loadstar::autoscaler
