#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "gateway/first_token_deadlines.h"
#include "gateway/load_report.h"
#include "gateway/request_peek.h"
#include "gateway/routing_table.h"
#include "gateway/stats.h"

namespace loadstar::gateway {
namespace {

TEST(RequestPeek, ReadsModelAndStreamOptions) {
  auto p = peek_request(
      R"({"messages":[],"stream":true,"model":"chat","stream_options":{"include_usage":true}})");
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->model, "chat");
  EXPECT_TRUE(p->stream);
  EXPECT_TRUE(p->include_usage);
  EXPECT_FALSE(peek_request("{").ok());
  EXPECT_FALSE(peek_request("[1]").ok());
  auto missing = peek_request(R"({"prompt":"x"})");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().message, "model: a model name is required");
  EXPECT_FALSE(peek_request(R"({"model":7})").ok());
}

TEST(RequestPeek, StreamsAskTheEngineForUsage) {
  const std::string plain = R"({"model":"m","stream":true})";
  auto p = peek_request(plain);
  ASSERT_TRUE(p.ok());
  const std::string body = upstream_body(plain, *p);
  auto again = peek_request(body);
  ASSERT_TRUE(again.ok()) << body;
  EXPECT_TRUE(again->include_usage);
  const std::string off = R"({"model":"m","stream":true,"stream_options":{"include_usage":false}})";
  auto q = peek_request(off);
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(peek_request(upstream_body(off, *q))->include_usage);
  const std::string not_stream = R"({"model":"m"})";
  EXPECT_EQ(upstream_body(not_stream, *peek_request(not_stream)), not_stream);
}

// llama.cpp selects adapters by index in the body: the gateway's selection
// replaces whatever the client sent, and a base-model request carries none.
TEST(RequestPeek, AnEngineSelectingAdaptersByIndexGetsOnlyTheGatewaysSelection) {
  const std::string body =
      R"({"model":"sql","prompt":"x","stream":true,"lora":[{"id":1,"scale":5}]})";
  auto p = peek_request(body);
  ASSERT_TRUE(p.ok());
  auto sent = nlohmann::json::parse(upstream_body_selecting_adapter(body, *p, "chat", 0));
  EXPECT_EQ(sent["model"], "chat");
  EXPECT_EQ(sent["lora"], nlohmann::json::parse(R"([{"id":0,"scale":1.0}])"));
  EXPECT_EQ(sent["stream_options"]["include_usage"], true);
  EXPECT_EQ(sent["prompt"], "x");
  auto base = nlohmann::json::parse(upstream_body_selecting_adapter(body, *p, "", -1));
  EXPECT_FALSE(base.contains("lora"));
  EXPECT_EQ(base["model"], "sql");
}

TEST(RequestPeek, ADuplicateStreamOptionsKeyDoesNotThrow) {
  // The peek sees the first "stream_options" (an object); the rewrite's
  // parser keeps the last (a number), which used to throw.
  const std::string twice = R"({"model":"m","stream":true,"stream_options":{},"stream_options":0})";
  auto p = peek_request(twice);
  ASSERT_TRUE(p.ok());
  std::string body;
  ASSERT_NO_THROW(body = upstream_body(twice, *p));
  EXPECT_EQ(body, R"({"model":"m","stream":true,"stream_options":{"include_usage":true}})");
}

TEST(RequestPeek, ReadsUsage) {
  auto u = peek_usage(
      R"({"id":"x","choices":[],"usage":{"prompt_tokens":12,"total_tokens":15,"completion_tokens":3}})");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->prompt_tokens, 12u);
  EXPECT_EQ(u->completion_tokens, 3u);
  EXPECT_FALSE(peek_usage(R"({"usage":null})").has_value());
  EXPECT_FALSE(peek_usage("not json").has_value());
}

TEST(GatewayStats, MergesWorkersAndRendersPrometheusText) {
  GatewayStats a, b;
  a.models["chat"].requests_by_code[200] = 2;
  a.models["chat"].ttft.observe(0.02);
  b.models["chat"].requests_by_code[200] = 3;
  b.models["chat"].requests_by_code[503] = 1;
  b.models["chat"].ttft.observe(3);
  a.merge(b);
  const std::string text = render_metrics(a);
  EXPECT_NE(text.find(R"(loadstar_gateway_requests_total{code="200",model="chat"} 5)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(loadstar_gateway_requests_total{code="503",model="chat"} 1)"),
            std::string::npos);
  EXPECT_NE(
      text.find(
          R"(loadstar_gateway_time_to_first_token_seconds_bucket{model="chat",le="0.025"} 1)"),
      std::string::npos);
  EXPECT_NE(text.find(R"(loadstar_gateway_time_to_first_token_seconds_count{model="chat"} 2)"),
            std::string::npos);
}

}  // namespace
}  // namespace loadstar::gateway

