// Where the gateway sends each attempt: priority groups and weights, ejected
// endpoints, outlier ejection's backoff, what a request with nowhere to go
// waits for, prefix affinity; and which endpoints the load report covers.
#include <gtest/gtest.h>

#include <random>

#include "gateway/published_tables.h"
#include "gateway/selection.h"
#include "gateway/shared_messages.h"

namespace loadstar::gateway {
namespace {

std::shared_ptr<Endpoint> endpoint(const std::string& service, int n) {
  return std::make_shared<Endpoint>(service, service + "-" + std::to_string(n), "127.0.0.1",
                                    static_cast<uint16_t>(8000 + n));
}

RoutingTable::Backend service_backend(const std::string& service, uint32_t weight,
                                      uint32_t priority) {
  RoutingTable::Backend b;
  b.service = service;
  b.weight = weight;
  b.priority = priority;
  return b;
}

TEST(BackendSelector, FallsBackThroughPriorityGroupsInOrder) {
  auto table = std::make_shared<RoutingTable>();
  auto b0 = endpoint("b", 0);
  auto c0 = endpoint("c", 0);
  auto external = std::make_shared<Endpoint>("", "ext", "10.0.0.7", 8000);
  table->services["a"];  // declared, no ready replica
  table->services["b"].ready = {b0};
  table->services["c"].ready = {c0};
  RoutingTable::Backend ext;
  ext.external = external;
  ext.priority = 1;
  table->routes["chat"].backends = {service_backend("a", 1, 0), service_backend("b", 1, 0), ext,
                                    service_backend("c", 1, 2)};
  BackendSelector selector("chat");
  selector.resolve(table);
  ASSERT_EQ(selector.backends().size(), 4u);
  EXPECT_EQ(selector.first_priority(), 0u);
  std::mt19937_64 rng(1);

  // Group 0: only b has an endpoint.
  const RoutingTable::Backend* backend = selector.choose_backend(0, rng);
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->service, "b");
  ASSERT_EQ(selector.endpoints(*backend, 0).size(), 1u);
  selector.mark_tried(selector.endpoints(*backend, 0).front());
  // Group 0 exhausted: the external backend (priority 1), then c (priority 2).
  backend = selector.choose_backend(0, rng);
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->external, external);
  selector.mark_tried(external.get());
  backend = selector.choose_backend(0, rng);
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->service, "c");
  selector.mark_tried(c0.get());
  EXPECT_EQ(selector.choose_backend(0, rng), nullptr);
  EXPECT_EQ(selector.tried().size(), 3u);
}

TEST(BackendSelector, AServiceIsItsOwnBackendAndAnUnknownModelHasNone) {
  auto table = std::make_shared<RoutingTable>();
  table->services["llama"].ready = {endpoint("llama", 0)};
  BackendSelector direct("llama");
  direct.resolve(table);
  ASSERT_EQ(direct.backends().size(), 1u);
  EXPECT_EQ(direct.backends().front()->service, "llama");
  BackendSelector unknown("nope");
  unknown.resolve(table);
  EXPECT_TRUE(unknown.backends().empty());
}

TEST(BackendSelector, WeightsAreHonouredOverManyDraws) {
  auto table = std::make_shared<RoutingTable>();
  for (const char* s : {"blue", "green", "off"}) table->services[s].ready = {endpoint(s, 0)};
  table->routes["chat"].backends = {service_backend("blue", 90, 0), service_backend("green", 10, 0),
                                    service_backend("off", 0, 0)};
  BackendSelector selector("chat");
  selector.resolve(table);
  std::mt19937_64 rng(42);
  std::vector<const RoutingTable::Backend*> draws;
  int blue = 0, green = 0, off = 0;
  for (int i = 0; i < 10000; ++i) {
    const RoutingTable::Backend* b = selector.choose_backend(0, rng);
    ASSERT_NE(b, nullptr);
    draws.push_back(b);
    blue += b->service == "blue";
    green += b->service == "green";
    off += b->service == "off";
  }
  // Binomial(10000, 0.9): mean 9000, standard deviation 30; 5 sigma either way.
  EXPECT_GT(blue, 8850);
  EXPECT_LT(blue, 9150);
  EXPECT_EQ(blue + green, 10000);
  EXPECT_EQ(off, 0);  // weight 0: never drawn
  // The same seed draws the same sequence.
  std::mt19937_64 again(42);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(selector.choose_backend(0, again), draws[i]);
}

