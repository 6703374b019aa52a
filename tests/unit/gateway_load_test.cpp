// The controller's reading of the gateways' load reports (Kubernetes mode):
// increments per round across gateways, counter resets, malformed reports,
// and which gateway Pods are polled.
#include <gtest/gtest.h>

#include "controller/gateway_load.h"
#include "kube/scope.h"

namespace loadstar::controller {
namespace {

std::string report(uint64_t requests, int64_t in_flight, uint64_t fast_ttft, double age_s = 0.1,
                   const std::string& held = "{}") {
  return fmt::format(
      R"({{"endpoints": [{{"service": "chat", "replica": "chat-0", "requests": {},
          "in_flight": {}, "waiting": 3, "kv_usage": 0.5, "metrics_age_s": {},
          "ttft_counts": [{}, 0, 0]}}], "held": {}}})",
      requests, in_flight, age_s, fast_ttft, held);
}

TEST(GatewayLoad, IncrementsAcrossGatewaysAndRounds) {
  LoadAggregator agg;
  // First sight of a gateway counts what it has counted so far.
  LoadRound r = agg.round({{"a", report(10, 2, 4)}, {"b", report(5, 1, 1)}});
  ASSERT_EQ(r.replicas.count("chat-0"), 1u);
  EXPECT_EQ(r.replicas["chat-0"].requests, 15u);
  EXPECT_EQ(r.replicas["chat-0"].in_flight, 3);
  EXPECT_EQ(r.replicas["chat-0"].ttft[0], 5u);
  EXPECT_EQ(r.replicas["chat-0"].waiting, 3);
  EXPECT_EQ(r.replicas["chat-0"].kv_usage, 0.5);
  EXPECT_TRUE(r.demand.empty());
  // Then only what is new; a gateway whose counters went down restarted.
  r = agg.round({{"a", report(12, 0, 5)}, {"b", report(2, 0, 0)}});
  EXPECT_EQ(r.replicas["chat-0"].requests, 2u + 2u);
  EXPECT_EQ(r.replicas["chat-0"].ttft[0], 1u);
  EXPECT_EQ(r.replicas["chat-0"].in_flight, 0);
  // A gateway that did not answer adds nothing; coming back, what it
  // counted since it last answered (not its whole count again: a poll that
  // timed out under load must not read as a burst of arrivals).
  r = agg.round({{"a", report(12, 0, 5)}});
  EXPECT_EQ(r.replicas["chat-0"].requests, 0u);
  r = agg.round({{"a", report(12, 0, 5)}, {"b", report(3, 0, 0)}});
  EXPECT_EQ(r.replicas["chat-0"].requests, 1u);
  // Silent for long, it is forgotten: coming back, it is new.
  for (uint32_t i = 0; i <= LoadAggregator::kForgetAfterRounds; ++i)
    agg.round({{"a", report(12, 0, 5)}});
  r = agg.round({{"a", report(12, 0, 5)}, {"b", report(4, 0, 0)}});
  EXPECT_EQ(r.replicas["chat-0"].requests, 4u);
}

// A gateway started again under the same name (its Pod restarted in place)
// says so by a new instance name: its counters start from zero even where
// they already passed the old ones.
TEST(GatewayLoad, ANewInstanceStartsItsCountersAgain) {
  auto counted = [](const std::string& instance, uint64_t requests, uint64_t away) {
    return fmt::format(
        R"({{"instance": "{}", "endpoints": [{{"service": "chat", "replica": "chat-0",
            "requests": {}}}], "turned_away": {{"chat": {}}}}})",
        instance, requests, away);
  };
  LoadAggregator agg;
  agg.round({{"a", counted("one", 10, 2)}});
  LoadRound r = agg.round({{"a", counted("one", 15, 3)}});
  EXPECT_EQ(r.replicas["chat-0"].requests, 5u);
  EXPECT_EQ(r.turned_away["chat"], 1u);
  r = agg.round({{"a", counted("two", 20, 4)}});
  EXPECT_EQ(r.replicas["chat-0"].requests, 20u);
  EXPECT_EQ(r.turned_away["chat"], 4u);
}

