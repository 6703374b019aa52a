// Flow control's pure core: when replicas count as saturated, the room they
// have, and the order in which queued requests leave (priority bands,
// round-robin across tenants, FIFO within one, or with an SLO those that
// can still meet it first), eviction when full, the default for an SLO
// service.
#include <gtest/gtest.h>

#include "controller/load.h"
#include "gateway/flow_queue.h"
#include "gateway/routing_table.h"
#include "routing/routing_builder.h"

namespace loadstar::gateway {
namespace {

std::vector<uint64_t> drain(FlowQueue& q) {
  std::vector<uint64_t> out;
  while (auto id = q.pop()) out.push_back(*id);
  return out;
}

TEST(FlowQueue, HigherPrioritiesFirstThenTenantsTakeTurns) {
  FlowQueue q(100);
  // Tenant a sends four at priority 0, b one, then c one at priority 5.
  for (uint64_t id : {1, 2, 3, 4}) EXPECT_TRUE(q.push(id, 0, "a").queued);
  EXPECT_TRUE(q.push(5, 0, "b").queued);
  EXPECT_TRUE(q.push(6, 5, "c").queued);
  EXPECT_TRUE(q.push(7, 0, "b").queued);
  EXPECT_EQ(q.size(), 7u);
  // c first; then a and b alternate (b's two do not wait behind a's four).
  EXPECT_EQ(drain(q), (std::vector<uint64_t>{6, 1, 5, 2, 7, 3, 4}));
  EXPECT_TRUE(q.empty());
}

TEST(FlowQueue, AFullQueueEvictsTheLowestBandsLongestFlowOrRefuses) {
  FlowQueue q(4);
  EXPECT_TRUE(q.push(1, -1, "batch").queued);
  EXPECT_TRUE(q.push(2, -1, "batch").queued);
  EXPECT_TRUE(q.push(3, -1, "other").queued);
  EXPECT_TRUE(q.push(4, 0, "a").queued);
  // Same or lower priority than the lowest queued: refused.
  auto refused = q.push(5, -1, "a");
  EXPECT_FALSE(refused.queued);
  EXPECT_FALSE(refused.evicted);
  // Higher: the newest of the lowest band's longest flow makes room.
  auto pushed = q.push(6, 3, "vip");
  EXPECT_TRUE(pushed.queued);
  EXPECT_EQ(pushed.evicted, 2u);
  EXPECT_EQ(drain(q), (std::vector<uint64_t>{6, 4, 1, 3}));
}

TEST(FlowQueue, RemovedRequestsLeaveNoTrace) {
  FlowQueue q(10);
  q.push(1, 0, "a");
  q.push(2, 0, "b");
  q.push(3, 0, "a");
  EXPECT_TRUE(q.remove(1));
  EXPECT_FALSE(q.remove(1));
  EXPECT_TRUE(q.remove(2));
  EXPECT_EQ(drain(q), (std::vector<uint64_t>{3}));
  q.set_capacity(0);
  EXPECT_FALSE(q.push(4, 9, "a").queued);  // nothing to evict
}

// With an SLO, within a tenant: the oldest that arrived within the limit
// first, then the rest oldest first; arrivals out of order are put in order.
TEST(FlowQueue, WithAnSloTheOldestThatCanStillMeetItLeavesFirst) {
  FlowQueue q(100);
  q.set_serve_within(500);
  q.push(1, 0, "a", 0);
  q.push(2, 0, "a", 100);
  q.push(3, 0, "a", 950);
  q.push(4, 0, "a", 900);  // arrived before 3 (it waited elsewhere first)
  q.push(5, 0, "b", 0);
  q.push(7, 2, "a", 100);  // another band
  // Those that arrived by a time, over every tenant and band.
  EXPECT_EQ(q.arrived_by(-1), 0u);
  EXPECT_EQ(q.arrived_by(0), 2u);
  EXPECT_EQ(q.arrived_by(100), 4u);
  EXPECT_EQ(q.arrived_by(920), 5u);
  EXPECT_EQ(q.arrived_by(5000), 6u);
  EXPECT_EQ(q.pop(1000), 7u);  // the higher band first
  // At 1000: a's 4 and 3 can still meet it; b's turn comes between.
  EXPECT_EQ(q.pop(1000), 4u);
  EXPECT_EQ(q.pop(1000), 5u);
  EXPECT_EQ(q.pop(1000), 3u);
  EXPECT_EQ(q.pop(1000), 1u);         // none left within: the oldest
  EXPECT_EQ(q.arrived_by(5000), 1u);  // 2 is left
  EXPECT_EQ(q.arrived_by(99), 0u);
  // Without the limit: first come, first served.
  q.push(6, 0, "a", 1000);
  q.set_serve_within(std::nullopt);
  EXPECT_EQ(q.pop(1000), 2u);
  EXPECT_EQ(q.pop(1000), 6u);
  EXPECT_TRUE(q.empty());
}

TEST(FlowControl, AnSloServiceWithDeclaredSlotsGetsAnInFlightLimitByDefault) {
  api::InferenceService svc;
  svc.spec.engine.max_sequences = 4;
  EXPECT_FALSE(routing::flow_control(svc).enabled());  // no SLO: off
  svc.spec.autoscaling.emplace();
  svc.spec.autoscaling->slo_ttft_s = 2;
  gateway::FlowControl flow = routing::flow_control(svc);
  EXPECT_EQ(flow.max_in_flight, 4u);
  // A threshold of the user's own wins; nor is any set without a slot count.
  svc.spec.routing.max_kv_cache_usage = 0.9;
  flow = routing::flow_control(svc);
  EXPECT_FALSE(flow.max_in_flight);
  EXPECT_EQ(flow.max_kv_usage, 0.9);
  svc.spec.routing.max_kv_cache_usage.reset();
  svc.spec.engine.max_sequences.reset();
  EXPECT_FALSE(routing::flow_control(svc).enabled());
}

TEST(FlowControl, SaturationAndRoomFromInFlightAndFreshMetrics) {
  auto a = std::make_shared<Endpoint>("s", "s-0", "127.0.0.1", 1);
  auto b = std::make_shared<Endpoint>("s", "s-1", "127.0.0.1", 2);
  const std::vector<std::shared_ptr<Endpoint>> both{a, b};
  FlowControl off;
  EXPECT_FALSE(off.enabled());
  FlowControl limit{.max_in_flight = 2};
  a->in_flight = 2;
  b->in_flight = 1;
  const int64_t now = 100'000;
  EXPECT_TRUE(saturated(limit, *a, now));
  EXPECT_FALSE(saturated(limit, *b, now));
  EXPECT_EQ(room(limit, both, now), 1u);
  // An ejected endpoint has no room.
  b->ejected_until_ms = now + 1;
  EXPECT_EQ(room(limit, both, now), 0u);
  b->ejected_until_ms = 0;
  // Metric thresholds count only while the scrape is fresh; without an
  // in-flight limit an unsaturated endpoint's room is unlimited.
  FlowControl metrics{.max_waiting = 5, .max_kv_usage = 0.9};
  a->waiting = 7;
  a->metrics_at_ms = now - 100;
  b->kv_usage = 0.95;
  b->metrics_at_ms = now - kStaleMetricsMs - 1;
  EXPECT_TRUE(saturated(metrics, *a, now));
  EXPECT_FALSE(saturated(metrics, *b, now));  // stale
  EXPECT_EQ(room(metrics, both, now), kUnlimited);
  b->metrics_at_ms = now;
  EXPECT_EQ(room(metrics, both, now), 0u);
  // The pick goes to the unsaturated ones, or to all when none is.
  std::vector<Endpoint*> candidates{a.get(), b.get()}, scratch;
  EXPECT_EQ(unsaturated(metrics, candidates, now, scratch).size(), 2u);
  b->kv_usage = 0.1;
  auto left = unsaturated(metrics, candidates, now, scratch);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0], b.get());
}