TEST(BackendSelector, EjectedEndpointsAreSkippedUntilTheirTime) {
  auto table = std::make_shared<RoutingTable>();
  auto a0 = endpoint("a", 0), a1 = endpoint("a", 1), b0 = endpoint("b", 0);
  table->services["a"].ready = {a0, a1};
  table->services["b"].ready = {b0};
  table->routes["chat"].backends = {service_backend("a", 1, 0), service_backend("b", 1, 1)};
  BackendSelector selector("chat");
  selector.resolve(table);
  std::mt19937_64 rng(7);

  a0->ejected_until_ms = 1000;
  const RoutingTable::Backend* a = selector.choose_backend(500, rng);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->service, "a");  // a1 is still usable
  auto endpoints = selector.endpoints(*a, 500);
  ASSERT_EQ(endpoints.size(), 1u);
  EXPECT_EQ(endpoints.front(), a1.get());
  EXPECT_EQ(selector.endpoints(*a, 1000).size(), 2u);  // its time is up

  // With all of a ejected, b (a lower priority) goes first...
  a1->ejected_until_ms = 1000;
  const RoutingTable::Backend* b = selector.choose_backend(500, rng);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->service, "b");
  // ... and a again once its ejection ends.
  a = selector.choose_backend(1000, rng);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->service, "a");
}

TEST(BackendSelector, AllEjectedAreStillUsedWhenNothingElseIsLeft) {
  auto table = std::make_shared<RoutingTable>();
  auto a0 = endpoint("a", 0), b0 = endpoint("b", 0);
  table->services["a"].ready = {a0};
  table->services["b"].ready = {b0};
  table->routes["chat"].backends = {service_backend("a", 1, 0), service_backend("b", 1, 1)};
  a0->ejected_until_ms = 1000;
  b0->ejected_until_ms = 1000;
  BackendSelector selector("chat");
  selector.resolve(table);
  std::mt19937_64 rng(3);
  // The first group, as if nothing were ejected; its ejected endpoint.
  const RoutingTable::Backend* backend = selector.choose_backend(500, rng);
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->service, "a");
  auto endpoints = selector.endpoints(*backend, 500);
  ASSERT_EQ(endpoints.size(), 1u);
  EXPECT_EQ(endpoints.front(), a0.get());
  // Endpoints tried are never offered again, ejected or not.
  selector.mark_tried(a0.get());
  backend = selector.choose_backend(500, rng);
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->service, "b");
}

// A canary's split: its share of the draws goes to its endpoints; with one
// group out of candidates (a retry after the canary failed), all are kept.
TEST(CanarySplit, DrawsBelowTheWeightGoToTheCanaryAndTheRestToTheStableOnes) {
  auto a = endpoint("chat", 0), b = endpoint("chat", 1), c = endpoint("chat", 2);
  RoutingTable::Service svc;
  svc.canary = {c.get()};
  svc.canary_weight = 25;
  std::vector<Endpoint*> all = {a.get(), b.get(), c.get()}, out;
  auto canary = canary_split(svc, all, 0.2, out);
  ASSERT_EQ(canary.size(), 1u);
  EXPECT_EQ(canary[0], c.get());
  auto stable = canary_split(svc, all, 0.3, out);
  EXPECT_EQ(std::vector<Endpoint*>(stable.begin(), stable.end()),
            (std::vector<Endpoint*>{a.get(), b.get()}));
  std::vector<Endpoint*> no_canary_left = {a.get(), b.get()};
  EXPECT_EQ(canary_split(svc, no_canary_left, 0.1, out).size(), 2u);
  svc.canary_weight = 0;
  EXPECT_EQ(canary_split(svc, all, 0.1, out).size(), 3u);
}

