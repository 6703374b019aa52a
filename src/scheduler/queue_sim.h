// `loadstar sim queues`: three teams share one GPU cluster through queues
// with different deserved quotas and over-quota weights, arriving and
// leaving at different times, in virtual time. It drives the Scheduler
// itself and records each queue's GPU share against its fair share, and the
// reclaims that bring a lender back to its deserved quota.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace loadstar::scheduler {

struct QueueSimOptions {
  uint32_t nodes = 16;  // 8 GPUs each
  double duration_s = 3600;
  double tick_s = 10;
  uint64_t seed = 7;
};

struct QueueSimResult {
  struct Series {
    std::string name;
    std::vector<std::pair<double, double>> points;  // (time, share of cluster GPUs)
    bool dashed = false;                            // fair share
  };
  std::vector<Series> series;
  std::string csv;
  std::string summary;  // human-readable, per phase
  uint64_t preemptions = 0;
  // Per phase and queue: mean |share - fair share| after the first two
  // minutes of the phase, in shares of the cluster.
  double worst_steady_gap = 0;
};

QueueSimResult run_queue_sim(const QueueSimOptions& options);

}  // namespace loadstar::scheduler
