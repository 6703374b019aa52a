// The gateway's deciding cores: prefix index, endpoint picker, engine-load
// scraping, tenant limits and cost expressions.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "common/digest.h"
#include "gateway/adapter_routing.h"
#include "gateway/endpoint_adapters.h"
#include "gateway/engine_load.h"
#include "gateway/peer_load.h"
#include "gateway/picker.h"
#include "gateway/prefix_index.h"
#include "gateway/request_peek.h"
#include "gateway/tenants.h"

namespace loadstar::gateway {
namespace {

std::string words(uint32_t seed, size_t n) {
  std::mt19937 rng(seed);
  std::string out;
  for (size_t i = 0; i < n; ++i) out += " w" + std::to_string(rng() % 100000);
  return out;
}

TEST(PrefixIndex, MatchesTheLongestRecordedPrefixPerEndpoint) {
  PrefixIndex index({.block_bytes = 16, .max_blocks = 64});
  const std::string system = words(1, 40);
  const std::string a = system + words(2, 40), b = system + words(3, 40);
  auto ha = hash_prefix_blocks(a, 16, 64), hb = hash_prefix_blocks(b, 16, 64);
  ASSERT_EQ(ha.size(), std::min<size_t>(a.size() / 16, 64));
  index.record(ha, 7);
  const uint64_t candidates[] = {7, 8};
  uint32_t matched[2];
  index.match(hb, candidates, matched);
  // b shares the system prompt's full blocks with a, no more.
  size_t common = 0;
  while (common < std::min(ha.size(), hb.size()) && ha[common] == hb[common]) ++common;
  EXPECT_GT(common, 10u);
  EXPECT_EQ(matched[0], common);
  EXPECT_EQ(matched[1], 0u);
  index.match(ha, candidates, matched);
  EXPECT_EQ(matched[0], ha.size());
  // Another endpoint served b: both hold the shared part, only 8 holds b's tail.
  index.record(hb, 8);
  index.match(hb, candidates, matched);
  EXPECT_EQ(matched[0], common);
  EXPECT_EQ(matched[1], hb.size());
  // An endpoint that is gone is forgotten.
  const size_t before = index.size();
  index.forget(8);
  EXPECT_EQ(index.size(), before - hb.size());
  index.match(hb, candidates, matched);
  EXPECT_EQ(matched[1], 0u);
}

// A LoRA adapter's prompts chain from their own start: the same text is
// no hit across models, and with the same key it is.
TEST(PrefixIndex, AKeyHashesTheSameTextApart) {
  const std::string text(1024, 'x');
  const auto base = hash_prefix_blocks(text, 128, 64);
  const auto sql = hash_prefix_blocks(text, 128, 64, "sql");
  ASSERT_EQ(base.size(), 8u);
  ASSERT_EQ(sql.size(), 8u);
  for (size_t i = 0; i < base.size(); ++i) EXPECT_NE(base[i], sql[i]) << i;
  EXPECT_EQ(sql, hash_prefix_blocks(text, 128, 64, "sql"));
  EXPECT_NE(sql, hash_prefix_blocks(text, 128, 64, "poems"));
}

TEST(PrefixIndex, MemoryStaysBoundedUnderUniquePrompts) {
  PrefixIndex index({.block_bytes = 16, .max_blocks = 32});
  for (uint32_t i = 0; i < 5000; ++i)
    index.record(hash_prefix_blocks(words(i, 100), 16, 32), i % 5, /*capacity_blocks=*/400);
  EXPECT_EQ(index.size(), 5u * 400);
  // The most recent prompt is still matched in full.
  auto last = hash_prefix_blocks(words(4999, 100), 16, 32);
  const uint64_t candidates[] = {4999 % 5};
  uint32_t matched[1];
  index.match(last, candidates, matched);
  EXPECT_EQ(matched[0], last.size());
}

TEST(PrefixIndex, ForgetsWhatTheEngineMustHaveEvictedTailFirst) {
  // Endpoint 1's cache holds 10 blocks: a 10-block prompt, then 5 blocks of
  // another. The first keeps its head, so it still matches in part.
  PrefixIndex index({.block_bytes = 8, .max_blocks = 10});
  auto first = hash_prefix_blocks(words(1, 40), 8, 10);
  ASSERT_EQ(first.size(), 10u);
  index.record(first, 1, 10);
  index.record(hash_prefix_blocks(words(2, 40), 8, 5), 1, 10);
  const uint64_t candidates[] = {1};
  uint32_t matched[1];
  index.match(first, candidates, matched);
  EXPECT_EQ(matched[0], 5u);
  EXPECT_EQ(index.size(), 10u);
}

TEST(Picker, PrefixAffinityWinsUntilLoadOutweighsIt) {
  PickerConfig config;
  std::vector<CandidateView> c(3);
  c[1].prefix_blocks = 20;
  EXPECT_EQ(pick(config, c, 20, 0).index, 1u);
  // The holder is busy, the others idle: load outweighs a full prefix match.
  c[1].in_flight = 10;
  c[1].has_engine_metrics = true;
  c[1].waiting = 8;
  c[1].kv_usage = 0.9;
  for (size_t i : {0u, 2u}) c[i].has_engine_metrics = true;
  EXPECT_NE(pick(config, c, 20, 0).index, 1u);
  // Slightly busier than the rest: the prefix still wins.
  for (size_t i : {0u, 2u}) {
    c[i].in_flight = 9;
    c[i].waiting = 7;
    c[i].kv_usage = 0.85;
  }
  EXPECT_EQ(pick(config, c, 20, 0).index, 1u);
}

TEST(Picker, PrefillCostWeighsCacheHitsAgainstQueuedWork) {
  PickerConfig config;
  std::vector<CandidateView> c(2);
  // A 40 KB prompt: endpoint 0 holds 30 KB of it but has 60 KB of prompts
  // waiting for their first token; endpoint 1 holds nothing and is idle.
  c[0] = {.pending_prefill = 60000, .uncached = 10000, .prefix_blocks = 240};
  c[1] = {.pending_prefill = 0, .uncached = 40000};
  EXPECT_EQ(pick(config, c, 320, 0).index, 1u);
  // With only 10 KB waiting there, the cache hit is worth the wait.
  c[0].pending_prefill = 10000;
  EXPECT_EQ(pick(config, c, 320, 0).index, 0u);
}

TEST(Picker, AReplicaNotScrapedYetIsNeitherFavouredNorPenalised) {
  // Two equally loaded replicas, one scraped, one not yet: they share the
  // picks as equals (a missing scrape used to count as a half-full KV cache).
  std::vector<CandidateView> c(2);
  c[0] = {.in_flight = 1, .has_engine_metrics = true, .waiting = 0, .kv_usage = 0.01};
  c[1] = {.in_flight = 1};
  int second = 0;
  for (uint64_t turn = 0; turn < 4; ++turn) second += pick(PickerConfig{}, c, 0, turn).index == 1;
  EXPECT_EQ(second, 2);
}

TEST(Picker, FiltersFullKvCachesAndHonoursSessions) {
  PickerConfig config;
  std::vector<CandidateView> c(2);
  c[0].has_engine_metrics = c[1].has_engine_metrics = true;
  c[0].kv_usage = 0.99;
  c[0].prefix_blocks = 10;
  EXPECT_EQ(pick(config, c, 10, 0).index, 1u);
  c[1].kv_usage = 0.99;  // everyone full: the filter stands aside
  EXPECT_EQ(pick(config, c, 10, 0).index, 0u);
  c[0].kv_usage = c[1].kv_usage = 0.1;
  c[1].session_match = true;
  EXPECT_EQ(pick(config, c, 10, 0).index, 1u);
}

TEST(Picker, BaselinesAndTies) {
  PickerConfig rr{.kind = PickerKind::kRoundRobin};
  std::vector<CandidateView> c(3);
  for (uint64_t t = 0; t < 6; ++t) EXPECT_EQ(pick(rr, c, 0, t).index, t % 3);
  PickerConfig lr{.kind = PickerKind::kLeastRequest};
  c[0].in_flight = 2;
  c[1].in_flight = 1;
  c[2].in_flight = 1;
  EXPECT_EQ(pick(lr, c, 0, 0).index, 1u);
  EXPECT_EQ(pick(lr, c, 0, 2).index, 2u);
  // The scored picker spreads equal candidates by turn.
  std::vector<CandidateView> idle(4);
  std::vector<int> hits(4);
  for (uint64_t t = 0; t < 400; ++t) ++hits[pick(PickerConfig{}, idle, 0, t).index];
  for (int h : hits) EXPECT_EQ(h, 100);
  EXPECT_TRUE(parse_picker_kind("least-request").ok());
  EXPECT_FALSE(parse_picker_kind("random").ok());
}

TEST(EngineLoad, ReadsVllmSglangAndLlamaCppNames) {
  auto vllm = parse_engine_load(
      "# HELP vllm:num_requests_waiting x\n"
      "vllm:num_requests_waiting{model_name=\"a b}\"} 3.0\n"
      "vllm:num_requests_running{model_name=\"m\"} 5\n"
      "vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n"
      "vllm:num_requests_waiting{model_name=\"other\"} 1\n"
      "vllm:prompt_tokens_total{model_name=\"m\"} 100\n");
  EXPECT_EQ(vllm.waiting, 4.0);
  EXPECT_EQ(vllm.running, 5.0);
  EXPECT_EQ(vllm.kv_usage, 0.25);
  auto sglang = parse_engine_load(
      "sglang:num_queue_reqs{model_name=\"m\"} 2\nsglang:num_running_reqs 7\n"
      "sglang:token_usage{model_name=\"m\"} 0.5\n");
  EXPECT_EQ(sglang.waiting, 2.0);
  EXPECT_EQ(sglang.running, 7.0);
  EXPECT_EQ(sglang.kv_usage, 0.5);
  auto llama = parse_engine_load(
      "llamacpp:requests_deferred 1\nllamacpp:requests_processing 2\n"
      "llamacpp:kv_cache_usage_ratio 0.75\n");
  EXPECT_EQ(llama.waiting, 1.0);
  EXPECT_EQ(llama.kv_usage, 0.75);
  auto sizes = parse_engine_load(
      "vllm:cache_config_info{block_size=\"16\",model_name=\"m\",num_gpu_blocks=\"24000\"} 1\n");
  EXPECT_EQ(sizes.kv_capacity_tokens, 384000.0);
  EXPECT_EQ(parse_engine_load("sglang:max_total_num_tokens 5000\n").kv_capacity_tokens, 5000.0);
  auto junk = parse_engine_load(
      "vllm:num_requests_waiting{unterminated 3\nvllm:num_requests_running NaN\n");
  EXPECT_FALSE(junk.waiting);
  EXPECT_FALSE(junk.running);
}

TEST(EngineLoad, ReadsTheNewestLoraRequestsInfoSeries) {
  // vLLM keeps every label set it ever set; the value is when it was current.
  auto load = parse_engine_load(
      "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"old\","
      "waiting_lora_adapters=\"\"} 1.7e9\n"
      "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"sql,chat\","
      "waiting_lora_adapters=\"poem\"} 1.8e9\n"
      "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"older\","
      "waiting_lora_adapters=\"\"} 1.6e9\n");
  ASSERT_TRUE(load.loras);
  EXPECT_EQ(load.loras->running, (std::vector<std::string>{"sql", "chat"}));
  EXPECT_EQ(load.loras->waiting, (std::vector<std::string>{"poem"}));
  EXPECT_EQ(load.loras->max_loras, 4u);
  EXPECT_FALSE(parse_engine_load("vllm:num_requests_waiting 1\n").loras);
}

TEST(EndpointAdapters, ActiveIsReportedOrInFlightAndRecentIsBounded) {
  EndpointAdapters a;
  a.reported({"sql", "chat"}, 2, 1000);
  auto v = a.view("sql", 0);
  EXPECT_TRUE(v.active);
  EXPECT_EQ(v.active_adapters, 2u);
  EXPECT_EQ(v.max_loras, 2u);
  // A stale report counts as none; what this gateway sends counts at once.
  EXPECT_FALSE(a.view("sql", 1000).active);
  a.sent("poem", 2);
  a.sent("chat", 2);
  v = a.view("poem", 0);
  EXPECT_TRUE(v.active);
  EXPECT_EQ(v.active_adapters, 3u);  // sql, chat (reported and sent), poem
  a.finished("poem");
  v = a.view("poem", 1000);
  EXPECT_FALSE(v.active);
  EXPECT_TRUE(v.recent);
  a.sent("x", 2);  // recent keeps two: chat, x
  EXPECT_FALSE(a.view("poem", 1000).recent);
  EXPECT_TRUE(a.view("chat", 1000).recent);
  // vLLM lists an adapter running and waiting at once: one adapter.
  a.reported({"sql", "sql", "chat"}, 4, 2000);
  EXPECT_EQ(a.view("none", 0).active_adapters, 3u);  // sql, chat; x in flight
  // Loaded at runtime from a path: the same path needs no load again.
  EXPECT_FALSE(a.registered_path("sql"));
  a.registered("sql", "/a/1");
  EXPECT_EQ(a.registered_path("sql"), "/a/1");
  a.registered("sql", "/a/2");
  EXPECT_EQ(a.registered_path("sql"), "/a/2");
  a.unregistered("sql");
  EXPECT_FALSE(a.registered_path("sql"));
}

// Which adapter an attempt serves and where: backends naming an adapter
// (hand-written routes too), replicas that loaded it at start (a rollout may
// mix lists), and llama.cpp's index on each replica.
TEST(AdapterRouting, PlansFiltersAndIndexesPerEndpoint) {
  RoutingTable::Service svc;
  svc.adapters_by_index = true;
  RoutingTable::Backend base{.service = "chat"};
  RoutingTable::Backend sql{.service = "chat", .model = "sql", .adapter = true};
  EXPECT_TRUE(adapter_plan(&svc, base).name.empty());
  EXPECT_TRUE(adapter_plan(&svc, base).by_index);
  EXPECT_EQ(adapter_plan(&svc, sql).name, "sql");
  EXPECT_FALSE(adapter_plan(&svc, sql).load);
  EXPECT_TRUE(adapter_plan(nullptr, sql).name.empty());
  Endpoint old_rev("chat", "chat-0", "127.0.0.1", 1), new_rev("chat", "chat-1", "127.0.0.1", 2);
  old_rev.start_adapters = {"poems"};
  new_rev.start_adapters = {"sql", "poems"};
  std::vector<Endpoint*> both = {&old_rev, &new_rev}, out;
  auto only = serving_adapter(svc, both, "sql", out);
  ASSERT_EQ(only.size(), 1u);
  EXPECT_EQ(only[0], &new_rev);
  EXPECT_EQ(serving_adapter(svc, both, "poems", out).size(), 2u);
  EXPECT_EQ(serving_adapter(svc, both, "gone", out).size(), 2u);  // none has it: the engine says
  EXPECT_EQ(adapter_index(old_rev, "poems"), 0);
  EXPECT_EQ(adapter_index(new_rev, "poems"), 1);
  EXPECT_EQ(adapter_index(old_rev, "sql"), -1);
  EXPECT_EQ(adapter_index(new_rev, ""), -1);
  svc.adapters_on_demand = true;  // loaded where asked for: any replica
  EXPECT_EQ(serving_adapter(svc, both, "sql", out).size(), 2u);
}

TEST(Picker, AnAdapterGoesWhereItRunsThenWhereThereIsRoomUntilLoadOutweighsIt) {
  PickerConfig config;
  auto view = [](bool active, bool room, int64_t in_flight) {
    return CandidateView{.in_flight = in_flight,
                         .adapter_request = true,
                         .adapter_active = active,
                         .adapter_room = room};
  };
  // Runs it > has room > full (which would wait for an adapter to drain).
  std::vector<CandidateView> c = {view(false, false, 3), view(false, true, 3),
                                  view(true, false, 3)};
  EXPECT_EQ(pick(config, c, 0, 0).index, 2u);
  c[2].adapter_active = false;
  EXPECT_EQ(pick(config, c, 0, 0).index, 1u);
  // A popular adapter spreads: the replica running it, far busier than one
  // with room, loses to it (no herding onto the first replica that ran it).
  c = {view(true, false, 3), view(false, true, 0)};
  c[0].pending_prefill = 4000;
  EXPECT_EQ(pick(config, c, 0, 0).index, 1u);
  c[0].pending_prefill = 0;
  EXPECT_EQ(pick(config, c, 0, 0).index, 0u);
  // Base-model requests are not weighed by adapters at all.
  c = {CandidateView{.in_flight = 1}, CandidateView{.in_flight = 0}};
  EXPECT_EQ(pick(config, c, 0, 0).index, 1u);
}

// `peers` knowing one endpoint, chat-0 at 127.0.0.1:9000.
std::shared_ptr<Endpoint> one_endpoint(PeerLoad& peers) {
  RoutingTable table;
  auto a = std::make_shared<Endpoint>("chat", "chat-0", "127.0.0.1", 9000);
  table.services["chat"].ready = {a};
  peers.set_endpoints(table);
  return a;
}

// Other gateways' reports sum per endpoint; a gateway silent for a second
// stops counting; a report for a replica at another address (restarted)
// does not count.
TEST(PeerLoad, SumsOtherGatewaysReportsUntilTheyGoQuiet) {
  PeerLoad peers;
  const std::shared_ptr<Endpoint> a = one_endpoint(peers);
  EXPECT_EQ(peers.find("chat-0", "127.0.0.1:9000"), a);
  EXPECT_EQ(peers.find("chat-0", "127.0.0.1:9001"), nullptr);
  peers.apply({"g1", {{"chat-0", "127.0.0.1:9000", 3, 100}}}, 1000);
  peers.apply({"g2", {{"chat-0", "127.0.0.1:9000", 2, 50}, {"chat-0", "127.0.0.1:1", 7, 7}}}, 1500);
  EXPECT_EQ(a->remote_in_flight.load(), 5);
  EXPECT_EQ(a->remote_pending_prefill.load(), 150);
  EXPECT_EQ(peers.peer_in_flight(), 5);
  a->in_flight = 4;
  const auto own = peers.own(2100);  // g1 last reported 1.1 s ago
  ASSERT_EQ(own.size(), 1u);
  EXPECT_EQ(own[0].in_flight, 4);
  EXPECT_EQ(a->remote_in_flight.load(), 2);
}

// Another gateway's pick counts at once, and its next report (which counts
// that pick itself) takes its place: no double count, no stale window.
TEST(PeerLoad, APeersPickCountsUntilItsNextReport) {
  PeerLoad peers;
  const std::shared_ptr<Endpoint> a = one_endpoint(peers);
  peers.apply({"g1", {{"chat-0", "127.0.0.1:9000", 1, 100}}}, 1000);
  const SharedPick pick{.replica = "chat-0", .address = "127.0.0.1:9000", .prefill = 400};
  peers.apply_pick("g1", pick, 1002);
  peers.apply_pick("g1", pick, 1003);
  EXPECT_EQ(a->remote_in_flight.load(), 3);
  EXPECT_EQ(a->remote_pending_prefill.load(), 900);
  peers.apply({"g1", {{"chat-0", "127.0.0.1:9000", 3, 900}}}, 1005);
  EXPECT_EQ(a->remote_in_flight.load(), 3);
  EXPECT_EQ(a->remote_pending_prefill.load(), 900);
  // A pick from a gateway not heard from yet counts too, and goes quiet with it.
  peers.apply_pick("g2", pick, 1010);
  EXPECT_EQ(a->remote_in_flight.load(), 4);
  (void)peers.own(2500);
  EXPECT_EQ(a->remote_in_flight.load(), 0);
}

TEST(CostExpression, EvaluatesAndNamesTheColumnOfErrors) {
  auto e = CostExpression::parse("input_tokens / 3 + output_tokens");
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_DOUBLE_EQ(e->evaluate(300, 50), 150);
  EXPECT_DOUBLE_EQ(CostExpression().evaluate(10, 5), 15);
  auto nested = CostExpression::parse("2 * (total_tokens - -1) / 0.5");
  ASSERT_TRUE(nested.ok());
  EXPECT_DOUBLE_EQ(nested->evaluate(3, 4), 32);
  EXPECT_DOUBLE_EQ(CostExpression::parse("input_tokens / 0")->evaluate(5, 5), 0);
  EXPECT_DOUBLE_EQ(CostExpression::parse("0 - output_tokens")->evaluate(5, 5), 0);
  auto bad = CostExpression::parse("input_tokens / 3 + ");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("column 20"), std::string::npos) << bad.error().message;
  auto unknown = CostExpression::parse("input_tokens + cached");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message.find("column 16: unknown variable 'cached'"), std::string::npos)
      << unknown.error().message;
  EXPECT_FALSE(CostExpression::parse("(input_tokens").ok());
  EXPECT_FALSE(CostExpression::parse("input_tokens output_tokens").ok());
  EXPECT_FALSE(CostExpression::parse(std::string(200, '(') + "1" + std::string(200, ')')).ok());
  EXPECT_FALSE(CostExpression::parse("1..2").ok());
}