TEST(GatewayLoad, OverdueCountsAreIncrementsToo) {
  auto with_overdue = [](uint64_t overdue, uint64_t answered) {
    return fmt::format(
        R"({{"endpoints": [{{"service": "chat", "replica": "chat-0", "requests": 1,
            "in_flight": 0, "ttft_overdue": {}, "ttft_overdue_answered": {}}}]}})",
        overdue, answered);
  };
  LoadAggregator agg;
  LoadRound r = agg.round({{"a", with_overdue(3, 1)}});
  EXPECT_EQ(r.replicas["chat-0"].ttft_overdue, 3u);
  EXPECT_EQ(r.replicas["chat-0"].ttft_overdue_answered, 1u);
  r = agg.round({{"a", with_overdue(5, 3)}});
  EXPECT_EQ(r.replicas["chat-0"].ttft_overdue, 2u);
  EXPECT_EQ(r.replicas["chat-0"].ttft_overdue_answered, 2u);
  LoadRound later = agg.round({{"a", with_overdue(6, 3)}});
  r.merge(std::move(later));
  EXPECT_EQ(r.replicas["chat-0"].ttft_overdue, 3u);
}

TEST(GatewayLoad, HeldRequestsAreDemandAndStaleScrapesAreIgnored) {
  LoadAggregator agg;
  LoadRound r = agg.round({{"a", report(0, 0, 0, 30, R"({"chat": 2, "idle": 0})")},
                           {"b", report(0, 0, 0, 30, R"({"chat": 3})")}});
  EXPECT_EQ(r.demand, (std::set<std::string>{"chat"}));
  // How many, over the gateways: the autoscaler's load while none is ready.
  EXPECT_EQ(r.held, (std::map<std::string, uint64_t>{{"chat", 5}}));
  EXPECT_FALSE(r.replicas["chat-0"].waiting.has_value());  // scraped 30 s ago
}

// Requests in a gateway's flow-control queue count as in flight and waiting
// on the service's replicas, and the autoscaler is told how many wait so
// over the gateways (arrivals it would not see in the requests sent), and
// how many of them are past the service's SLO.
TEST(GatewayLoad, QueuedRequestsAreSummedPerService) {
  auto queued = [](int in_queue, int overdue = 0) {
    return fmt::format(
        R"({{"endpoints": [{{"service": "chat", "replica": "chat-0", "requests": 1,
            "in_flight": 4}}], "queued": {{"chat": {}}}, "queued_overdue": {{"chat": {}}}}})",
        in_queue, overdue);
  };
  LoadAggregator agg;
  std::vector<std::string> errors;
  // More past the SLO than queued (a broken report) counts as all queued.
  LoadRound r = agg.round({{"a", queued(5, 2)}, {"b", queued(3, 9)}}, &errors);
  EXPECT_TRUE(errors.empty());
  EXPECT_EQ(r.replicas["chat-0"].in_flight, 4 + 5 + 4 + 3);
  EXPECT_EQ(r.queued, (std::map<std::string, uint64_t>{{"chat", 8}}));
  EXPECT_EQ(r.queued_overdue, (std::map<std::string, uint64_t>{{"chat", 2 + 3}}));
  // A current value: a later round's replaces it.
  r.merge(agg.round({{"a", queued(1)}}));
  EXPECT_EQ(r.queued, (std::map<std::string, uint64_t>{{"chat", 1}}));
  EXPECT_TRUE(r.queued_overdue.empty());
  // Queued at a gateway that has no replica of the service (yet): as held.
  r = agg.round(
      {{"a", queued(1)},
       {"c", R"({"endpoints": [], "queued": {"chat": 2}, "queued_overdue": {"chat": 2}})"}},
      &errors);
  EXPECT_EQ(r.queued, (std::map<std::string, uint64_t>{{"chat", 1}}));
  EXPECT_TRUE(r.queued_overdue.empty());  // held there: the offered load sizes it
  EXPECT_EQ(r.held, (std::map<std::string, uint64_t>{{"chat", 2}}));
  EXPECT_EQ(r.demand, (std::set<std::string>{"chat"}));
}

