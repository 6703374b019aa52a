// KV-cache events end to end: engine-sim publishes vLLM's events over
// ZeroMQ for what its prefix cache holds, and gateways route by them, so a
// gateway that never saw a prompt still sends it where its prefix is cached.
#include <gtest/gtest.h>

#include <chrono>
#include <regex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "gateway/kv_block_index.h"
#include "kvevents/zmq_transport.h"
#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

std::string document(int seed) {
  std::string out;
  for (int i = 0; i < 200; ++i) out += fmt::format(" page{} word{}", seed, i);
  return out;
}

std::string completion(const std::string& prompt) {
  return json{{"model", "chat"}, {"prompt", prompt}, {"max_tokens", 2}, {"ignore_eos", true}}
      .dump();
}

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

TEST(KvEvents, EngineSimPublishesWhatItsPrefixCacheHolds) {
  auto sim = EngineSim::start(
      synth_model("tiny", "16MiB"),
      {"--served-model-name", "chat", "--kv-events-config",
       R"({"enable_kv_cache_events": true, "endpoint": "tcp://127.0.0.1:*", "topic": "kv-events"})"});
  // It says where it bound (the port was left to it).
  std::smatch m;
  const std::string log = sim->log();
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(KV events published on (tcp://\S+))")))
      << log;
  gateway::KvBlockIndex index;
  std::atomic<int> lost{0};
  kvevents::Subscriber subscriber(
      {.batch = [&](uint64_t id, const kvevents::EventBatch& b) { index.apply(id, b); },
       .lost = [&](uint64_t) { ++lost; }});
  subscriber.set_sources({{1, m[1].str()}});
  // A subscriber misses what is published before it connects (ZeroMQ's
  // slow joiner): send until the engine's blocks show up.
  const std::string prompt = document(1);
  // The prompt's ids as the engine itself gives them (vLLM's /tokenize),
  // as a gateway asks for them.
  const auto tokenized = sim->post("/tokenize", json{{"prompt", prompt}}.dump());
  ASSERT_EQ(tokenized.status, 200) << tokenized.body;
  const json answer = json::parse(tokenized.body);
  EXPECT_EQ(answer["count"], answer["tokens"].size());
  EXPECT_GT(answer["max_model_len"].get<int>(), 0);
  const auto tokens = answer["tokens"].get<std::vector<uint32_t>>();
  EXPECT_EQ(sim->post("/tokenize", json{{"model", "other"}, {"prompt", prompt}}.dump()).status,
            404);
  EXPECT_EQ(sim->post("/tokenize", R"({"messages": "no"})").status, 400);
  std::vector<uint32_t> matched(1);
  const uint64_t id = 1;
  ASSERT_TRUE(eventually([&] {
    EXPECT_EQ(sim->post("/v1/completions", completion(prompt)).status, 200);
    index.match(tokens, "", std::span(&id, 1), matched);
    return matched[0] > 0;
  })) << sim->log();
  // Every full block of the prompt, as the gateway tokenizes it.
  EXPECT_EQ(matched[0], tokens.size() / 16 * 16);
  EXPECT_EQ(lost, 0);
  EXPECT_GT(subscriber.batches(), 0u);
}

TEST(KvEvents, AGatewayRoutesByWhatEnginesReportNotByWhatItSent) {
  // Two gateways side by side, sharing nothing: the second learns where
  // prompts are cached from the engines alone.
  auto up =
      Up::start(quickstart(3, R"("--time-scale", "20")", "kvEvents: true, "), {"--gateways", "2"});
  up->wait_ready("chat", 3);
  std::smatch m;
  std::string log = up->log();
  ASSERT_TRUE(eventually([&] {
    log = up->log();
    return std::regex_search(log, m, std::regex(R"(gateway 2:\s+http://[^:]+:(\d+)/v1)"));
  })) << log;
  const uint16_t second = static_cast<uint16_t>(std::stoi(m[1].str()));
  ASSERT_TRUE(eventually([&] {
    return scrape_metric(second, "loadstar_gateway_kv_events_engines") == 3;
  })) << up->log();

  // Two documents, each sent once through the first gateway (the events'
  // subscribers may join late: resend until the second sees blocks).
  std::vector<std::string> holders;
  for (int doc = 0; doc < 2; ++doc) {
    auto r = up->post("/v1/completions", completion(document(doc) + " first question"));
    ASSERT_EQ(r.status, 200);
    holders.emplace_back(r.header("x-loadstar-endpoint"));
  }
  ASSERT_TRUE(eventually([&] {
    return scrape_metric(second, "loadstar_gateway_kv_cache_blocks") > 60;
  })) << up->log();
  // Through the second gateway, which never saw them, follow-up questions
  // go where each document is cached.
  for (int doc = 0; doc < 2; ++doc)
    for (int q = 0; q < 3; ++q) {
      auto r = http::fetch({.port = second,
                            .method = "POST",
                            .target = "/v1/completions",
                            .body = completion(document(doc) + " question " + std::to_string(q)),
                            .headers = {{"Content-Type", "application/json"}},
                            .timeout_s = 10});
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(r->status, 200);
      EXPECT_EQ(r->header("x-loadstar-endpoint"), holders[static_cast<size_t>(doc)])
          << "document " << doc << " question " << q;
    }
  // A chat's prompt goes through the engine's chat template: its ids, asked
  // of an engine, match what the engine cached for the same conversation.
  const std::string chat_body = json{{"model", "chat"},
                                     {"max_tokens", 2},
                                     {"messages",
                                      {{{"role", "system"}, {"content", document(2)}},
                                       {{"role", "user"}, {"content", "first question"}}}}}
                                    .dump();
  // Every earlier batch in first (the count steady), so the next is the chat's.
  double batches = -1;
  ASSERT_TRUE(eventually([&] {
    const double now = scrape_metric(second, "loadstar_gateway_kv_events_batches_total");
    const bool steady = now == batches;
    batches = now;
    if (!steady) std::this_thread::sleep_for(200ms);
    return steady;
  }));
  auto first = up->post("/v1/chat/completions", chat_body);
  ASSERT_EQ(first.status, 200) << first.body;
  const std::string chat_holder(first.header("x-loadstar-endpoint"));
  // (The engine's pool may be full: its events then evict as many blocks
  // as they store, so wait for the batch, not for more blocks.)
  ASSERT_TRUE(eventually([&] {
    return scrape_metric(second, "loadstar_gateway_kv_events_batches_total") > batches;
  })) << up->log();
  auto again = http::fetch({.port = second,
                            .method = "POST",
                            .target = "/v1/chat/completions",
                            .body = chat_body,
                            .headers = {{"Content-Type", "application/json"}},
                            .timeout_s = 10});
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->status, 200);
  EXPECT_EQ(again->header("x-loadstar-endpoint"), chat_holder);
  // Every prompt's ids came from an engine (POST /tokenize), none failed.
  EXPECT_EQ(scrape_metric(second, "loadstar_gateway_tokenize_seconds_count", "model=\"chat\""), 7);
  EXPECT_EQ(scrape_metric(second, "loadstar_gateway_tokenize_failures_total", "model=\"chat\""), 0);
  EXPECT_EQ(scrape_metric(second, "loadstar_gateway_kv_events_lost_total"), 0);
}

TEST(KvEvents, AnEngineSlowToTokenizeIsNotWaitedFor) {
  // Engines whose API server is busy (--fault-delay holds /tokenize too):
  // the gateway gives up the ask after its bound, counts it, and routes the
  // request by its own prefix index.
  auto up =
      Up::start(quickstart(2, R"("--time-scale", "20", "--fault-delay", "1")", "kvEvents: true, "));
  up->wait_ready("chat", 2);
  const auto start = std::chrono::steady_clock::now();
  auto r = up->post("/v1/completions", completion(document(0)));
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(r.status, 200) << r.body;
  const uint16_t port = up->port();
  EXPECT_EQ(settled_metric(port, "loadstar_gateway_tokenize_failures_total", "model=\"chat\"", 1),
            1);
  EXPECT_EQ(scrape_metric(port, "loadstar_gateway_tokenize_seconds_count", "model=\"chat\""), 0);
  // The engine's delay and the ask's bound (250 ms), not the engine's delay
  // twice (2 s: what waiting for the ask would take).
  EXPECT_GE(took, 1.0);
  EXPECT_LT(took, 1.9) << took;
}

}  // namespace
}  // namespace loadstar::testing