TEST(OutlierDetection, EjectsAfterConsecutiveFailuresWithGrowingCappedBackoff) {
  Endpoint e("a", "a-0", "127.0.0.1", 8000);
  const OutlierPolicy policy{.consecutive_failures = 5, .base_ejection_s = 10};
  // A success in between starts the count again.
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(record_outcome(e, true, policy, 0));
  EXPECT_FALSE(record_outcome(e, false, policy, 0));
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(record_outcome(e, true, policy, 0));
  EXPECT_EQ(e.ejected_until_ms.load(), 0);

  int64_t now = 0;
  auto ejection = record_outcome(e, true, policy, now);
  ASSERT_TRUE(ejection);
  EXPECT_EQ(ejection->failures, 5u);
  EXPECT_DOUBLE_EQ(ejection->seconds, 10);
  EXPECT_EQ(e.ejected_until_ms.load(), 10'000);
  // Each ejection lasts one base period longer, up to 10 of them.
  for (uint32_t k = 2; k <= 12; ++k) {
    now += 1'000'000;
    for (int i = 0; i < 4; ++i) EXPECT_FALSE(record_outcome(e, true, policy, now));
    ejection = record_outcome(e, true, policy, now);
    ASSERT_TRUE(ejection);
    const uint32_t times = std::min(k, kMaxEjectionFactor);
    EXPECT_DOUBLE_EQ(ejection->seconds, 10.0 * times) << k;
    EXPECT_EQ(e.ejected_until_ms.load(), now + 10'000 * times) << k;
  }
  EXPECT_EQ(e.ejections.load(), 12u);
}

TEST(BackendSelector, HoldsForServicesThatMayGetAReplica) {
  auto table = std::make_shared<RoutingTable>();
  table->services["cold"].may_get_replicas = true;
  table->services["cold"].hold_timeout_s = 30;
  table->services["fixed"].may_get_replicas = false;
  table->services["warm"].may_get_replicas = true;
  RoutingTable::Backend ext;
  ext.external = std::make_shared<Endpoint>("", "ext", "10.0.0.7", 8000);
  table->routes["chat"].backends = {service_backend("fixed", 1, 0), ext,
                                    service_backend("cold", 1, 1), service_backend("warm", 1, 2)};
  table->routes["stuck"].backends = {service_backend("fixed", 1, 0)};
  BackendSelector selector("chat");
  selector.resolve(table);
  const auto target = selector.hold_target();
  EXPECT_EQ(target.services, (std::vector<std::string>{"cold", "warm"}));
  ASSERT_NE(target.service, nullptr);
  EXPECT_EQ(target.service->hold_timeout_s, 30);  // the first one's limits
  BackendSelector stuck("stuck");
  stuck.resolve(table);
  EXPECT_EQ(stuck.hold_target().service, nullptr);

  // What a held request waits for: somewhere to go, or the model gone.
  EXPECT_TRUE(has_ready_backend(*table, "chat"));  // the external backend
  EXPECT_FALSE(has_ready_backend(*table, "stuck"));
  EXPECT_FALSE(has_ready_backend(*table, "cold"));
  table->services["cold"].ready = {endpoint("cold", 0)};
  EXPECT_TRUE(has_ready_backend(*table, "cold"));
  EXPECT_TRUE(has_ready_backend(*table, "gone"));
}

TEST(EndpointChooser, SendsARepeatedPromptWhereItWentAndForgetsGoneEndpoints) {
  EndpointChooser chooser({.block_bytes = 16, .max_blocks = 64}, 0.1);
  EndpointChooser::Scratch scratch;
  auto a = endpoint("s", 0), b = endpoint("s", 1), c = endpoint("s", 2);
  Endpoint* candidates[] = {a.get(), b.get(), c.get()};
  const PickerConfig picker;
  const std::string prompt(640, 'x');
  const std::vector<uint64_t> blocks = hash_prefix_blocks(prompt, 16, 64);
  const EndpointRequest request{.blocks = blocks, .prompt_bytes = prompt.size(), .now_ms = 0};
  const EndpointPick first = chooser.choose(&picker, candidates, request, scratch);
  ASSERT_NE(first.endpoint, nullptr);
  EXPECT_EQ(first.prefix_blocks_matched, 0u);
  EXPECT_EQ(first.prefix_blocks_total, blocks.size());
  EXPECT_EQ(first.prefill, static_cast<int64_t>(prompt.size()));
  for (int i = 0; i < 3; ++i) {
    const EndpointPick again = chooser.choose(&picker, candidates, request, scratch);
    EXPECT_EQ(again.endpoint, first.endpoint);
    EXPECT_EQ(again.prefix_blocks_matched, blocks.size());
    EXPECT_EQ(again.prefill, 0);  // all of it cached there
  }
  chooser.forget(first.endpoint->id);
  EXPECT_EQ(chooser.choose(&picker, candidates, request, scratch).prefix_blocks_matched, 0u);

  // An external backend's one endpoint: nothing weighed or recorded.
  const EndpointPick external = chooser.choose(nullptr, std::span(candidates, 1), request, scratch);
  EXPECT_EQ(external.endpoint, a.get());
  EXPECT_EQ(external.prefix_blocks_total, 0u);
  EXPECT_EQ(external.prefill, static_cast<int64_t>(prompt.size()));
}

TEST(PublishedTables, ReportsARetiredEndpointWhileBusyAndForAWhile) {
  PublishedTables tables;
  auto a = endpoint("s", 0), b = endpoint("s", 1);
  auto both = std::make_shared<RoutingTable>();
  both->services["s"].ready = {a, b};
  EXPECT_TRUE(tables.publish(both, 0).empty());
  EXPECT_EQ(tables.reported(0).size(), 2u);

  auto only_a = std::make_shared<RoutingTable>();
  only_a->services["s"].ready = {a};
  b->in_flight = 1;
  const auto gone = tables.publish(only_a, 1000);
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone.front(), b);
  const int64_t later = 1000 + PublishedTables::kRetiredReportMs + 1;
  EXPECT_EQ(tables.reported(later).size(), 2u);  // a request still runs there
  b->in_flight = 0;
  EXPECT_EQ(tables.reported(1000 + PublishedTables::kRetiredReportMs).size(), 2u);
  EXPECT_EQ(tables.reported(later).size(), 1u);
}

TEST(SharedView, MessagesRoundTripAndTruncatedOnesDoNotDecode) {
  const SharedPick pick{.replica = "chat-1",
                        .address = "10.0.0.2:8000",
                        .session = 42,
                        .prefill = 70000,
                        .blocks = {1, 2, 0xffffffffffffffff}};
  const std::string message = encode_pick("gw-a", pick);
  auto decoded = decode_pick(message);
  ASSERT_TRUE(decoded);
  EXPECT_EQ(decoded->instance, "gw-a");
  EXPECT_EQ(decoded->pick.replica, "chat-1");
  EXPECT_EQ(decoded->pick.address, "10.0.0.2:8000");
  EXPECT_EQ(decoded->pick.session, 42u);
  EXPECT_EQ(decoded->pick.prefill, 70000);
  EXPECT_EQ(decoded->pick.blocks, pick.blocks);
  for (size_t cut = 0; cut < message.size(); ++cut)
    EXPECT_FALSE(decode_pick(message.substr(0, cut))) << cut;
  EXPECT_FALSE(decode_load(message));  // another kind
  // A pick that recorded no blocks (a short prompt) travels for its load.
  auto bare = decode_pick(encode_pick("gw-a", {.replica = "chat-1", .prefill = 9}));
  ASSERT_TRUE(bare);
  EXPECT_TRUE(bare->pick.blocks.empty());
  EXPECT_EQ(bare->pick.prefill, 9);
  const std::vector<SharedLoad> load = {{"chat-0", "10.0.0.1:8000", 3, 4096},
                                        {"chat-1", "10.0.0.2:8000", 0, 0}};
  const std::string text = encode_load("gw-b", load);
  auto back = decode_load(text);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->instance, "gw-b");
  ASSERT_EQ(back->load.size(), 2u);
  EXPECT_EQ(back->load[0].in_flight, 3);
  EXPECT_EQ(back->load[0].pending_prefill, 4096);
  EXPECT_FALSE(decode_load(text.substr(0, text.size() - 1)));
  EXPECT_FALSE(decode_load(text + "x"));
}

