// A canary rollout's analysis (spec.rollout.canary): what the gateways saw
// of the canary revision and of the stable one during a step, and the
// verdict on it. Pure: the controller feeds it the per-pass increments of
// its load rounds and acts on the verdict (next step, roll back, promote),
// as Argo Rollouts' and Flagger's analysis runs do with their metrics.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "api/resources.h"
#include "controller/load.h"

namespace loadstar::controller {

// One group's requests since its step began.
struct CanarySample {
  uint64_t requests = 0;  // attempts the gateways sent
  uint64_t failures = 0;  // of which failed (5xx, connect errors, streams cut)
  std::array<uint64_t, gateway::Endpoint::kTtftBuckets> ttft{};
  std::array<uint64_t, gateway::Endpoint::kItlBuckets> itl{};

  void add(const ReplicaLoad& load);
  double error_rate() const;
  std::optional<double> ttft_p99() const;
  std::optional<double> itl_p99() const;
};

struct CanaryVerdict {
  enum Kind { kWait, kPass, kFail } kind = kWait;
  std::string reason;  // what was measured, against which bound
};

// A step, `held_s` into its `pause_s`: failed as soon as the canary has
// minRequests and breaches a bound; passed once the pause is over with
// minRequests and no breach; else wait. Latency is compared only where
// both groups have minRequests samples, and with the stable's p99 taken as
// at least 100 ms (TTFT) and 20 ms (ITL).
CanaryVerdict judge_step(const api::CanaryAnalysis& analysis, const CanarySample& canary,
                         const CanarySample& stable, double held_s, double pause_s);

// The replicas a canary step runs at `weight` percent of `desired`: at
// least one, at most desired.
uint32_t canary_replicas(uint32_t desired, uint32_t weight);

}  // namespace loadstar::controller
