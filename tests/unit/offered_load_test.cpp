// The offered load (autoscaler/offered_load.h) on synthetic services whose
// truth is known: a steady rate of requests that each run a fixed time, the
// same with a queue growing in front of the replicas, requests held at the
// gateway, a quiet spell, a slow service and a restarted counter.
#include <algorithm>

#include <gtest/gtest.h>

#include "autoscaler/offered_load.h"

namespace loadstar::autoscaler {
namespace {

// A service fed `rate` requests a second, each running `run_s`, on
// replicas that run at most `capacity` at once (the rest queue in the
// engines), observed once a second from `from` for `seconds`.
struct Plant {
  double rate = 20, run_s = 1.5, capacity = 1e9;
  uint64_t sent = 0;
  double queue = 0;
  void drive(OfferedLoad& l, double from, int seconds) {
    const double running = std::min(rate * run_s, capacity);
    for (int t = 0; t < seconds; ++t) {
      sent += static_cast<uint64_t>(rate);
      queue += rate - running / run_s;
      l.observe(from + t, {.sent_total = sent,
                           .arrived_total = static_cast<double>(sent),
                           .in_flight = running + queue,
                           .engine_queued = queue});
    }
  }
};

TEST(OfferedLoad, IsTheArrivalRateTimesHowLongARequestRuns) {
  OfferedLoad l({});
  EXPECT_FALSE(l.reading());  // nothing finished yet
  Plant p;
  p.drive(l, 0, 120);
  ASSERT_TRUE(l.reading());
  EXPECT_NEAR(l.reading()->arrival_rate, 20, 1e-9);
  EXPECT_NEAR(l.reading()->run_time_s, 1.5, 0.05);
  EXPECT_NEAR(l.reading()->load, 30, 1);
}

TEST(OfferedLoad, DoesNotGrowWithAQueue) {
  OfferedLoad l({});
  Plant p;
  p.drive(l, 0, 120);
  // The replicas lose a fifth of their room: 4 more requests queue every
  // second and in flight climbs past 250, but as many arrive and each runs
  // as long.
  p.capacity = 24;
  p.drive(l, 120, 60);
  ASSERT_TRUE(l.reading());
  EXPECT_NEAR(l.reading()->load, 30, 2);
  EXPECT_NEAR(l.reading()->run_time_s, 1.5, 0.1);
}

TEST(OfferedLoad, CountsHeldRequestsAsArrivalsAndRemembersTheRunTimeAcrossAQuietSpell) {
  OfferedLoad l({});
  Plant p{.rate = 20, .run_s = 3};
  p.drive(l, 0, 120);
  // An hour with nothing: the rate falls to none, the run time stays.
  const double sent = static_cast<double>(p.sent);
  for (int t = 0; t < 3600; t += 10)
    l.observe(120 + t, {.sent_total = p.sent, .arrived_total = sent});
  ASSERT_TRUE(l.reading());
  EXPECT_EQ(l.reading()->arrival_rate, 0);
  EXPECT_NEAR(l.reading()->run_time_s, 3, 0.1);
  // At zero: 10 requests a second held, none sent.
  for (int t = 1; t <= 10; ++t)
    l.observe(3720 + t, {.sent_total = p.sent, .arrived_total = sent + 10.0 * t});
  EXPECT_NEAR(l.reading()->arrival_rate, 10, 1e-9);
  EXPECT_NEAR(l.reading()->load, 30, 1);
  // A replica is up and takes them: sent, no longer held, nothing arrived
  // (the rate: the last 6 s, 50 arrivals).
  l.observe(3731, {.sent_total = p.sent + 100,
                   .arrived_total = sent + 100,
                   .in_flight = 100,
                   .engine_queued = 96});
  EXPECT_NEAR(l.reading()->arrival_rate, 50.0 / 6, 1e-9);
}

TEST(OfferedLoad, ASlowServiceIsMeasuredOverEnoughArrivals) {
  OfferedLoad l({.window_s = 6, .max_window_s = 60, .min_arrivals = 40});
  // One request every 2 s: 6 s hold 3; the rate is taken over 60 s.
  uint64_t sent = 0;
  for (int t = 0; t <= 120; ++t) {
    if (t % 2 == 0) ++sent;
    l.observe(t, {.sent_total = sent, .arrived_total = static_cast<double>(sent), .in_flight = 1});
  }
  ASSERT_TRUE(l.reading());
  EXPECT_NEAR(l.reading()->arrival_rate, 0.5, 0.02);
  EXPECT_NEAR(l.reading()->run_time_s, 2, 0.1);
}

TEST(OfferedLoad, ACounterThatStartsAgainStartsTheRateAgain) {
  OfferedLoad l({});
  Plant p;
  p.drive(l, 0, 60);
  // A new gateway: its counter from zero.
  l.observe(60, {.sent_total = 5, .arrived_total = 5, .in_flight = 30});
  l.observe(61, {.sent_total = 25, .arrived_total = 25, .in_flight = 30});
  ASSERT_TRUE(l.reading());
  EXPECT_NEAR(l.reading()->arrival_rate, 20, 1e-9);
}

}  // namespace
}  // namespace loadstar::autoscaler
