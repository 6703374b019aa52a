// The autoscaler's pure core: from a stream of load samples, how many
// replicas a service should have, and why. No I/O, no clock: every call
// takes the time (seconds, any epoch), so the controller drives it with the
// real clock and tests and simulations with a virtual one.
//
// Knative's KPA shape, on AI signals: each target (waiting requests per
// replica, in-flight requests per replica, KV-cache use, queued prefill
// tokens per replica, TTFT or inter-token latency p90 against an SLO)
// recommends a replica count from its average over the stable window
// (60 s); the same over the panic window (6 s) that asks for at least
// `panic_threshold` times the current count enters panic mode, which scales up
// on the panic window and never scales down until the stable window has passed
// without panic. Scale-up per decision is bounded by `max_scale_up_rate`;
// scale-down takes the highest recommendation of the last
// `scale_down_stabilization_s` (as the HPA does, seeded with the count at the
// first decision), so noise does not flap. TTFT p90 is judged only on first
// tokens answered since the ready count last changed (within the window):
// evidence from a smaller serving set says nothing about the current one, and
// would keep voting after the replicas it asked for are serving (the gateway
// also counts only requests that arrived since its set of ready endpoints
// changed: Endpoint::ttft_epoch_ms); with too few
// answers to judge it holds the ready count. Over its target, each doubling of
// the p90 asks for one more replica than are ready: TTFT says the service is
// short, not by how much (queueing delay grows without bound). With min 0, a
// service scales to zero only after `idle_window_s` with no request, no request
// in flight and none held (counted from the first sample for a new service); a
// held request brings it back at once.
//
// With an SLO (Spec::slo_ttft_s) the in-flight target is not set by hand:
// a curve of the share of first tokens over the SLO against in-flight
// requests per replica is learned from the service's own answers, and the
// count is the fewest replicas that keep the expected share within the goal
// for the window's load (slo_capacity.h), projected along the arrival trend
// for the stable window. The stable window's count also covers the load of
// the last five stable windows, so a lull does not shed the replicas the
// next burst needs. Arrivals (the trend, the offered load, each sample's
// weight) are counted where the gateway meets them: sent, held or in its
// flow-control queue, since while the replicas are saturated the sends keep
// their pace, not the arrivals'. While requests are held at the gateway
// (none ready, at zero or before the first replica is up) in-flight counts
// none of them: the load is then the offered load instead (offered_load.h:
// the arrival rate times how long a request ran before), so a service back
// from zero asks at once for the replicas its arrivals need, not for one.
// Requests queued at the gateway past the SLO (a burst's onset, a restart's
// held requests) are left out of the load, and out of the in-flight count
// the curve learns against: they have missed whatever the count, and the
// gateway's queue serves them only with room no request that can still meet
// the SLO wants.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "autoscaler/offered_load.h"
#include "autoscaler/slo_capacity.h"

namespace loadstar::autoscaler {

struct Spec {
  uint32_t min_replicas = 1;
  uint32_t max_replicas = 1;
  // Targets; unset ones do not vote. With none set, in-flight requests per
  // replica (the KPA default, concurrency) at 8.
  std::optional<double> waiting_per_replica;
  std::optional<double> in_flight_per_replica;
  std::optional<double> kv_cache_usage;  // 0..1, mean over ready replicas
  std::optional<double> ttft_p90_slo_s;
  // Inter-token latency p90 against an SLO (a decode pool's signal), judged
  // as TTFT is.
  std::optional<double> itl_p90_slo_s;
  // Prompt tokens sent to the replicas and not yet answered with a first
  // token, per replica (a prefill pool's signal: its queued prefill work).
  std::optional<double> prefill_tokens_per_replica;
  // LoRA: distinct adapters one replica runs at once (spec.lora.maxLoras).
  // Set, the distinct adapters requests run or wait on vote for enough
  // replicas to give each a slot (requests for an adapter beyond them wait
  // for one to drain). Not a target of its own: the default in-flight
  // target still applies when nothing else is set.
  std::optional<double> adapters_per_replica;
  // A TTFT SLO to hold for `slo_attainment` of the requests. Set, the count
  // is sized by a miss curve learned from the answers against it
  // (slo_capacity.h; in_flight_per_replica, when set, sizes it only until
  // the curve is learned) for the window's in-flight load projected along
  // the arrival trend over `lead_time_s`.
  std::optional<double> slo_ttft_s;
  double slo_attainment = 0.99;
  double lead_time_s = 30;  // a replica's creation to serving
  double stable_window_s = 60;
  double panic_window_s = 6;
  double panic_threshold = 2;
  double max_scale_up_rate = 10;  // at most this many times the current count (and +1)
  double scale_down_stabilization_s = 60;
  // As the HPA's: a target that asks for within this share of the current
  // count keeps the count (a load hovering at a boundary does not flap); a
  // TTFT p90 within this share over its target counts as on target.
  double tolerance = 0.1;
  double idle_window_s = 300;
  // Upper bounds of the TTFT buckets that samples count first tokens into
  // (one more bucket: above the last bound); none, and TTFT cannot vote.
  std::vector<double> ttft_bounds;
  // Fewer first tokens than this since the serving set last changed are no
  // evidence: TTFT does not vote.
  uint32_t ttft_min_answers = 10;
  // The same for inter-token gaps (ITL): Sample::itl_counts' buckets.
  std::vector<double> itl_bounds;
  uint32_t itl_min_answers = 100;
};

// One observation of the service, summed over its ready replicas.
struct Sample {
  double now = 0;
  uint32_t ready = 0;         // replicas serving
  double waiting = 0;         // requests queued in the engines (and in the gateway's queue)
  double in_flight = 0;       // requests the gateway has sent and not finished (or queued)
  double kv_cache_usage = 0;  // mean over ready replicas, 0..1
  double adapters = 0;        // distinct LoRA adapters running or waiting
  // First tokens the gateway saw since the previous sample, per TTFT bucket
  // (Spec::ttft_bounds; empty when none).
  std::vector<uint64_t> ttft_counts;
  // With an SLO: requests that reached it without a first token since the
  // previous sample (a miss known at the deadline), and those of them whose
  // first token came since (also in ttft_counts: counted once, as overdue).
  uint64_t ttft_overdue = 0;
  uint64_t ttft_overdue_answered = 0;
  std::vector<uint64_t> itl_counts;  // inter-token gaps, per ITL bucket (Spec::itl_bounds)
  double prefill_tokens = 0;         // prompt tokens awaiting their first token, all replicas
  uint32_t held = 0;                 // requests held at the gateway now, for lack of a replica
  uint64_t requests_total = 0;  // requests ever sent (idleness; with held and queued, arrivals)
  double queued = 0;  // of in_flight (and waiting): in the gateway's flow-control queue now
  // Of queued: requests already past the TTFT SLO, which miss it whenever
  // they are served. The gateway's queue serves them only when no request
  // that can still meet it waits, so with an SLO they are left out of the
  // load (a backlog needs no replicas of its own).
  double queued_overdue = 0;
  // Requests ever turned away at the gateway for want of a replica with
  // room (a full queue, a queue or hold timeout): arrivals never sent.
  uint64_t turned_away_total = 0;
};

struct Decision {
  uint32_t desired = 0;
  // Nodes that should hold the model's weights now: `desired`, and on a
  // rising trend (the panic window's average asks for more than the stable
  // window's) one more than the larger of the two, within max_replicas — so
  // the next replica's weights are staged before it is needed.
  uint32_t stage_ahead = 0;
  bool panic = false;
  std::string signal;  // which one decided: waiting, inFlight, slo, kvCache, prefillTokens, ttft,
                       // itl, idle, held, bounds, none
  double value = 0;    // its value (average over the window used)
  std::string reason;  // e.g. "inFlight 24.0 over 60s at target 8/replica -> 3"
};

// The `q` quantile (0..1) of a histogram given as per-bucket counts with
// upper `bounds` (counts has one more entry: above the last bound), by
// linear interpolation inside the bucket, as Prometheus' histogram_quantile
// does; nullopt without samples or without bounds. Above the last bound: the
// last bound.
std::optional<double> histogram_quantile(double q, const double* bounds, const uint64_t* counts,
                                         size_t buckets);

class Autoscaler {
 public:
  explicit Autoscaler(Spec spec);

