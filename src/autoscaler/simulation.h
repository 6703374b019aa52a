// A virtual-time model of one autoscaled service under a request trace: the
// autoscaler's own core deciding, engine-sim's own core (vLLM's scheduler
// and the step cost model) serving on each replica, and between them what
// `loadstar up` does — a gateway sending each request to the ready replica
// with the fewest in flight (holding it while none is ready; with flow
// control, queueing it in the gateway's own FlowQueue while every ready
// replica has its limit in flight), a controller
// pass sampling the load and acting on the decision, replicas that take a
// cold start to become ready and drain before they stop. It runs an hour of
// trace in seconds, so a policy can be tried on a trace before a real run;
// what it leaves out is listed in docs/autoscaling.md ("Simulating a
// policy"). Pure: no I/O, no clock, no threads.
//
// Time: a run of `loadstar up` compressed `time_scale` times (engine-sim's
// --time-scale) is modelled in model seconds. The service's spec, the cold
// start and the controller's period are in wall seconds of that run, as a
// manifest for it is written, and are multiplied by `time_scale`; TTFT
// buckets likewise (the gateway counts first tokens in wall seconds).
// Results are in model seconds, as trace_replay reports them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "autoscaler/autoscaler.h"
#include "common/result.h"
#include "engine/engine_core.h"

namespace loadstar::autoscaler {

struct TraceRequest {
  double at_s = 0;  // since the trace's first request
  uint32_t input_tokens = 0;
  uint32_t output_tokens = 0;
};

// Azure's LLM inference trace (TIMESTAMP,ContextTokens,GeneratedTokens; the
// header first). `source` names the file in errors, with the line.
Result<std::vector<TraceRequest>> parse_azure_trace(std::string_view csv,
                                                    const std::string& source);

// Replicas asked for over time: counts[i] from i × step_s (model seconds)
// on, the last one after.
struct Schedule {
  double step_s = 1;
  std::vector<uint32_t> counts;
  uint32_t at(double t) const;
};

struct SimOptions {
  engine::EngineConfig engine;   // one replica
  double time_scale = 1;         // model seconds per wall second of the modelled run
  double cold_start_s = 1;       // a new replica's creation to ready (wall)
  double period_s = 0.1;         // between controller passes (wall; its resync)
  double unroute_grace_s = 0.5;  // a drained replica stops no sooner (wall)
  double drain_timeout_s = 30;   // nor later, in flight or not (wall)
  double slo_ttft_s = 2;         // model seconds
  uint32_t replicas = 1;         // at the start, ready
  // The gateway's flow control (routing::flow_control): at most this many
  // requests in flight on a ready replica; the others wait in the gateway's
  // queue (at most max_queued, queue_timeout_s each, wall). 0: off, every
  // request goes to a replica at once and waits in its engine's queue.
  uint32_t max_in_flight_per_replica = 0;
  uint32_t max_queued = 1024;
  double queue_timeout_s = 60;
  // The queue serves first the requests that can still meet this TTFT
  // (model seconds; the gateway's, for a service with autoscaling.slo, by
  // that SLO); none: first come, first served. Apart from `autoscaling`, so
  // that static baselines keep the same queue.
  std::optional<double> queue_slo_s;
  // None: a static service of `replicas`. Durations in wall seconds.
  std::optional<Spec> autoscaling;
  // Without `autoscaling`: the count set from outside at each controller
  // pass (the baselines' oracles), not a static one.
  std::optional<Schedule> schedule;
};

struct SimSample {  // the service every `period`, for a timeline
  double at_s = 0;
  uint32_t replicas = 0;  // ready, starting and draining
  uint32_t ready = 0;
  uint32_t in_flight = 0;
};

struct SimReport {
  uint64_t requests = 0;
  uint64_t rejected = 0;  // the engine refused them (too long, or its waiting queue full)
  uint64_t held = 0;      // arrived while no replica was ready
  uint64_t cut_off = 0;   // still running when their replica's drain timed out
  uint64_t refused = 0;   // the gateway's queue was full, or they waited past its timeout
  double slo_attainment = 0;
  double gpu_seconds = 0;  // replica lifetimes, creation to stop, over the run
  double run_s = 0;        // first arrival to last answer
  uint32_t cold_starts = 0;
  uint32_t scale_changes = 0;  // decisions that changed the count
  uint32_t peak_replicas = 0;
  double ttft_p50_s = 0, ttft_p90_s = 0, ttft_p99_s = 0;
  std::vector<SimSample> timeline;
};

// Replays `trace` (arrivals in model seconds) against the service.
Result<SimReport> simulate(const std::vector<TraceRequest>& trace, const SimOptions& options);

// What an autoscaler is judged against on a trace, from static runs of the
// same replica (`options`' engine, cold start and SLO; its autoscaling is
// ignored): the fewest static replicas, 1 to `max_replicas`, that answer
// `attainment` of the requests within the SLO (chosen in hindsight: the
// best a user who knew the trace could deploy), and the clairvoyant bound —
// under a static `max_replicas`, the replicas each `window_s` needs for its
// busiest moment's requests in flight at one per slot (max_num_seqs),
// ready at once: no policy that serves every request without queueing pays
// less.
//
// And oracles: counts set from outside (`Schedule`) from each moment's
// need — its requests in flight under that static count, one per slot —
// paying the cold start. Each pass one asks for (1 + headroom) × the most
// that any moment of the last `memory_s` needed: a reactive one up to this
// pass (what a controller's pass sees: the load as soon as it comes, and no
// sooner), one with foresight up to a cold start ahead. A yardstick, not a
// bound: what reacting at once to the true load, with headroom and memory
// chosen in hindsight, meets and costs (a policy that lets requests queue
// in a busy minute may need fewer replicas than one per slot).
struct BaselineOptions {
  double attainment = 0.99;
  uint32_t max_replicas = 40;
  double window_s = 10;
  // Also search the reactive oracles (16 more runs).
  bool reactive_oracles = false;
};
struct Oracle {
  double headroom = 0;
  double memory_s = 0;
  bool foresight = false;
  SimReport report;
};
struct Baselines {
  std::optional<uint32_t> best_static;  // none: even max_replicas misses the goal
  SimReport best_static_report;
  double clairvoyant_gpu_seconds = 0;
  // Headroom 0, memory window_s: about the clairvoyant bound's replicas,
  // started in time.
  Oracle foresight;
  // With `reactive_oracles`: the cheapest reactive oracle that meets the
  // goal, headroom 0, 0.25, 0.5 or 1 and memory window_s, 60, 300 or 1200
  // model seconds; none: none of the 16 does.
  std::optional<Oracle> best_reactive;
};
Result<Baselines> baselines(const std::vector<TraceRequest>& trace, SimOptions options,
                            const BaselineOptions& baseline);

// An oracle's counts, one per step of `need` (each step's need): (1 +
// headroom) × the most needed from `memory_steps` before the step to
// `ahead_steps` after it (0: reactive), at most `most`; `initial` stands
// for the need before the first step, and one replica stays past the last.
Schedule oracle_schedule(const std::vector<uint32_t>& need, double step_s, uint32_t initial,
                         double headroom, size_t memory_steps, size_t ahead_steps, uint32_t most);

}  // namespace loadstar::autoscaler
