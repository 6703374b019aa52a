// The Alibaba "openb" GPU cluster trace (ATC'23 FGD paper) as scheduler
// input, and the paper's fill experiment: tasks arrive (in the paper's
// shuffled order, or in creation order) and never leave, and the GPU allocation ratio is recorded
// against the arrived workload. Parses text; the caller reads the files.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "scheduler/cluster.h"
#include "scheduler/placement.h"

namespace loadstar::scheduler {

struct TraceTask {
  std::string name;
  PodRequest request;
  double created_s = 0;
  // Where the list has them (`deletion_time`, `qos`): when it was deleted,
  // with a creation time too; whether its QoS is best-effort ("BE").
  std::optional<double> deleted_s;
  bool best_effort = false;
};

// `sn,cpu_milli,memory_mib,gpu,model`: adds every node to `cluster`.
// `source` names the input in error messages ("file:line: ...").
Status load_openb_nodes(std::string_view csv, std::string_view source, Cluster& cluster);
// `name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec][,creation_time][,qos][,deletion_time]...`,
// sorted by creation time (file order without that column). GPU models in gpu_spec are interned in
// `cluster`.
Result<std::vector<TraceTask>> load_openb_pods(std::string_view csv, std::string_view source,
                                               Cluster& cluster);

// The trace, then tasks drawn from it at random (seeded) until the arrived
// GPU demand reaches `ratio` of `gpu_milli_total` (the paper inflates the
// workload past the cluster's capacity this way).
std::vector<TraceTask> inflate(const std::vector<TraceTask>& tasks, uint64_t gpu_milli_total,
                               double ratio, uint64_t seed);

// The paper's own simulator's arrival (hkust-adsl/kubernetes-scheduler-
// simulator with shufflePod and workloadTuningConfig, as its experiments
// ran): the trace's tasks sorted by name and shuffled (seeded), then tasks
// drawn from them at random, with replacement, appended while the arrived
// GPU demand stays within `ratio` of `gpu_milli_total` (the first draw whose
// per-card request would pass it ends the drawing).
std::vector<TraceTask> paper_arrival(const std::vector<TraceTask>& tasks, uint64_t gpu_milli_total,
                                     double ratio, uint64_t seed);

struct FillPoint {
  double arrived = 0;    // GPU demand arrived so far / cluster GPU capacity
  double allocated = 0;  // GPU capacity allocated / cluster GPU capacity
  uint64_t tasks = 0;
  uint64_t unplaced = 0;  // tasks that fitted nowhere so far
};

// Places every task in order with `placer` (tasks that fit nowhere are
// skipped) and records a point each time arrived demand passes a multiple of
// `step`, and at the end.
std::vector<FillPoint> fill(Cluster& cluster, Placer& placer, const std::vector<TraceTask>& tasks,
                            double step);

// Several runs' curves (of the same `step`) averaged point by point, as the
// paper averages its seeds: the points they all have, then the mean of
// their ends.
std::vector<FillPoint> mean_curve(const std::vector<std::vector<FillPoint>>& runs);

}  // namespace loadstar::scheduler