TEST(FlowControl, QueuedRequestsCountAsWaitingAndInFlightOrAsDemand) {
  LoadReport report;
  for (int i = 0; i < 2; ++i) {
    EndpointLoad e;
    e.service = "chat";
    e.replica = "chat-" + std::to_string(i);
    e.address = "10.0.0.1:" + std::to_string(i);
    e.in_flight = 4;
    e.waiting = 1;
    e.metrics_age_s = 0.1;
    e.adapters = {"sql", i == 0 ? "poems" : "code"};
    report.endpoints.push_back(e);
  }
  report.queued = {{"chat", 5}, {"idle", 3}};
  report.queued_overdue = {{"chat", 2}};
  auto parsed = parse_load_report(load_report_json(report));
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->report.queued, report.queued);
  EXPECT_EQ(parsed->report.queued_overdue, report.queued_overdue);
  controller::LoadAggregator agg;
  controller::LoadRound r = agg.round({{"g", parsed->report}});
  EXPECT_EQ(r.replicas["chat-0"].in_flight + r.replicas["chat-1"].in_flight, 8 + 5);
  EXPECT_EQ(r.queued_overdue, (std::map<std::string, uint64_t>{{"chat", 2}}));
  EXPECT_DOUBLE_EQ(*r.replicas["chat-0"].waiting, 1 + 2.5);
  EXPECT_EQ(r.demand, (std::set<std::string>{"idle"}));
  // The adapters in use on each replica travel too.
  EXPECT_EQ(r.replicas["chat-0"].adapters, (std::set<std::string>{"poems", "sql"}));
  EXPECT_EQ(r.replicas["chat-1"].adapters, (std::set<std::string>{"code", "sql"}));
}

// Failed attempts and inter-token gaps travel in the report and become
// per-round increments, as requests do.
TEST(FlowControl, FailuresAndInterTokenGapsReachTheControllerAsIncrements) {
  LoadReport report;
  EndpointLoad e;
  e.service = "chat";
  e.replica = "chat-0";
  e.address = "10.0.0.1:1";
  e.requests = 10;
  e.failures = 3;
  e.itl[2] = 40;
  report.endpoints.push_back(e);
  controller::LoadAggregator agg;
  auto parsed = parse_load_report(load_report_json(report));
  ASSERT_TRUE(parsed.ok());
  controller::LoadRound first = agg.round({{"g", parsed->report}});
  EXPECT_EQ(first.replicas["chat-0"].failures, 3u);
  EXPECT_EQ(first.replicas["chat-0"].itl[2], 40u);
  report.endpoints[0].failures = 5;
  report.endpoints[0].itl[2] = 45;
  controller::LoadRound second = agg.round({{"g", report}});
  EXPECT_EQ(second.replicas["chat-0"].failures, 2u);
  EXPECT_EQ(second.replicas["chat-0"].itl[2], 5u);
}

// A peer's instance name is clipped to 64 bytes at a character's start,
// so the report still encodes (found by fuzzing: a name cut inside a
// two-byte character made load_report_json throw).
TEST(LoadReports, AnInstanceNameIsClippedAtACharacter) {
  const std::string name = std::string(63, 's') + "\xd2\x9d-tail";
  auto parsed = parse_load_report(R"({"endpoints": [], "instance": ")" + name + R"("})");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(parsed->report.instance, std::string(63, 's'));
  EXPECT_NO_THROW(load_report_json(parsed->report));
}

}  // namespace
}  // namespace loadstar::gateway
