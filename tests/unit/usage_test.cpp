// What the dashboard and chargeback read: a service's traffic over the last
// minute, and the usage ledger (per tenant, model and hour) that survives
// restarts of the controller and of the gateways without counting twice.
#include <gtest/gtest.h>

#include "controller/load.h"
#include "controller/traffic.h"
#include "controller/usage_ledger.h"

namespace loadstar::controller {
namespace {

using namespace std::chrono_literals;

TEST(Traffic, RatesAndPercentilesOverTheWindowOnly) {
  Traffic traffic(60);
  const Clock::time_point t0{};
  TrafficSample fast;
  fast.requests = 30;
  fast.failures = 3;
  fast.ttft[2] = 30;  // (0.05, 0.1]
  traffic.add({{"chat", fast}}, t0);
  traffic.add({}, t0 + 10s);
  TrafficSummary s = traffic.summary("chat", t0 + 10s);
  EXPECT_DOUBLE_EQ(s.window_s, 10);
  EXPECT_DOUBLE_EQ(s.requests_per_s, 3);
  EXPECT_DOUBLE_EQ(s.failures_per_s, 0.3);
  ASSERT_TRUE(s.ttft_p50_s && s.ttft_p90_s);
  EXPECT_GT(*s.ttft_p50_s, 0.05);
  EXPECT_LE(*s.ttft_p90_s, 0.1);
  EXPECT_FALSE(s.itl_p50_s);  // no streams: no inter-token latency
  // Slow answers later: the p90 moves up while the fast ones still count.
  TrafficSample slow;
  slow.requests = 30;
  slow.ttft[10] = 30;  // (1.5, 2]
  traffic.add({{"chat", slow}}, t0 + 30s);
  s = traffic.summary("chat", t0 + 30s);
  EXPECT_DOUBLE_EQ(s.requests_per_s, 2);
  EXPECT_GT(*s.ttft_p90_s, 1.5);
  // A minute after the fast ones they are gone.
  traffic.add({}, t0 + 61s);
  s = traffic.summary("chat", t0 + 61s);
  EXPECT_DOUBLE_EQ(s.window_s, 60);
  EXPECT_DOUBLE_EQ(s.requests_per_s, 0.5);
  EXPECT_GT(*s.ttft_p50_s, 1.5);
  EXPECT_DOUBLE_EQ(traffic.summary("other", t0 + 61s).requests_per_s, 0);
}

gateway::TenantLoad used(const std::string& tenant, uint64_t requests, uint64_t tokens, double cost,
                         uint64_t errors = 0) {
  return {.tenant = tenant,
          .model = "chat",
          .requests = requests,
          .errors = errors,
          .prompt_tokens = tokens,
          .completion_tokens = tokens / 2,
          .cost = cost};
}

constexpr int64_t kHour = 1764968400;  // 2025-12-05T21:00:00Z

TEST(UsageLedger, CountsWhatEachGatewaysCountersGrewInTheHourItSawIt) {
  UsageLedger ledger;
  // First sight of a gateway: everything it counted is new.
  EXPECT_TRUE(
      ledger.observe({{"gw-a", {"a1", {used("team-a", 10, 100, 150)}}},
                      {"gw-b", {"b1", {used("team-a", 5, 50, 75), used("team-b", 1, 10, 15)}}}},
                     kHour + 10));
  // Nothing new: nothing added.
  EXPECT_FALSE(ledger.observe({{"gw-a", {"a1", {used("team-a", 10, 100, 150)}}}}, kHour + 20));
  // The next hour: only growth, in the hour it was seen.
  ledger.observe({{"gw-a", {"a1", {used("team-a", 12, 120, 180, 1)}}}}, kHour + 3600 + 5);
  const auto rows = ledger.rows(0, INT64_MAX);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].hour, kHour);
  EXPECT_EQ(rows[0].tenant, "team-a");
  EXPECT_EQ(rows[0].usage.requests, 15u);
  EXPECT_EQ(rows[0].usage.prompt_tokens, 150u);
  EXPECT_EQ(rows[0].usage.completion_tokens, 75u);
  EXPECT_DOUBLE_EQ(rows[0].usage.cost, 225);
  EXPECT_EQ(rows[1].tenant, "team-b");
  EXPECT_EQ(rows[2].hour, kHour + 3600);
  EXPECT_EQ(rows[2].usage.requests, 2u);
  EXPECT_EQ(rows[2].usage.errors, 1u);
  EXPECT_DOUBLE_EQ(rows[2].usage.cost, 30);
  EXPECT_EQ(ledger.by_tenant(0, INT64_MAX)["team-a"].requests, 17u);
  EXPECT_EQ(ledger.rows(kHour + 3600, INT64_MAX).size(), 1u);
  EXPECT_EQ(ledger.rows(kHour, kHour + 3600).size(), 2u);
}