namespace loadstar::gateway {
namespace {

TEST(TtftEpoch, ASetChangeRestartsTtftCountingForThatServiceOnly) {
  auto a = std::make_shared<Endpoint>("chat", "chat-0", "127.0.0.1", 8001);
  auto b = std::make_shared<Endpoint>("chat", "chat-1", "127.0.0.1", 8002);
  auto c = std::make_shared<Endpoint>("embed", "embed-0", "127.0.0.1", 8003);
  RoutingTable before, after;
  before.services["chat"].ready = {a};
  before.services["embed"].ready = {c};
  after.services["chat"].ready = {b, a};  // a replica came
  after.services["embed"].ready = {c};    // unchanged
  stamp_ttft_epochs(before, after, 5000);
  EXPECT_EQ(a->ttft_epoch_ms.load(), 5000);
  EXPECT_EQ(b->ttft_epoch_ms.load(), 5000);
  EXPECT_EQ(c->ttft_epoch_ms.load(), 0);
  // The same set in another order is no change.
  RoutingTable again;
  again.services["chat"].ready = {a, b};
  again.services["embed"].ready = {c};
  stamp_ttft_epochs(after, again, 9000);
  EXPECT_EQ(a->ttft_epoch_ms.load(), 5000);
  // A request that arrived before the change is not counted; one after is.
  a->observe_ttft(3.0, 4999);
  a->observe_ttft(0.04, 5000);
  uint64_t counted = 0;
  for (const auto& n : a->ttft_counts) counted += n.load();
  EXPECT_EQ(counted, 1u);
  EXPECT_EQ(a->ttft_counts[1].load(), 1u);  // (0.025, 0.05]
}

TEST(FirstTokenDeadlines, ARequestWithoutAFirstTokenAtItsSloCountsAsAMissThenAndOnce) {
  Endpoint e("chat", "chat-0", "127.0.0.1", 8001);
  FirstTokenDeadlines deadlines;
  FirstTokenDeadlines::Entry fast, slow, late;
  deadlines.watch(fast, e, 1000, 2.0, 1000);
  deadlines.watch(slow, e, 1500, 2.0, 1500);
  EXPECT_EQ(deadlines.watching(), 2u);
  // The fast one answers in time: not overdue, no longer watched.
  EXPECT_FALSE(fast.settle());
  e.observe_ttft(0.5, 1000, false);
  EXPECT_EQ(deadlines.sweep(3499), 0u);
  // The slow one's SLO passes unanswered: a miss now, before any answer.
  EXPECT_EQ(deadlines.sweep(3500), 1u);
  EXPECT_EQ(e.ttft_overdue.load(), 1u);
  EXPECT_EQ(deadlines.watching(), 0u);
  EXPECT_EQ(deadlines.sweep(9000), 0u);  // counted once
  // Its answer comes later: counted in the histogram as ever, and as one
  // already counted, so a reader does not count it twice.
  EXPECT_TRUE(slow.settle());
  e.observe_ttft(6.0, 1500, true);
  EXPECT_EQ(e.ttft_overdue_answered.load(), 1u);
  EXPECT_EQ(e.ttft_counts[std::size(Endpoint::kTtftBounds) - 3].load(), 1u);  // (5, 10]
  // A request sent after its deadline (a retry, a long hold) counts at once,
  // and a retry of one counted before does not count again.
  deadlines.watch(late, e, 2000, 1.0, 3500);
  EXPECT_EQ(e.ttft_overdue.load(), 2u);
  Endpoint other("chat", "chat-1", "127.0.0.1", 8002);
  deadlines.watch(late, other, 2000, 1.0, 3600);
  EXPECT_EQ(other.ttft_overdue.load(), 0u);
  EXPECT_EQ(deadlines.watching(), 0u);
}

TEST(FirstTokenDeadlines, OnlyRequestsSinceTheServingSetChangedCountAndEntriesUnlinkThemselves) {
  Endpoint e("chat", "chat-0", "127.0.0.1", 8001);
  e.ttft_epoch_ms = 5000;
  FirstTokenDeadlines deadlines;
  FirstTokenDeadlines::Entry before, after;
  deadlines.watch(before, e, 4000, 2.0, 5000);
  deadlines.watch(after, e, 5000, 2.0, 5000);
  {
    FirstTokenDeadlines::Entry gone;  // a request that ended (its frame went)
    deadlines.watch(gone, e, 5000, 2.0, 5000);
    EXPECT_EQ(deadlines.watching(), 3u);
  }
  EXPECT_EQ(deadlines.watching(), 2u);
  EXPECT_EQ(deadlines.sweep(8000), 2u);
  // Both are overdue, but only the one that arrived since the change counts
  // (as ttft_counts: the other queued behind the previous set).
  EXPECT_EQ(e.ttft_overdue.load(), 1u);
  EXPECT_TRUE(before.settle());
  EXPECT_TRUE(after.settle());
  // And the load report carries both counters.
  const EndpointLoad load = endpoint_load(e, 8000);
  EXPECT_EQ(load.ttft_overdue, 1u);
  auto parsed = parse_load_report(load_report_json({.endpoints = {load}}));
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->report.endpoints.size(), 1u);
  EXPECT_EQ(parsed->report.endpoints[0].ttft_overdue, 1u);
  EXPECT_EQ(parsed->report.endpoints[0].ttft_overdue_answered, 0u);
}

}  // namespace
}  // namespace loadstar::gateway
