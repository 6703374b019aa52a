// How many replicas a service needs to hold its TTFT SLO, learned from the
// service's own answers rather than from a per-replica target set by hand;
// and where its arrivals are heading. Pure: no I/O, no clock (every call
// takes the time in seconds).
//
// A fixed in-flight target per replica is the right shape of load measure
// (by Little's law in-flight requests are the arrival rate times how long a
// request stays, so longer outputs and slower prefills both raise it), but
// the level a replica holds at the SLO depends on the engine, the GPU and
// the request mix: 3.5 of 4 slots on a chat trace, fewer on long prompts
// with short outputs, where prefill compute runs out before the slots do;
// and how far above the average the load goes depends on how bursty the
// arrivals are. Both are learned here:
//
// - The miss curve: for each level of in-flight requests per ready replica
//   (log-spaced bins, 16 per doubling), the share of first tokens answered
//   over the SLO at that level — a request still unanswered at the SLO
//   counts as a miss then, at the level of that moment, not when its answer
//   comes — from every pass on a settled serving set
//   (the answers counted are of requests that arrived since the set last
//   changed), decayed with a half-life (`memory_s`) so a changed mix is
//   followed. Fitted non-decreasing (pool-adjacent-violators): more load per
//   replica never helps. Between levels seen it reads as the level below
//   over the first quarter of the gap (a quarter above it at most), then as
//   the line to the level above: the levels between where the service has
//   been are tried a step at a time, closing in on where misses begin. Beyond the highest level
//   seen it stays as there up to a quarter above (one replica fewer than five or more can be
//   tried), then rises to every answer missed at twice that: an untried level is assumed bad, but
//   not hopeless. Below the lowest level seen it falls to none at half that level (an untried
//   lighter load is assumed better: more replicas are the safe way to err, and trying them teaches
//   the curve). The bursts a service has anyway reach levels well above its average, so the curve
//   is learned over the range a decision needs without overloading on purpose.
// - The load: the window's samples of in-flight requests, each weighted by
//   the requests that arrived in it (a miss is a request's), scaled by the
//   arrival trend.
//
// The count for a window: the fewest replicas whose expected share of
// misses — the load samples spread over them, read off the curve — is within
// the allowed share above the floor: the share missed where replicas held
// at most one request each, which no count of replicas removes (a prompt
// whose prefill alone takes longer than the SLO). Before `min_answers`
// answers there is no curve, and the first guess per replica (`initial`)
// sizes it.
//
// The allowed share: `aim` of the misses the SLO allows (1 - attainment),
// less the misses the counts did not foresee — measured, not assumed. Each
// decision says what share its count expects of the load it was sized for
// (expect()); every answer passed to learn() from then on, on a settled
// serving set or not, counts against it, and the misses beyond it are the
// unforeseen share: a burst's onset or a step up while the replicas asked
// for start (its requests go overdue on the serving set they arrived on),
// the curve's own error. Not among them: the answers of requests that
// arrived before the serving set last changed, which the gateway does not
// count (so not a restart's held requests, nor requests answered late
// across a change). A steady workload scales little and may aim at nearly
// all the SLO allows; a bursty one keeps the margin its bursts take. The
// margin starts as `prior_unforeseen` of 1 - attainment, weighted as
// `prior_answers` answers; the measured ones decay with `memory_s`, so a
// service answering fewer than about prior_answers / (1.44 memory_s) a
// second stays mostly at the prior. The curve is always allowed at least
// `least` of 1 - attainment.
//
// The arrival trend: the least-squares line through the arrival rate over
// the stable window, extrapolated from the window's centre (where its
// in-flight average stands) to `lead_time_s` from now (a replica's start:
// when a decision taken now is serving), gives the load to size for as a
// multiple of the window's, so a ramp finds its replicas ready rather than a
// cold start late. A slope within three standard errors of flat (from the
// residuals, so bursts widen it) is none. Within 0.75 to 1.5.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <optional>
#include <utility>
#include <vector>