  void observe(const Sample& sample);
  // The desired count at `now`, given `current` replicas (ready or starting).
  Decision decide(double now, uint32_t current);

  const Spec& spec() const { return spec_; }
  // How long a new replica takes to serve, as last measured: how far ahead
  // the arrival trend is projected.
  void set_lead_time(double seconds) {
    if (slo_) slo_->set_lead_time(seconds);
  }

 private:
  // The p90 of a latency histogram's answers in a window, on the current
  // serving set, and how many answers there were.
  struct Latency {
    std::optional<double> p90;
    uint64_t answers = 0;
  };
  struct Window {
    double waiting = 0, in_flight = 0, kv_per_replica = 0, ready = 0, adapters = 0;
    double overdue = 0;  // of in_flight, queued at the gateway past the SLO (with an SLO)
    double prefill_tokens = 0;
    Latency ttft, itl;
    int samples = 0;
    std::vector<LoadSample> loads;  // each sample's in flight and arrivals (with an SLO)
    bool stable = false;            // the stable window's (not the panic window's)
  };
  Window average(double now, double window) const;
  // The count each target asks for; the largest wins. `trend` scales the
  // in-flight load the learned capacity sizes for (the stable window's
  // projection; 1 for the panic window's).
  uint32_t recommend(const Window& w, uint32_t current, double trend, std::string& signal,
                     double& value, std::string& reason) const;

  Spec spec_;
  std::deque<Sample> samples_;  // the stable window's
  // For scale-down stabilization; the first decision records the count the
  // service had, so a service is not shrunk before a window of evidence
  // (as Kubernetes' HPA seeds its recommendations).
  std::deque<std::pair<double, uint32_t>> recommendations_;
  bool decided_ = false;
  std::optional<double> panic_until_;
  double serving_since_ = 0;  // when the ready count last changed: TTFT evidence starts there
  uint64_t last_requests_ = 0;
  uint64_t last_turned_away_ = 0;
  // Requests that reached the gateway: sent, turned away, or held or queued
  // there now (never less than before, but for a restarted counter).
  double arrived_total_ = 0;
  std::optional<double> last_activity_;
  std::optional<SloCapacity> slo_;
  // With an SLO: the load the arrivals offer, which sizes the service while
  // requests are held (see observe()).
  std::optional<OfferedLoad> offered_;
  std::optional<OfferedLoad::Reading> offered_now_;  // the last sample's, when it sized it
  // With an SLO: the load samples of the last kHoldWindows stable windows,
  // which the stable count covers too.
  static constexpr double kHoldWindows = 5;
  std::deque<std::pair<double, LoadSample>> held_loads_;
  std::optional<double> last_step_down_;
  std::optional<double> first_request_;  // the first sample with a request
  // With an SLO: the replicas asked for have all served at least once since
  // the curve was learned; from then on each count's expected misses are
  // measured against the answers (before, the count was the service's
  // starting guess, not a decision).
  bool caught_up_ = false;
};

}  // namespace loadstar::autoscaler