// Requests a gateway turned away (a full queue, a hold that timed out) are
// arrivals the sends do not show: counters per service, turned into
// increments as the requests sent are.
TEST(GatewayLoad, TurnedAwayRequestsAreIncrementsPerService) {
  auto away = [](int chat, int idle) {
    return fmt::format(
        R"({{"endpoints": [{{"service": "chat", "replica": "chat-0", "requests": 1}}],
            "turned_away": {{"chat": {}, "idle": {}}}}})",
        chat, idle);
  };
  LoadAggregator agg;
  std::vector<std::string> errors;
  LoadRound r = agg.round({{"a", away(5, 2)}, {"b", away(3, 0)}}, &errors);
  EXPECT_TRUE(errors.empty());
  EXPECT_EQ(r.turned_away, (std::map<std::string, uint64_t>{{"chat", 8}, {"idle", 2}}));
  // Then what is new; gateway b restarted (its counter went down).
  LoadRound later = agg.round({{"a", away(9, 2)}, {"b", away(1, 0)}});
  EXPECT_EQ(later.turned_away, (std::map<std::string, uint64_t>{{"chat", 4 + 1}}));
  // Missing a round loses nothing and counts nothing twice.
  EXPECT_TRUE(agg.round({{"a", away(9, 2)}}).turned_away.empty());
  EXPECT_EQ(agg.round({{"a", away(9, 2)}, {"b", away(3, 0)}}).turned_away,
            (std::map<std::string, uint64_t>{{"chat", 2}}));
  // Rounds the controller did not take yet add up.
  r.merge(std::move(later));
  EXPECT_EQ(r.turned_away, (std::map<std::string, uint64_t>{{"chat", 13}, {"idle", 2}}));
  // Malformed counts read as none.
  r = agg.round({{"c", R"({"endpoints": [], "turned_away": {"chat": -4, "idle": "x"}})"}});
  EXPECT_TRUE(r.turned_away.empty());
}

TEST(GatewayLoad, MalformedReportsAreSkippedWithAReason) {
  LoadAggregator agg;
  std::vector<std::string> errors;
  LoadRound r = agg.round({{"a", "not json"},
                           {"b", R"({"endpoints": [{"requests": 4}, 7]})"},
                           {"c", R"({"endpoints": [{"replica": "x", "requests": "many",
                                     "ttft_counts": [-1, "2"]}], "held": []})"}},
                          &errors);
  EXPECT_EQ(errors.size(), 3u);
  EXPECT_NE(errors[0].find("gateway a"), std::string::npos) << errors[0];
  EXPECT_EQ(r.replicas["x"].requests, 0u);
  EXPECT_TRUE(r.demand.empty());
}

TEST(GatewayLoad, ReportsFromOtherNamespacesSpeakTheControllersNames) {
  const kube::NamespaceScope scope("loadstar");
  gateway::LoadReport report;
  report.endpoints.push_back({});
  report.endpoints[0].service = "chat";
  report.endpoints[0].replica = "chat-0";
  report.held["chat"] = 2;
  report.queued["chat"] = 1;
  report.turned_away["chat"] = 4;
  report.tenants.push_back({.tenant = "team-a-users", .model = "chat", .requests = 3});
  gateway::LoadReport home = report;
  qualify_report(home, scope, "loadstar");
  EXPECT_EQ(home.endpoints[0].replica, "chat-0");
  qualify_report(report, scope, "team-a");
  EXPECT_EQ(report.endpoints[0].service, "team-a/chat");
  EXPECT_EQ(report.endpoints[0].replica, "team-a/chat-0");
  EXPECT_EQ(report.held, (std::map<std::string, int64_t>{{"team-a/chat", 2}}));
  EXPECT_EQ(report.queued, (std::map<std::string, int64_t>{{"team-a/chat", 1}}));
  EXPECT_EQ(report.turned_away, (std::map<std::string, uint64_t>{{"team-a/chat", 4}}));
  // Usage is billed to the Tenant of the gateway's namespace.
  EXPECT_EQ(report.tenants[0].tenant, "team-a/team-a-users");
  EXPECT_EQ(report.tenants[0].model, "team-a/chat");
  EXPECT_EQ(home.tenants[0].tenant, "team-a-users");
}

TEST(GatewayLoad, OnlyReadyGatewayPodsArePolled) {
  const auto pods = kube::json::parse(R"([
    {"metadata": {"name": "g1", "namespace": "team-a"}, "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 9000}]}]},
     "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}},
    {"metadata": {"name": "g2", "namespace": "loadstar"}, "spec": {"containers": [{}]},
     "status": {"podIP": "10.0.0.2", "conditions": [{"type": "Ready", "status": "True"}]}},
    {"metadata": {"name": "g3"}, "status": {"podIP": "10.0.0.3",
     "conditions": [{"type": "Ready", "status": "False"}]}},
    {"metadata": {"name": "g4", "deletionTimestamp": "2026-11-24T00:00:00Z"},
     "status": {"podIP": "10.0.0.4", "conditions": [{"type": "Ready", "status": "True"}]}},
    {"metadata": {"name": "g5"}, "status": {"phase": "Pending"}}])");
  EXPECT_EQ(ready_pod_addresses(pods.get<std::vector<kube::json>>()),
            (std::vector<ServingPod>{{"team-a", "10.0.0.1:9000"}, {"loadstar", "10.0.0.2:8080"}}));
}

}  // namespace
}  // namespace loadstar::controller