namespace loadstar::autoscaler {

struct SloCapacityOptions {
  double slo_s = 2;          // TTFT
  double attainment = 0.99;  // share of first tokens within it
  // Shares of (1 - attainment): aimed at in all, the curve's expected misses
  // and the unforeseen ones together; the unforeseen share until measured;
  // the least the curve is allowed (see above).
  double aim = 0.9;
  double prior_unforeseen = 0.4;
  double least = 0.25;
  double prior_answers = 5000;  // the prior's weight against the answers measured
  double initial = 4;           // in-flight per replica before the curve is learned
  uint64_t min_answers = 200;
  double memory_s = 1800;   // the curve's half-life
  double lead_time_s = 30;  // how far ahead the arrival trend is extrapolated
};

// A load sample: requests in flight, and the requests that arrived with it.
struct LoadSample {
  double in_flight = 0;
  double weight = 0;
};

class SloCapacity {
 public:
  explicit SloCapacity(SloCapacityOptions options);

  // Requests counted over the SLO at their deadline, still without a first
  // token (`counted`), and how many of the pass's answers are such requests'
  // (`answered`: already counted, so not again).
  struct Overdue {
    uint64_t counted = 0;
    uint64_t answered = 0;
  };
  // One pass's first tokens (counts per bucket with upper `bounds`, one more
  // bucket above the last) and overdue requests on `ready` replicas holding
  // `in_flight` requests; `settled`: the serving set has not changed since
  // the previous pass.
  void learn(double now, const std::vector<double>& bounds, const std::vector<uint64_t>& counts,
             Overdue overdue, double in_flight, uint32_t ready, bool settled);
  // Requests arrived so far (a counter) at `now`.
  void arrivals(double now, uint64_t arrived_total, double window_s);
  void set_lead_time(double seconds) { o_.lead_time_s = seconds; }

  // The fewest replicas, 1 to `max`, for `loads` (see above), and the share
  // of misses expected of them.
  struct Count {
    uint32_t replicas = 0;
    double expected_misses = 0;  // the curve's reading; 0 before it is learned
    double allowed = 0;          // what it was held to: allowed()
    double margin = 0;           // kept out of it for misses not foreseen
    bool learned = false;        // false: sized by `initial` per replica
  };
  Count replicas_for(const std::vector<LoadSample>& loads, uint32_t max) const;
  // The share of misses the curve expects of `replicas` for `loads` (0
  // before it is learned).
  double expected(const std::vector<LoadSample>& loads, uint32_t replicas) const;
  // The share of misses the count in force expects: the answers from now
  // on count against it (see above). Before the first call none do.
  void expect(double share) { expected_now_ = share; }
  // Misses beyond what the counts expected, as a share of the answers
  // since the first expect() (decayed as the curve is), with the prior.
  double unforeseen() const;
  // The share of misses a count is held to: the floor and the aim, less
  // the unforeseen share.
  double allowed() const;

  // The load to size for over the window's, from the arrival trend: 1 on a
  // flat rate, above 1 on a rising one (at most 1.5, at least 0.75).
  double trend() const { return trend_; }
  uint64_t answers() const { return answers_; }  // that taught the curve
  // The curve's share of misses at `per_replica` requests in flight each
  // (nullopt before it is learned).
  std::optional<double> miss_share(double per_replica) const;

 private:
  static constexpr int kPerDoubling = 16;
  static constexpr int kBins = 16 * kPerDoubling;  // 1/16 to 4096 per replica
  static constexpr double kFloorAnswers = 50;      // to tell a floor
  static constexpr int kQuarter = 5;               // bins: log2(1.25) * 16, a quarter up
  static int bin(double per_replica);
  void fit() const;

  SloCapacityOptions o_;
  std::array<double, kBins> answered_{}, missed_{};  // decayed
  std::optional<double> last_learned_;
  uint64_t answers_ = 0;
  // The fitted curve (lazily, after new answers): per bin, or -1 unseen.
  mutable std::array<double, kBins> curve_{};
  mutable bool fitted_ = false;
  mutable int highest_seen_ = -1;
  mutable double floor_ = 0;  // the share no count of replicas removes
  double trend_ = 1;
  // What the counts expected and what came, over every answer since the
  // first expect() (decayed).
  std::optional<double> expected_now_;
  double measured_answers_ = 0, measured_missed_ = 0, measured_expected_ = 0;
  std::optional<std::pair<double, uint64_t>> last_;  // (time, requests_total)
  std::deque<std::pair<double, double>> rates_;      // (time, arrivals per second) per sample
};

// First tokens over `slo_s` among `counts` (linear within the bucket that
// holds the SLO, as histogram_quantile interpolates).
double answers_over(double slo_s, const std::vector<double>& bounds,
                    const std::vector<uint64_t>& counts);

}  // namespace loadstar::autoscaler
