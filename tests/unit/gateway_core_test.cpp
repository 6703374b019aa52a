#include <gtest/gtest.h>

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