TEST(TenantLimiter, RequestsPerMinuteRefillContinuously) {
  TenantLimiter t("a", {.requests_per_minute = 60}, {});
  for (int i = 0; i < 60; ++i) {
    auto d = t.admit(0, 0);
    ASSERT_TRUE(d.admitted) << i;
    t.finish(0, 0, 0);
  }
  auto refused = t.admit(0, 0);
  EXPECT_FALSE(refused.admitted);
  EXPECT_NE(refused.reason.find("requests per minute"), std::string::npos);
  EXPECT_NEAR(refused.retry_after_s, 1, 1e-9);
  EXPECT_EQ(refused.state.remaining_requests, 0);
  EXPECT_TRUE(t.admit(1.0, 0).admitted);  // one request a second comes back
  EXPECT_FALSE(t.admit(1.5, 0).admitted);
}

TEST(TenantLimiter, TokensChargeTrueUsageAndOvershootByOneEstimateAtMost) {
  TenantLimiter t("a", {.tokens_per_minute = 1000}, {});
  ASSERT_TRUE(t.admit(0, 600).admitted);
  ASSERT_TRUE(t.admit(0, 600).admitted);  // balance 400 > 0: admitted, now -200
  EXPECT_FALSE(t.admit(0, 1).admitted);
  // The first used only 100 of its 600: 500 come back.
  t.finish(0, 600, 100);
  EXPECT_TRUE(t.admit(0, 10).admitted);
  auto s = t.state(0);
  EXPECT_EQ(s.limit_tokens, 1000);
  EXPECT_EQ(s.remaining_tokens, 290);
}