TEST(SharedView, OtherGatewaysPicksAndLoadCountInThePick) {
  EndpointChooser chooser({.block_bytes = 16, .max_blocks = 64}, 0.1);
  EndpointChooser::Scratch scratch;
  auto a = endpoint("s", 0), b = endpoint("s", 1);
  Endpoint* candidates[] = {a.get(), b.get()};
  const PickerConfig picker;
  const std::string prompt(640, 'y');
  const std::vector<uint64_t> blocks = hash_prefix_blocks(prompt, 16, 64);
  // Another gateway sent this prompt to b: this one sends it there too.
  chooser.record_remote(*b, blocks, 0);
  const EndpointRequest request{.blocks = blocks, .prompt_bytes = prompt.size(), .now_ms = 0};
  const EndpointPick pick = chooser.choose(&picker, candidates, request, scratch);
  EXPECT_EQ(pick.endpoint, b.get());
  EXPECT_EQ(pick.prefix_blocks_matched, blocks.size());
  EXPECT_TRUE(pick.prefix_recorded);
  // Least-request weighs the other gateways' requests too.
  const PickerConfig least{.kind = PickerKind::kLeastRequest};
  a->in_flight = 1;
  b->remote_in_flight = 5;
  const std::string other(64, 'z');
  const EndpointRequest plain{.prompt_bytes = other.size(), .now_ms = 0};
  EXPECT_EQ(chooser.choose(&least, candidates, plain, scratch).endpoint, a.get());
  b->remote_in_flight = 0;
  EXPECT_EQ(chooser.choose(&least, candidates, plain, scratch).endpoint, b.get());
}

}  // namespace
}  // namespace loadstar::gateway
