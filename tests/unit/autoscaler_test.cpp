// The autoscaler on synthetic signal series, in virtual time: a step, a
// spike, a slow ramp, a drain to zero, noise; one sample a second, and the
// replicas it asks for become ready at once (the controller's start-up time
// is not the autoscaler's business).
#include <cmath>
#include <functional>
#include <random>

#include <gtest/gtest.h>

#include "autoscaler/autoscaler.h"

namespace loadstar::autoscaler {
namespace {

struct Run {
  std::vector<uint32_t> desired;  // per second
  std::vector<Decision> decisions;
};

// Drives `a` for `seconds`, with `in_flight(t)` requests in flight in all.
Run drive(Autoscaler& a, int seconds, const std::function<double(int)>& in_flight,
          uint32_t start = 1, const std::function<uint32_t(int)>& held = nullptr) {
  Run run;
  uint32_t current = start;
  uint64_t requests = 0;
  for (int t = 0; t < seconds; ++t) {
    Sample s;
    s.now = t;
    s.ready = current;
    s.in_flight = in_flight(t);
    requests += static_cast<uint64_t>(std::ceil(s.in_flight));
    s.requests_total = requests;
    s.held = held ? held(t) : 0;
    a.observe(s);
    Decision d = a.decide(t, current);
    current = d.desired;
    run.desired.push_back(current);
    run.decisions.push_back(std::move(d));
  }
  return run;
}

Spec concurrency(uint32_t min, uint32_t max) {
  Spec s;
  s.min_replicas = min;
  s.max_replicas = max;
  s.in_flight_per_replica = 8;
  return s;
}

TEST(Autoscaler, StepUpIsFollowedWithinThePanicWindow) {
  Autoscaler a(concurrency(1, 20));
  auto run = drive(a, 200, [](int t) { return t < 100 ? 8.0 : 40.0; });
  EXPECT_EQ(run.desired[99], 1u);
  // 40 in flight at 8 per replica is 5 replicas; the 6 s panic window
  // averages in the old load, so it takes at most that long.
  int reached = -1;
  for (int t = 100; t < 200 && reached < 0; ++t)
    if (run.desired[t] >= 5) reached = t;
  ASSERT_GE(reached, 0);
  EXPECT_LE(reached - 100, 6);
  EXPECT_TRUE(run.decisions[reached].panic);
  EXPECT_EQ(run.decisions[reached].signal, "inFlight");
  EXPECT_EQ(run.desired.back(), 5u);  // and it stays there, not above
}

TEST(Autoscaler, ASpikeScalesUpAndComesDownOnlyAfterTheWindows) {
  Autoscaler a(concurrency(1, 20));
  auto run = drive(a, 400, [](int t) { return t >= 100 && t < 103 ? 80.0 : 4.0; });
  uint32_t peak = 0;
  for (int t = 100; t < 110; ++t) peak = std::max(peak, run.desired[t]);
  EXPECT_GE(peak, 3u);
  // No scale-down while panicking (60 s after the last panic signal) nor
  // before the stabilization window has passed.
  for (int t = 103; t < 160; ++t) EXPECT_GE(run.desired[t], peak) << t;
  EXPECT_EQ(run.desired.back(), 1u);
}

TEST(Autoscaler, ASlowRampOnlyEverScalesUp) {
  Autoscaler a(concurrency(1, 20));
  auto run = drive(a, 600, [](int t) { return t * 0.1; });  // 0 -> 60 in flight
  for (size_t t = 1; t < run.desired.size(); ++t)
    EXPECT_GE(run.desired[t], run.desired[t - 1]) << t;
  EXPECT_GE(run.desired.back(), 7u);  // 60/8, from the 60 s average (~57)
  EXPECT_LE(run.desired.back(), 8u);
}

TEST(Autoscaler, ARisingTrendStagesWeightsBeforeTheReplicaIsNeeded) {
  Autoscaler a(concurrency(1, 20));
  auto run = drive(a, 600, [](int t) { return t * 0.1; });  // 0 -> 60 in flight
  // Each scale-up to n after the first was preceded by asking for n nodes'
  // weights, well ahead (27 s on this ramp; the first has no trend yet).
  int scale_ups = 0;
  for (size_t t = 1; t < run.desired.size(); ++t) {
    EXPECT_GE(run.decisions[t].stage_ahead, run.desired[t]) << t;
    if (run.desired[t] <= run.desired[t - 1] || ++scale_ups == 1) continue;
    size_t before = t;
    while (before > 0 && run.decisions[before - 1].stage_ahead >= run.desired[t]) --before;
    EXPECT_GE(t - before, 20u) << "scale-up to " << run.desired[t] << " at " << t;
  }
  EXPECT_GE(scale_ups, 5);
  // A flat load stages nothing extra.
  Autoscaler flat(concurrency(1, 20));
  auto still = drive(flat, 300, [](int) { return 20.0; });
  EXPECT_EQ(still.decisions.back().stage_ahead, still.desired.back());
}

TEST(Autoscaler, NoiseDoesNotFlap) {
  Autoscaler a(concurrency(1, 20));
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> noise(-6, 6);
  auto run = drive(a, 900, [&](int) { return 20 + noise(rng); });
  int changes = 0;
  for (size_t t = 120; t < run.desired.size(); ++t) changes += run.desired[t] != run.desired[t - 1];
  EXPECT_LE(changes, 1);
  EXPECT_EQ(run.desired.back(), 3u);  // 20 at 8 per replica
}

TEST(Autoscaler, ScalesToZeroOnlyAfterTheIdleWindowAndBackForAHeldRequest) {
  Spec spec = concurrency(0, 4);
  spec.idle_window_s = 120;
  Autoscaler a(spec);
  auto run = drive(
      a, 400, [](int t) { return t < 50 ? 4.0 : 0.0; }, 1, [](int t) { return t == 300 ? 1 : 0; });
  // The last request was at 49: one replica until 49 + 120.
  for (int t = 50; t < 169; ++t) EXPECT_EQ(run.desired[t], 1u) << t;
  EXPECT_EQ(run.desired[170], 0u);
  EXPECT_EQ(run.decisions[170].signal, "idle");
  EXPECT_EQ(run.desired[299], 0u);
  EXPECT_EQ(run.desired[300], 1u);  // a held request brings one back at once
  EXPECT_EQ(run.decisions[300].signal, "held");
}

TEST(Autoscaler, ANewServiceGetsAWholeIdleWindowBeforeZero) {
  Spec spec = concurrency(0, 4);
  spec.idle_window_s = 30;
  Autoscaler a(spec);
  auto run = drive(
      a, 60, [](int) { return 0.0; }, 2);
  EXPECT_GE(run.desired[28], 1u);
  EXPECT_EQ(run.desired[59], 0u);
}

TEST(Autoscaler, OtherSignalsAndBounds) {
  Spec spec;
  spec.min_replicas = 2;
  spec.max_replicas = 6;
  spec.waiting_per_replica = 4;
  spec.kv_cache_usage = 0.7;
  spec.ttft_p90_slo_s = 1.0;
  Autoscaler a(spec);
  // KV-cache use of 0.9 on 4 replicas: 3.6 replicas' worth at 0.7 -> 6.
  Sample s{.now = 0, .ready = 4, .waiting = 2, .in_flight = 10, .kv_cache_usage = 0.9};
  a.observe(s);
  Decision d = a.decide(0, 4);
  EXPECT_EQ(d.signal, "kvCache");
  EXPECT_EQ(d.desired, 6u);
  EXPECT_NE(d.reason.find("KV-cache use 90% at target 70% -> 6"), std::string::npos) << d.reason;
  // Bounds: never above max, never below min.
  Autoscaler b(spec);
  b.observe({.now = 0, .ready = 2, .waiting = 400});
  EXPECT_EQ(b.decide(0, 2).desired, 6u);
  Autoscaler c(spec);
  c.observe({.now = 0, .ready = 2});
  EXPECT_EQ(c.decide(0, 2).desired, 2u);
  // TTFT over the SLO grows the count in proportion.
  Autoscaler e(spec);
  e.observe({.now = 0, .ready = 2, .ttft_p90_s = 2.0});
  Decision slow = e.decide(0, 2);
  EXPECT_EQ(slow.signal, "ttft");
  EXPECT_EQ(slow.desired, 4u);
}

TEST(Autoscaler, TtftOverTheSloWaitsForStartingReplicas) {
  Spec spec;
  spec.max_replicas = 10;
  spec.ttft_p90_slo_s = 0.5;
  Autoscaler a(spec);
  a.observe({.now = 0, .ready = 2, .ttft_p90_s = 1.0});
  EXPECT_EQ(a.decide(0, 2).desired, 4u);  // twice over the SLO: twice the replicas
  // Two more are starting (4 wanted, 2 ready): no further growth meanwhile.
  a.observe({.now = 1, .ready = 2, .ttft_p90_s = 1.0});
  EXPECT_EQ(a.decide(1, 4).desired, 4u);
}

TEST(Autoscaler, HistogramQuantileInterpolatesLikePrometheus) {
  const double bounds[] = {0.1, 0.2, 0.5};
  const uint64_t none[] = {0, 0, 0, 0};
  EXPECT_FALSE(histogram_quantile(0.9, bounds, none, 4));
  const uint64_t counts[] = {10, 0, 10, 0};  // 10 under 0.1, 10 in (0.2, 0.5]
  EXPECT_DOUBLE_EQ(*histogram_quantile(0.5, bounds, counts, 4), 0.1);
  EXPECT_DOUBLE_EQ(*histogram_quantile(0.9, bounds, counts, 4), 0.2 + 0.3 * 0.8);
  const uint64_t slow[] = {0, 0, 0, 5};  // all above the last bound
  EXPECT_DOUBLE_EQ(*histogram_quantile(0.9, bounds, slow, 4), 0.5);
}

TEST(Autoscaler, ScaleUpRateIsBounded) {
  Spec spec = concurrency(1, 1000);
  spec.max_scale_up_rate = 4;
  Autoscaler a(spec);
  a.observe({.now = 0, .ready = 1, .in_flight = 8000});
  Decision d = a.decide(0, 1);
  EXPECT_EQ(d.desired, 4u);
  EXPECT_NE(d.reason.find("capped at 4 by the scale-up rate"), std::string::npos) << d.reason;
}

}  // namespace
}  // namespace loadstar::autoscaler