TEST(TenantLimiter, ConcurrentAdmissionNeverOverAdmits) {
  TenantLimiter t("a", {.requests_per_minute = 500, .tokens_per_minute = 10000}, {});
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int k = 0; k < 8; ++k)
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i)
        if (t.admit(0, 50).admitted) ++admitted;
    });
  for (auto& th : threads) th.join();
  // 10000 tokens at 50 each: 200 requests, plus the one that overshoots.
  EXPECT_EQ(admitted.load(), 200);
  EXPECT_EQ(t.in_flight(), 200u);
  TenantLimiter c("c", {.max_concurrent = 4}, {});
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(c.admit(0, 0).admitted);
  EXPECT_FALSE(c.admit(0, 0).admitted);
  c.finish(0, 0, 0);
  EXPECT_TRUE(c.admit(0, 0).admitted);
}

TEST(TenantDirectory, FindsTenantsByHashedKey) {
  TenantDirectory dir;
  auto t = std::make_shared<TenantLimiter>("team-a", TenantLimits{}, CostExpression{});
  dir.add(t, {{sha256_hex("sk-good"), "laptop", false}, {sha256_hex("sk-old"), "old", true}});
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(dir.find("Bearer sk-good").tenant, t.get());
  EXPECT_EQ(dir.find("bearer  sk-good ").tenant, t.get());
  EXPECT_EQ(dir.find("Bearer sk-bad").tenant, nullptr);
  EXPECT_FALSE(dir.find("Bearer sk-bad").revoked);
  EXPECT_TRUE(dir.find("Bearer sk-old").revoked);
  EXPECT_EQ(dir.find("sk-good").tenant, nullptr);
  EXPECT_EQ(reset_duration(0.12), "120ms");
  EXPECT_EQ(reset_duration(6.5), "7s");
  EXPECT_EQ(reset_duration(360), "6m0s");
  EXPECT_EQ(retry_after_seconds(0.01), 1);
}