TEST(UsageLedger, ARestartedGatewayLosesNothingAndARestartedControllerCountsNothingTwice) {
  UsageLedger ledger;
  ledger.observe({{"gw", {"first", {used("team-a", 10, 100, 100)}}}}, kHour);
  // The gateway restarts (a new instance) and serves 12 before the next
  // look: all 12 are new, though its counter is above the old one's.
  ledger.observe({{"gw", {"second", {used("team-a", 12, 120, 120)}}}}, kHour + 60);
  EXPECT_EQ(ledger.by_tenant(0, INT64_MAX)["team-a"].requests, 22u);
  // The controller restarts from what it saved; the gateway went on.
  auto loaded = UsageLedger::load(ledger.save());
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  loaded->observe({{"gw", {"second", {used("team-a", 15, 150, 150)}}}}, kHour + 120);
  EXPECT_EQ(loaded->by_tenant(0, INT64_MAX)["team-a"].requests, 25u);
  EXPECT_DOUBLE_EQ(loaded->by_tenant(0, INT64_MAX)["team-a"].cost, 250);
  // A gateway missing from a round is not forgotten: back, it adds only growth.
  loaded->observe({}, kHour + 180);
  loaded->observe({{"gw", {"second", {used("team-a", 16, 160, 160)}}}}, kHour + 240);
  EXPECT_EQ(loaded->by_tenant(0, INT64_MAX)["team-a"].requests, 26u);
}

TEST(UsageLedger, KeepsOnlyItsHoursAndRefusesADocumentItCannotRead) {
  UsageLedger ledger(2);
  ledger.observe({{"gw", {"i", {used("t", 1, 1, 1)}}}}, kHour);
  ledger.observe({{"gw", {"i", {used("t", 2, 2, 2)}}}}, kHour + 3600);
  ledger.observe({{"gw", {"i", {used("t", 3, 3, 3)}}}}, kHour + 7200);
  const auto rows = ledger.rows(0, INT64_MAX);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].hour, kHour + 3600);
  EXPECT_FALSE(UsageLedger::load("").ok());
  EXPECT_FALSE(UsageLedger::load(R"({"version": 3, "hours": []})").ok());
  auto bad = UsageLedger::load(R"({"version": 2, "hours": [[0, "t", "m", -1, 0, 0, 0, 0]]})");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("hours[0]: requests must be a count"), std::string::npos)
      << bad.error().message;
}

TEST(UsageLedger, ADocumentTooBigForAConfigMapLosesItsOldestHoursFirst) {
  UsageLedger ledger(100000);
  // 60 tenants for 400 hours: 24,000 rows of about 55 bytes, over 900 KiB.
  for (int h = 0; h < 400; ++h) {
    std::vector<gateway::TenantLoad> tenants;
    for (int t = 0; t < 60; ++t)
      tenants.push_back(used("tenant-" + std::to_string(t), h + 1, 10 * (h + 1), h + 1.5));
    ledger.observe({{"gw", {"i", tenants}}}, kHour + h * 3600);
  }
  size_t dropped = 0;
  const std::string document = ledger.save(&dropped);
  EXPECT_LE(document.size(), UsageLedger::kMaxDocumentBytes);
  EXPECT_GT(dropped, 0u);
  const auto rows = ledger.rows(0, INT64_MAX);
  EXPECT_EQ(rows.size(), 400u * 60u - dropped);
  EXPECT_EQ(rows.back().hour, kHour + 399 * 3600);  // the newest stay
  auto loaded = UsageLedger::load(document);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(loaded->rows(0, INT64_MAX).size(), rows.size());
}

TEST(UsageLedger, CsvQuotesWhatNeedsItAndDefusesFormulas) {
  const std::string csv =
      usage_csv({{kHour, "=cmd|' /C calc'!A0", "chat, large", {1, 0, 2, 3, 4.5}},
                 {kHour, "\tx", "-1", {0, 0, 0, 0, 0}}});
  EXPECT_EQ(csv,
            "hour,tenant,model,requests,errors,prompt_tokens,completion_tokens,cost\n"
            "2025-12-05T21:00:00Z,'=cmd|' /C calc'!A0,\"chat, large\",1,0,2,3,4.5\n"
            "2025-12-05T21:00:00Z,'\tx,'-1,0,0,0,0,0\n");
}

TEST(UsageLedger, TenantUsageTravelsInTheLoadReportToTheRound) {
  gateway::LoadReport report;
  report.instance = "gw-start-1";
  report.tenants = {used("team-a", 3, 30, 45)};
  auto parsed = gateway::parse_load_report(gateway::load_report_json(report));
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->report.tenants.size(), 1u);
  EXPECT_EQ(parsed->report.instance, "gw-start-1");
  EXPECT_EQ(parsed->report.tenants[0].requests, 3u);
  EXPECT_DOUBLE_EQ(parsed->report.tenants[0].cost, 45);
  // A usage entry without names is skipped, with the reason.
  auto odd = gateway::parse_load_report(R"({"endpoints": [], "tenants": [{"requests": 3}]})");
  ASSERT_TRUE(odd.ok());
  EXPECT_TRUE(odd->report.tenants.empty());
  EXPECT_EQ(odd->problems.size(), 1u);
  LoadAggregator aggregator;
  LoadRound round = aggregator.round(
      std::vector<std::pair<std::string, std::string>>{{"gw", gateway::load_report_json(report)}});
  ASSERT_EQ(round.tenants.count("gw"), 1u);
  EXPECT_EQ(round.tenants["gw"].instance, "gw-start-1");
  EXPECT_EQ(round.tenants["gw"].tenants.at(0).tenant, "team-a");
}

}  // namespace
}  // namespace loadstar::controller
