// Prefill/decode disaggregation end to end: engine-sim's two roles handing a
// prompt's KV over (real processes, vLLM's NixlConnector protocol), a
// disaggregated service under `loadstar up`, and the gateway's two legs
// checked field by field against a stand-in that knows llm-d's sidecar
// protocol.
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "api/disaggregation.h"
#include "api/resources.h"
#include "gateway/gateway.h"
#include "http/server.h"
#include "routing/routing_builder.h"
#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
namespace asio = boost::asio;

std::string long_prompt(int seed, int words = 600) {
  std::string out;
  for (int i = 0; i < words; ++i) out += fmt::format(" doc{} word{}", seed, i);
  return out;
}

std::string producer_config(const std::string& extra = "") {
  return R"({"kv_connector": "NixlConnector", "kv_role": "kv_producer")" + extra + "}";
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

// The prefill leg as llm-d's sidecar sends it (its NIXL v2 connector).
json prefill_leg(json body) {
  body["kv_transfer_params"] = {{"do_remote_decode", true},    {"do_remote_prefill", false},
                                {"remote_engine_id", nullptr}, {"remote_block_ids", nullptr},
                                {"remote_host", nullptr},      {"remote_port", nullptr}};
  body["stream"] = false;
  body.erase("stream_options");
  body["max_tokens"] = 1;
  body["max_completion_tokens"] = 1;
  return body;
}

TEST(Disaggregation, EngineSimHandsAPromptsKvToItsDecodeEngine) {
  const auto model = synth_model("tiny", "16MiB");
  // A slow link (1 GB/s), so that the transfer is plain in the TTFT.
  auto prefill = EngineSim::start(
      model,
      {"--served-model-name", "chat", "--kv-transfer-config",
       producer_config(
           R"(, "kv_connector_extra_config": {"bandwidth_gbytes_per_s": 1, "latency_us": 0})")});
  auto decode = EngineSim::start(model, {"--served-model-name", "chat", "--kv-transfer-config",
                                         R"({"kv_connector": "NixlConnector", "kv_role": "kv_both",
           "kv_connector_extra_config": {"bandwidth_gbytes_per_s": 1, "latency_us": 0}})"});
  const json request = {{"model", "chat"},
                        {"prompt", long_prompt(1)},
                        {"max_tokens", 8},
                        {"ignore_eos", true},
                        {"seed", 7}};

  // 1. The prefill: computed and held, its whereabouts in the answer.
  auto first = prefill->post("/v1/completions", prefill_leg(request).dump());
  ASSERT_EQ(first.status, 200) << first.body;
  const json answer = json::parse(first.body);
  const uint32_t prompt_tokens = answer["usage"]["prompt_tokens"];
  ASSERT_GT(prompt_tokens, 1000u);
  const json params = answer["kv_transfer_params"];
  EXPECT_EQ(params["do_remote_prefill"], true);
  EXPECT_EQ(params["do_remote_decode"], false);
  EXPECT_EQ(params["remote_host"], "127.0.0.1");
  EXPECT_EQ(params["remote_port"], prefill->port());
  EXPECT_EQ(params["tp_size"], 1);
  EXPECT_FALSE(params["remote_engine_id"].get<std::string>().empty());
  EXPECT_EQ(params["remote_block_ids"].size(), (prompt_tokens + 15) / 16);
  EXPECT_EQ(prefill->metric("loadstar_engine_sim_kv_transfer_held_blocks"),
            (prompt_tokens + 15) / 16);

  // 2. The decode: the KV read from the prefill engine, not computed.
  json decode_request = request;
  decode_request["kv_transfer_params"] = params;
  auto second = decode->post("/v1/completions", decode_request.dump());
  ASSERT_EQ(second.status, 200) << second.body;
  // The same text as the prompt computed in one engine: where the prompt was
  // computed changes nothing the model says.
  auto whole = prefill->post("/v1/completions", request.dump());
  ASSERT_EQ(whole.status, 200);
  EXPECT_EQ(json::parse(second.body)["choices"][0]["text"],
            json::parse(whole.body)["choices"][0]["text"]);
  EXPECT_EQ(prefill->metric("loadstar_engine_sim_kv_transfer_sent_requests_total"), 1);
  EXPECT_EQ(prefill->metric("loadstar_engine_sim_kv_transfer_held_blocks"), 0);
  EXPECT_EQ(decode->metric("loadstar_engine_sim_kv_transfer_received_requests_total"), 1);
  EXPECT_EQ(decode->metric("loadstar_engine_sim_kv_transfer_received_tokens_total"), prompt_tokens);
  EXPECT_EQ(decode->metric("loadstar_engine_sim_kv_transfer_bytes_total"),
            prompt_tokens * 131072.0);
  // The transfer's time, from its bytes over the link, is in the TTFT.
  const double transfer = decode->metric("loadstar_engine_sim_kv_transfer_seconds_total");
  EXPECT_NEAR(transfer, prompt_tokens * 131072.0 / 1e9, 1e-6);
  EXPECT_GE(decode->metric("vllm:time_to_first_token_seconds_sum"), transfer);

  // 3. Held KV is read once: a second decode with the same params finds
  // nothing there and computes the prompt itself (kv_load_failure_policy
  // recompute), counted.
  auto again = decode->post("/v1/completions", decode_request.dump());
  EXPECT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(decode->metric("loadstar_engine_sim_kv_transfer_failures_total"), 1);
  EXPECT_EQ(decode->metric("loadstar_engine_sim_kv_transfer_received_requests_total"), 1);

  // 4. Params that do not name a prefill whole are a 400 naming the field.
  json bad = request;
  bad["kv_transfer_params"] = params;
  bad["kv_transfer_params"].erase("remote_port");
  auto refused = decode->post("/v1/completions", bad.dump());
  EXPECT_EQ(refused.status, 400);
  EXPECT_NE(refused.body.find("kv_transfer_params.remote_port"), std::string::npos) << refused.body;
}

// The quickstart's service with a prefill pool of one.
std::string disaggregated_service(const std::string& prefill_extra = "") {
  return quickstart(1, R"("--time-scale", "10")") +
         "  prefill: {replicas: 1, nonCachedTokens: 256" + prefill_extra + "}\n";
}

struct ReplicaInfo {
  int pid = 0;
  uint16_t port = 0;
};
ReplicaInfo replica_of(Up& up, const std::string& service) {
  const json doc = json::parse(up.replicas_json());  // named: the loop must not dangle
  for (const json& r : doc["items"])
    if (r["service"] == service && r["state"] == "Ready") return {r["pid"], r["port"]};
  return {};
}

double engine_metric(uint16_t port, const std::string& name) {
  return scrape_metric(port, name);
}

TEST(Disaggregation, ADisaggregatedServiceSendsLongUncachedPromptsThroughItsPrefillPool) {
  auto up = Up::start(disaggregated_service());
  up->wait_ready("chat", 1);
  up->wait_ready("chat-prefill", 1);
  const ReplicaInfo decode = replica_of(*up, "chat");
  const ReplicaInfo prefill = replica_of(*up, "chat-prefill");
  ASSERT_NE(decode.port, 0);
  ASSERT_NE(prefill.port, 0);
  auto chat = [&](const std::string& prompt, bool stream) {
    json body = {{"model", "chat"},
                 {"messages", {{{"role", "user"}, {"content", prompt}}}},
                 {"max_tokens", 4},
                 {"stream", stream}};
    if (stream) body["stream_options"] = {{"include_usage", true}};
    return up->post("/v1/chat/completions", body.dump());
  };
  const auto disaggregated = [&] {
    return scrape_metric(up->port(), "loadstar_gateway_disaggregated_requests_total",
                         "model=\"chat\"");
  };
  // A long prompt: prefilled on the prefill pool, decoded on the service's replica.
  auto r = chat(long_prompt(1), true);
  ASSERT_EQ(r.status, 200) << r.body << up->log();
  EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos);
  EXPECT_EQ(disaggregated(), 1) << up->log();
  EXPECT_EQ(engine_metric(prefill.port, "loadstar_engine_sim_kv_transfer_sent_requests_total"), 1);
  EXPECT_EQ(engine_metric(decode.port, "loadstar_engine_sim_kv_transfer_received_requests_total"),
            1);
  // The usage the client sees is the decode's: the whole prompt.
  EXPECT_NE(r.body.find("\"prompt_tokens\""), std::string::npos);
  // A short prompt goes straight to decode.
  ASSERT_EQ(chat("hello there", false).status, 200);
  EXPECT_EQ(disaggregated(), 1);
  // So does a long one the decode replica holds already (it received the
  // first one's KV): little of it is uncached there.
  ASSERT_EQ(chat(long_prompt(1), false).status, 200);
  EXPECT_EQ(disaggregated(), 1);
  EXPECT_EQ(engine_metric(decode.port, "loadstar_engine_sim_kv_transfer_received_requests_total"),
            1);

  // The prefill replica dies: long prompts are served whole meanwhile, never
  // failed, and the pool's replica is started again.
  ASSERT_EQ(::kill(prefill.pid, SIGKILL), 0);
  for (int i = 2; i < 5; ++i) {
    auto whole = chat(long_prompt(i), false);
    EXPECT_EQ(whole.status, 200) << whole.body;
  }
  EXPECT_EQ(disaggregated(), 1);
  up->wait_ready("chat-prefill", 1);
  // Ready in the controller's view a moment before the gateways have the
  // table with its new port (published at the end of the pass): a request
  // in between is served whole. The restarted replica takes long prompts
  // again within a few.
  for (int i = 9; i < 30 && disaggregated() < 2; ++i) {
    ASSERT_EQ(chat(long_prompt(i), false).status, 200);
    if (disaggregated() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(disaggregated(), 2) << up->log();
}

TEST(Disaggregation, APrefillPoolAtZeroIsWokenByRequestsThatWouldUseItAndNeverWaitedFor) {
  std::string yaml = disaggregated_service(", minReplicas: 0");
  yaml.replace(yaml.find("  replicas: 1\n"), 13, "  replicas: 1\n  idleTimeout: 2s\n");
  auto up = Up::start(yaml);
  up->wait_ready("chat", 1);
  auto prefill_replicas = [&] {
    const json doc = json::parse(up->replicas_json());
    int n = 0;
    for (const json& r : doc["items"]) n += r["service"] == "chat-prefill";
    return n;
  };
  const auto disaggregated = [&] {
    return scrape_metric(up->port(), "loadstar_gateway_disaggregated_requests_total",
                         "model=\"chat\"");
  };
  int seed = 10;
  auto long_request = [&] {
    return up->post(
        "/v1/completions",
        json{{"model", "chat"}, {"prompt", long_prompt(seed++)}, {"max_tokens", 2}}.dump());
  };
  for (int round = 1; round <= 2; ++round) {
    // At zero (never asked for, then idle): a long prompt is served whole
    // at once — nobody waits for a prefill replica — and wakes the pool.
    EXPECT_EQ(prefill_replicas(), 0) << up->replicas_json();
    const auto start = std::chrono::steady_clock::now();
    auto r = long_request();
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
    EXPECT_EQ(disaggregated(), round - 1);
    up->wait_ready("chat-prefill", 1);
    // Once the gateway has its address, long prompts go through it again.
    EXPECT_TRUE(eventually([&] {
      return long_request().status == 200 && disaggregated() == round;
    })) << up->log();
    // Idle for its idleTimeout: back to zero; the decode pool
    // (minReplicas 1) stays.
    ASSERT_TRUE(eventually([&] { return prefill_replicas() == 0; }, 30s)) << up->replicas_json();
    up->wait_ready("chat", 1);
  }
}

TEST(Disaggregation, ADecodeReplicaDyingMidStreamEndsTheStreamWithAnError) {
  auto up = Up::start(disaggregated_service());
  up->wait_ready("chat", 1);
  up->wait_ready("chat-prefill", 1);
  const ReplicaInfo decode = replica_of(*up, "chat");
  const json body = {{"model", "chat"},
                     {"prompt", long_prompt(3, 300)},
                     {"max_tokens", 2500},
                     {"ignore_eos", true},
                     {"stream", true}};
  std::atomic<int> events{0};
  std::string received;
  std::mutex mu;
  const auto start = std::chrono::steady_clock::now();
  std::thread killer([&] {
    eventually([&] { return events.load() >= 5; });
    ::kill(decode.pid, SIGKILL);
  });
  http::ClientRequest request{.host = "127.0.0.1",
                              .port = up->port(),
                              .method = "POST",
                              .target = "/v1/completions",
                              .body = body.dump(),
                              .headers = {{"Content-Type", "application/json"}},
                              .timeout_s = 30};
  auto response = http::fetch_streaming(request, [&](std::string_view data) {
    std::lock_guard lock(mu);
    received.append(data);
    ++events;
    return true;
  });
  killer.join();
  ASSERT_TRUE(response.ok()) << response.error().message;
  EXPECT_EQ(response->status, 200);
  // Ended, not hung, and with an error event rather than a clean [DONE].
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  EXPECT_NE(received.find("\"error\""), std::string::npos)
      << received.substr(received.size() - 300);
  EXPECT_EQ(
      scrape_metric(up->port(), "loadstar_gateway_disaggregated_requests_total", "model=\"chat\""),
      1);
}

// A stand-in for a vLLM pair behind llm-d's routing sidecar: it answers
// both legs and records what the gateway sent, so the test can hold each
// field to the sidecar's NIXL v2 protocol.
class StandIn {
 public:
  explicit StandIn(bool prefill) : prefill_(prefill) {
    auto server =
        http::Server::create({&io_}, {}, [this](http::Exchange& ex) { return handle(ex); });
    if (!server.ok()) throw std::runtime_error(server.error().message);
    server_ = std::move(*server);
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~StandIn() {
    server_->stop();
    io_.stop();
    thread_.join();
  }
  uint16_t port() const { return server_->port(); }
  struct Seen {
    std::string path, request_id;
    json body;
  };
  std::vector<Seen> seen() {
    std::lock_guard lock(mu_);
    return seen_;
  }
  std::atomic<int> fail_status{0};  // answer generation requests with this (0: serve)

 private:
  asio::awaitable<void> handle(http::Exchange& ex) {
    const http::Request& req = ex.request();
    if (req.path() != "/v1/chat/completions" && req.path() != "/v1/completions") {
      http::Response missing{404, "text/plain", ""};
      co_await ex.respond(std::move(missing));
      co_return;
    }
    json body = json::parse(req.body, nullptr, false);
    {
      std::lock_guard lock(mu_);
      seen_.push_back({std::string(req.path()), std::string(req.header("x-request-id")), body});
    }
    if (const int status = fail_status.load()) {
      http::Response failed{status, "application/json", R"({"error":{"message":"down"}})"};
      co_await ex.respond(std::move(failed));
      co_return;
    }
    if (prefill_) {
      const json answer = {
          {"id", "chatcmpl-1"},
          {"object", "chat.completion"},
          {"choices", {{{"index", 0}, {"message", {{"role", "assistant"}, {"content", "x"}}}}}},
          {"usage", {{"prompt_tokens", 900}, {"completion_tokens", 1}}},
          {"kv_transfer_params",
           {{"do_remote_prefill", true},
            {"do_remote_decode", false},
            {"remote_block_ids", {1, 2, 3}},
            {"remote_engine_id", "engine-a"},
            {"remote_request_id", "req-1"},
            {"remote_host", "10.0.0.5"},
            {"remote_port", 5600},
            {"tp_size", 1}}}};
      http::Response ok{200, "application/json", answer.dump()};
      co_await ex.respond(std::move(ok));
      co_return;
    }
    // Decode: a stream of two tokens.
    const bool ok = co_await ex.begin_stream(200, "text/event-stream");
    if (!ok) co_return;
    std::string events;
    for (const char* piece : {"he", "llo"})
      events +=
          "data: " + json{{"choices", {{{"index", 0}, {"delta", {{"content", piece}}}}}}}.dump() +
          "\n\n";
    events += "data: [DONE]\n\n";
    if (co_await ex.write_chunk(events)) co_await ex.end_stream();
  }

  const bool prefill_;
  asio::io_context io_{1};
  std::unique_ptr<http::Server> server_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Seen> seen_;
};

// The routing table: a disaggregated service's prefill pool is reached only
// through its service (never by its own name), and the service's LoRA
// adapters still route to the service.
TEST(Disaggregation, ThePrefillPoolIsRoutedOnlyThroughItsService) {
  auto parsed = api::decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec: {model: m, lora: {adapters: [sql]}, prefill: {replicas: 2, nonCachedTokens: 300}}
)",
                                      "pd.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  routing::RoutingInputs inputs;
  for (api::InferenceService& role :
       api::role_services(std::get<api::InferenceService>((*parsed)[0])))
    inputs.services.emplace(role.metadata.name, std::move(role));
  ASSERT_EQ(inputs.services.size(), 2u);
  inputs.ready["chat"] = {{.replica = "chat-0", .host = "127.0.0.1", .port = 1}};
  inputs.ready["chat-prefill"] = {{.replica = "chat-prefill-0", .host = "127.0.0.1", .port = 2}};
  routing::RoutingBuilder builder;
  const auto table = builder.build(inputs);
  EXPECT_EQ(table->services.count("chat-prefill"), 0u);
  const auto& chat = table->services.at("chat");
  ASSERT_EQ(chat.ready.size(), 1u);
  EXPECT_EQ(chat.ready[0]->replica, "chat-0");
  ASSERT_TRUE(chat.prefill);
  EXPECT_EQ(chat.prefill->service, "chat-prefill");
  EXPECT_EQ(chat.prefill->non_cached_tokens, 300u);
  ASSERT_EQ(chat.prefill->ready.size(), 1u);
  EXPECT_EQ(chat.prefill->ready[0]->service, "chat-prefill");  // its load is its pool's
  ASSERT_EQ(table->routes.at("sql").backends.size(), 1u);
  EXPECT_EQ(table->routes.at("sql").backends[0].service, "chat");
}

TEST(Disaggregation, TheGatewaysTwoLegsAreLlmdSidecarsNixlProtocol) {
  StandIn prefill(true), decode(false);
  gateway::GatewayOptions options;
  options.port = 0;
  options.workers = 1;
  auto gw = gateway::Gateway::create(options);
  ASSERT_TRUE(gw.ok()) << gw.error().message;
  (*gw)->start();
  auto parsed = api::decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec: {model: m, engine: {name: vllm}, prefill: {nonCachedTokens: 100}}
)",
                                      "pd.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  routing::RoutingInputs inputs;
  inputs.services["chat"] = std::get<api::InferenceService>((*parsed)[0]);
  inputs.ready["chat"] = {{.replica = "chat-0", .host = "127.0.0.1", .port = decode.port()}};
  inputs.ready["chat-prefill"] = {
      {.replica = "chat-prefill-0", .host = "127.0.0.1", .port = prefill.port()}};
  routing::RoutingBuilder builder;
  (*gw)->publish(builder.build(inputs));

  const json client = {
      {"model", "chat"},  {"messages", {{{"role", "user"}, {"content", long_prompt(5, 300)}}}},
      {"max_tokens", 64}, {"temperature", 0.5},
      {"stream", true},   {"stream_options", {{"include_usage", true}}}};
  http::ClientRequest request{.host = "127.0.0.1",
                              .port = (*gw)->port(),
                              .method = "POST",
                              .target = "/v1/chat/completions",
                              .body = client.dump(),
                              .headers = {{"Content-Type", "application/json"}}};
  auto response = http::fetch(request);
  ASSERT_TRUE(response.ok()) << response.error().message;
  ASSERT_EQ(response->status, 200) << response->body;
  EXPECT_NE(response->body.find("llo"), std::string::npos);

  // Leg 1, to the prefill replica: the client's body, streaming off, one
  // token, and NIXL's request for a remote decode with every remote field null.
  const auto legs1 = prefill.seen();
  ASSERT_EQ(legs1.size(), 1u);
  EXPECT_EQ(legs1[0].path, "/v1/chat/completions");
  json expected_prefill = prefill_leg(client);
  EXPECT_EQ(legs1[0].body, expected_prefill);
  // Leg 2, to the decode replica: the client's body as it was, with the
  // prefill's kv_transfer_params verbatim; one x-request-id for both legs.
  const auto legs2 = decode.seen();
  ASSERT_EQ(legs2.size(), 1u);
  json expected_decode = client;
  expected_decode["kv_transfer_params"] = {
      {"do_remote_prefill", true},     {"do_remote_decode", false},
      {"remote_block_ids", {1, 2, 3}}, {"remote_engine_id", "engine-a"},
      {"remote_request_id", "req-1"},  {"remote_host", "10.0.0.5"},
      {"remote_port", 5600},           {"tp_size", 1}};
  EXPECT_EQ(legs2[0].body, expected_decode);
  EXPECT_FALSE(legs1[0].request_id.empty());
  EXPECT_EQ(legs1[0].request_id, legs2[0].request_id);

  // A short prompt: no prefill leg, the decode replica serves it whole —
  // and kv_transfer_params a client sends itself (naming a host the engine
  // would read from) never reach it.
  json short_client = client;
  short_client["messages"][0]["content"] = "hi";
  short_client["kv_transfer_params"] = {
      {"do_remote_prefill", true}, {"remote_host", "169.254.169.254"}, {"remote_port", 80}};
  request.body = short_client.dump();
  ASSERT_EQ(http::fetch(request)->status, 200);
  EXPECT_EQ(prefill.seen().size(), 1u);
  ASSERT_EQ(decode.seen().size(), 2u);
  EXPECT_FALSE(decode.seen()[1].body.contains("kv_transfer_params"));

  // A prefill replica that fails: served whole, not failed.
  prefill.fail_status = 503;
  request.body = client.dump();
  auto fallback = http::fetch(request);
  ASSERT_TRUE(fallback.ok());
  EXPECT_EQ(fallback->status, 200) << fallback->body;
  ASSERT_EQ(decode.seen().size(), 3u);
  EXPECT_FALSE(decode.seen()[2].body.contains("kv_transfer_params"));
  (*gw)->stop(1);
}

}  // namespace
}  // namespace loadstar::testing