TEST(RequestPeek, ExtractsPromptTextAndRenamesTheModel) {
  auto chat = peek_request(
      R"({"model":"chat","max_tokens":7,"messages":[{"role":"system","content":"be brief"},)"
      R"({"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":" there"}]}]})");
  ASSERT_TRUE(chat.ok()) << chat.error().message;
  EXPECT_EQ(chat->prompt, "system\nbe brief\x1euser\nhi there\x1e");
  EXPECT_EQ(chat->max_tokens, 7u);
  const std::string body = R"({"prompt":["a","b"],"model" : "chat","stream":false})";
  auto completion = peek_request(body);
  ASSERT_TRUE(completion.ok());
  EXPECT_EQ(completion->prompt,
            "a\x1e"
            "b");
  EXPECT_EQ(upstream_body(body, *completion, "llama-\"8b\""),
            R"({"prompt":["a","b"],"model" : "llama-\"8b\"","stream":false})");
  EXPECT_EQ(upstream_body(body, *completion, "chat"), body);
  auto tokens = peek_request(R"({"model":"m","prompt":[1,2,3]})");
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(tokens->prompt, "1,2,3,");
  // Rename and force usage together.
  const std::string stream = R"({"model":"chat","stream":true,"prompt":"x"})";
  auto s = peek_request(stream);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(upstream_body(stream, *s, "m2"),
            R"({"stream_options":{"include_usage":true},"model":"m2","stream":true,"prompt":"x"})");
  EXPECT_FALSE(peek_request(R"({"model":"m","messages":"hi"})").ok());
}

}  // namespace
}  // namespace loadstar::gateway
