// The learned miss curve and arrival trend behind the SLO autoscaler
// (autoscaler/slo_capacity.h), fed synthetic passes whose truth is known: a
// replica that misses nothing up to a level and half its answers beyond it,
// the same with misses no count removes, noise that is not monotone, and
// arrival rates that ramp or only wobble.
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

#include <gtest/gtest.h>

#include "autoscaler/slo_capacity.h"

namespace loadstar::autoscaler {
namespace {

const std::vector<double> kBounds = {0.5, 1, 2, 3, 5};

// `n` answers of which `over` took longer than 2 s (3 s), the rest 0.5 s.
std::vector<uint64_t> answers(uint64_t n, uint64_t over) {
  std::vector<uint64_t> counts(kBounds.size() + 1, 0);
  counts[0] = n - over;
  counts[3] = over;  // (2, 3]
  return counts;
}

// Teaches `c` passes at per-replica levels 0.5..6 on 4 replicas, each pass
// 20 answers of which `share(level)` missed.
void teach(SloCapacity& c, const std::function<double(double)>& share, int rounds = 10,
           double from = 0.5) {
  double now = 0;
  for (int r = 0; r < rounds; ++r)
    for (double level = from; level <= 6; level += 0.125) {
      const auto over = static_cast<uint64_t>(std::lround(20 * share(level)));
      c.learn(now += 1, kBounds, answers(20, over), {}, 4 * level, 4, true);
    }
}

std::vector<LoadSample> steady(double in_flight, int n = 60) {
  return std::vector<LoadSample>(n, LoadSample{in_flight, 1});
}

TEST(SloCapacity, ARequestUnansweredAtTheSloIsAMissAtTheLevelOfThatMomentAndOnlyThen) {
  // A queue that serves the newest first answers within the SLO at any
  // load, while its backlog waits: counted by answers alone, 8 per replica
  // looks free. Counted at their deadline, the backlog's requests are misses
  // at the level where they went unanswered.
  SloCapacity by_answers({.slo_s = 2}), by_deadline({.slo_s = 2});
  double now = 0;
  for (int r = 0; r < 20; ++r)
    for (double level = 0.5; level <= 8; level += 0.25) {
      const uint64_t late = level > 3 ? 5 : 0;  // past the SLO, not yet answered
      by_answers.learn(now += 1, kBounds, answers(20, 0), {}, 4 * level, 4, true);
      by_deadline.learn(now, kBounds, answers(20, 0), {.counted = late}, 4 * level, 4, true);
    }
  EXPECT_EQ(*by_answers.miss_share(6), 0);
  EXPECT_NEAR(*by_deadline.miss_share(6), 0.2, 1e-9);  // 5 of 25
  EXPECT_EQ(*by_deadline.miss_share(2), 0);
  EXPECT_LE(by_answers.replicas_for(steady(48), 100).replicas, 7u);
  const uint32_t n = by_deadline.replicas_for(steady(48), 100).replicas;
  EXPECT_TRUE(n == 15 || n == 16) << n;  // about 3 per replica, where misses begin
  // Their answers, when they come, were counted already: not again.
  SloCapacity once({.slo_s = 2});
  for (int i = 0; i < 300; ++i) {
    once.learn(2 * i, kBounds, answers(19, 0), {.counted = 1}, 8, 4, true);
    once.learn(2 * i + 1, kBounds, answers(1, 1), {.answered = 1}, 8, 4, true);
  }
  EXPECT_NEAR(*once.miss_share(2), 0.05, 1e-9);  // 1 in 20, not 2 in 21
}

TEST(SloCapacity, AnswersOverTheSloInterpolateWithinTheirBucket) {
  const std::vector<uint64_t> counts = {10, 10, 10, 10, 10, 10};  // ..0.5 ..1 ..2 ..3 ..5 +Inf
  EXPECT_DOUBLE_EQ(answers_over(2, kBounds, counts), 30);
  EXPECT_DOUBLE_EQ(answers_over(1.5, kBounds, counts), 35);  // half of (1, 2]
  EXPECT_DOUBLE_EQ(answers_over(10, kBounds, counts), 10);   // only +Inf
}

TEST(SloCapacity, SizesForTheLevelWhereMissesBeginAndFollowsTheLoad) {
  SloCapacity c({.slo_s = 2, .attainment = 0.99});
  // Before it has learned anything: the first guess, 4 per replica.
  EXPECT_EQ(c.replicas_for(steady(30), 100).replicas, 8u);
  EXPECT_FALSE(c.replicas_for(steady(30), 100).learned);
  teach(c, [](double level) { return level <= 3 ? 0.0 : 0.5; });
  const SloCapacity::Count at30 = c.replicas_for(steady(30), 100);
  EXPECT_TRUE(at30.learned);
  EXPECT_EQ(at30.replicas, 10u);  // 3 per replica, no more
  EXPECT_LE(at30.expected_misses, at30.allowed);
  EXPECT_EQ(c.replicas_for(steady(60), 100).replicas, 20u);
  EXPECT_EQ(c.replicas_for(steady(60), 12).replicas, 12u);  // at most max
  EXPECT_EQ(c.replicas_for(steady(0), 100).replicas, 0u);   // nothing in flight
  // Bursts count by the requests they bring: a tenth of the samples at
  // twice the load, with as many arrivals as the rest, needs room for them.
  std::vector<LoadSample> bursty = steady(30, 54);
  for (int i = 0; i < 6; ++i) bursty.push_back({60, 9});
  EXPECT_EQ(c.replicas_for(bursty, 100).replicas, 20u);
}

TEST(SloCapacity, MissesNoReplicaRemovesAreAFloorNotAReasonToGrow) {
  SloCapacity c({.slo_s = 2, .attainment = 0.99});
  // 5% of the answers miss at every level (prompts too long for the SLO).
  teach(c, [](double level) { return level <= 3 ? 0.05 : 0.5; });
  EXPECT_EQ(c.replicas_for(steady(30), 100).replicas, 10u);
  EXPECT_NEAR(c.replicas_for(steady(30), 100).allowed, 0.05 + 0.005, 1e-9);
}

TEST(SloCapacity, TheMarginKeptIsTheMissesTheCountsDidNotForesee) {
  // Misses rise by 0.4% of the answers for each request per replica past 2.
  const auto share = [](double level) { return std::max(0.0, (level - 2) * 0.004); };
  const auto taught = [&] {
    SloCapacity c({.slo_s = 2, .attainment = 0.99});
    double now = 0;
    for (int r = 0; r < 10; ++r)
      for (double level = 0.5; level <= 6; level += 0.125)
        c.learn(now += 1, kBounds, answers(1000, std::lround(1000 * share(level))), {}, 4 * level,
                4, true);
    return c;
  };
  // Unsettled passes (a serving set that just changed) teach the curve
  // nothing, but their answers count against what the count expected.
  const auto measure = [](SloCapacity& c, double expected, uint64_t missed_per_1000) {
    c.expect(expected);
    for (int i = 0; i < 40; ++i)
      c.learn(1000 + i, kBounds, answers(1000, missed_per_1000), {}, 8, 4, false);
  };
  // Before anything is measured: 0.4 of the 1% the SLO allows kept.
  SloCapacity prior = taught();
  EXPECT_NEAR(prior.allowed(), 0.005, 1e-9);
  SloCapacity unmeasured = taught();
  for (int i = 0; i < 40; ++i)  // no count has said what it expects yet
    unmeasured.learn(1000 + i, kBounds, answers(1000, 30), {}, 8, 4, false);
  EXPECT_NEAR(unmeasured.allowed(), 0.005, 1e-9);
  // Misses as foreseen: the margin shrinks towards none (the prior's weight
  // fading), and the count aims at nearly 0.9 of the 1%.
  SloCapacity steady_load = taught();
  measure(steady_load, 0.003, 3);
  EXPECT_GT(steady_load.allowed(), 0.0085);
  EXPECT_LE(steady_load.allowed(), 0.009 + 1e-12);
  // Far more misses than foreseen (bursts while replicas start): the least
  // the curve is allowed, a quarter of the 1%.
  SloCapacity bursty = taught();
  measure(bursty, 0.003, 30);
  EXPECT_NEAR(bursty.allowed(), 0.0025, 1e-9);
  // The count follows: fewer replicas for the same load where misses come
  // as foreseen, more where they do not.
  const uint32_t n_steady = steady_load.replicas_for(steady(30), 100).replicas;
  const uint32_t n_prior = prior.replicas_for(steady(30), 100).replicas;
  const uint32_t n_bursty = bursty.replicas_for(steady(30), 100).replicas;
  EXPECT_LT(n_steady, n_prior);
  EXPECT_LT(n_prior, n_bursty);
  const SloCapacity::Count c = bursty.replicas_for(steady(30), 100);
  EXPECT_NEAR(c.margin, 0.009 - 0.0025, 1e-9);
  EXPECT_LE(c.expected_misses, c.allowed);
}

TEST(SloCapacity, AServiceOnlyEverSeenOverloadedTriesMoreReplicas) {
  SloCapacity c({.slo_s = 2, .attainment = 0.99});
  // Half the answers missed at every level seen, all of them above 3 per
  // replica: no floor is known, so lighter loads are tried.
  teach(
      c, [](double) { return 0.5; }, 10, 3.5);
  // Half the level seen, at most: 30 in flight on 18 or more.
  EXPECT_GE(c.replicas_for(steady(30), 100).replicas, 17u);
  EXPECT_LE(c.replicas_for(steady(30), 100).replicas, 18u);
}

TEST(SloCapacity, TheCurveNeverFallsWithLoadAndUnsettledPassesTeachNothing) {
  SloCapacity c({.slo_s = 2, .attainment = 0.99, .min_answers = 1});
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> noise(-0.05, 0.05);
  teach(c, [&](double level) { return std::clamp(level / 10 + noise(rng), 0.0, 1.0); });
  double last = 0;
  for (double level = 0.5; level <= 16; level += 0.1) {
    const double share = c.miss_share(level).value();
    EXPECT_GE(share, last - 1e-12) << level;
    last = share;
  }
  EXPECT_EQ(last, 1);  // 2.5 times the highest level seen: every answer missed

  SloCapacity fresh({.slo_s = 2, .attainment = 0.99, .min_answers = 1});
  for (int i = 0; i < 100; ++i) fresh.learn(i, kBounds, answers(20, 20), {}, 8, 4, false);
  EXPECT_EQ(fresh.answers(), 0u);
  EXPECT_FALSE(fresh.miss_share(1));
}

TEST(SloCapacity, ARampIsProjectedAheadAndNoiseIsNot) {
  SloCapacityOptions o;
  o.lead_time_s = 30;
  // Arrivals rising from 6/s to 8/s over a minute.
  SloCapacity ramp(o);
  double total = 0;
  for (int t = 0; t <= 60; ++t) {
    total += 6 + 2.0 * t / 60;
    ramp.arrivals(t, static_cast<uint64_t>(total), 60);
  }
  // The window's centre is at 7/s; 30 s past its end, 9/s.
  EXPECT_NEAR(ramp.trend(), 9.0 / 7, 0.03);
  // Falling: below 1, never under 0.75.
  SloCapacity fall(o);
  total = 0;
  for (int t = 0; t <= 60; ++t) {
    total += 10 - 8.0 * t / 60;
    fall.arrivals(t, static_cast<uint64_t>(total), 60);
  }
  EXPECT_DOUBLE_EQ(fall.trend(), 0.75);
  // Poisson arrivals at a steady 5/s: no trend.
  SloCapacity flat(o);
  std::mt19937 rng(3);
  std::poisson_distribution<int> arrivals(5);
  uint64_t sent = 0;
  int trends = 0;
  for (int t = 0; t <= 600; ++t) {
    sent += static_cast<uint64_t>(arrivals(rng));
    flat.arrivals(t, sent, 60);
    trends += flat.trend() != 1;
  }
  EXPECT_LE(trends, 6);  // 1% of the passes at most
}

}  // namespace
}  // namespace loadstar::autoscaler
