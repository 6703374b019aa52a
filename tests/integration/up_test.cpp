// `loadstar up` end to end: gateway, controller and engine processes, driven
// over HTTP as a user would, with replicas killed and files reapplied.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "api/resources.h"
#include "common/digest.h"
#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string chat(int max_tokens, bool stream = false, bool usage = false) {
  json body = {
      {"model", "chat"},
      {"messages", {{{"role", "user"}, {"content", "Tell me a story about a lighthouse."}}}},
      {"max_tokens", max_tokens},
      {"ignore_eos", true}};
  if (stream) body["stream"] = true;
  if (usage) body["stream_options"] = {{"include_usage", true}};
  return body.dump();
}

// Splits an SSE body into its "data: ..." events.
std::vector<std::string> events_of(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0, end;
  while ((end = body.find("\n\n", pos)) != std::string::npos) {
    out.push_back(body.substr(pos, end - pos));
    pos = end + 2;
  }
  return out;
}

double metric(uint16_t port, const std::string& name, const std::string& labels = "") {
  return scrape_metric(port, name, labels);
}

json replicas(Up& up) {
  return json::parse(up.replicas_json())["items"];
}

// A mistyped command or verb is an error that names it and the nearest
// one, with a non-zero exit, as kubectl's are.
TEST(Cli, AnUnknownCommandOrVerbFailsAndSuggestsTheNearestOne) {
  std::string out;
  EXPECT_EQ(run_loadstar({"gt", "services"}, &out), 2);
  EXPECT_NE(out.find("unknown command 'gt' (did you mean 'get'?)"), std::string::npos) << out;
  EXPECT_EQ(run_loadstar({"get", "servics"}, &out), 2);
  EXPECT_NE(out.find("servics not in {"), std::string::npos) << out;
  EXPECT_NE(out.find("(did you mean 'services'?)"), std::string::npos) << out;
  EXPECT_EQ(run_loadstar({"rollout", "stats", "chat"}, &out), 2);
  EXPECT_NE(out.find("(did you mean 'status'?)"), std::string::npos) << out;
  EXPECT_EQ(run_loadstar({"frobnicate"}, &out), 2);
  EXPECT_NE(out.find("unknown command 'frobnicate'; `loadstar --help` lists them"),
            std::string::npos)
      << out;
  // Help is no error, and is the command's own.
  EXPECT_EQ(run_loadstar({"rollout", "--help"}, &out), 0);
  EXPECT_NE(out.find("Usage:"), std::string::npos) << out;
  EXPECT_NE(out.find("rollout"), std::string::npos) << out;
}

// `loadstar get` of what is declared, as kubectl shows it: a table per
// kind, -o yaml that applies again as it is, -o json.
TEST(Cli, GetShowsDeclaredModelsNodesTenantsAndRoutesAsTablesYamlAndJson) {
  auto up = Up::start(quickstart(1) + R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {name: partner}
spec:
  backends: [{service: chat, weight: 3}]
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  apiKeys: [{name: ci, sha256: 0000000000000000000000000000000000000000000000000000000000000000}]
  limits: {requestsPerMinute: 4}
)");
  const std::string port = std::to_string(up->admin_port());
  std::string out;
  ASSERT_EQ(run_loadstar({"get", "models", "--admin-port", port}, &out), 0) << out;
  EXPECT_NE(out.find("SOURCE"), std::string::npos) << out;
  ASSERT_EQ(run_loadstar({"get", "routes", "--admin-port", port}, &out), 0) << out;
  EXPECT_NE(out.find("chat (3, 0)"), std::string::npos) << out;
  ASSERT_EQ(run_loadstar({"get", "tenants", "--admin-port", port}, &out), 0) << out;
  EXPECT_NE(out.find("team-a"), std::string::npos) << out;
  ASSERT_EQ(run_loadstar({"get", "nodes", "--admin-port", port}, &out), 0) << out;
  EXPECT_NE(out.find("SCHEDULABLE"), std::string::npos) << out;
  // -o yaml: the documents as applied, which decode again.
  ASSERT_EQ(run_loadstar({"get", "tenants", "-o", "yaml", "--admin-port", port}, &out), 0) << out;
  auto decoded = api::decode_resources(out, "get.yaml");
  ASSERT_TRUE(decoded.ok()) << decoded.error().message << "\n" << out;
  ASSERT_EQ(decoded->size(), 1u);
  EXPECT_EQ(std::get<api::Tenant>(decoded->front()).spec.requests_per_minute, 4u);
  // -o json: the declared resource, numbers as numbers.
  ASSERT_EQ(run_loadstar({"get", "routes", "-o", "json", "--admin-port", port}, &out), 0) << out;
  const json routes = json::parse(out.substr(out.find('{')), nullptr, false);
  ASSERT_TRUE(routes.is_object()) << out;
  EXPECT_EQ(routes["items"][0]["spec"]["backends"][0]["weight"], 3) << routes.dump();
  ASSERT_EQ(run_loadstar({"get", "replicas", "-o", "json", "--admin-port", port}, &out), 0);
  EXPECT_TRUE(json::parse(out.substr(out.find('{')), nullptr, false).contains("items")) << out;

  // --watch: the table again when it changes (a route's weight), not before.
  const fs::path watched = scratch_dir() / "watch.out";
  ProcessOptions w;
  w.argv = {LOADSTAR_BIN, "get", "routes", "--watch", "--admin-port", port};
  w.output_path = watched.string();
  auto watch = Subprocess::start(w);
  ASSERT_TRUE(watch.ok()) << watch.error().message;
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  const fs::path file = scratch_dir() / "route.yaml";
  std::ofstream(file) << R"(apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {name: partner}
spec:
  backends: [{service: chat, weight: 5}]
)";
  ASSERT_EQ(run_loadstar({"apply", "-f", file.string(), "--admin-port", port}, &out), 0) << out;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::string seen;
  while (std::chrono::steady_clock::now() < deadline &&
         (seen = read_file(watched)).find("chat (5, 0)") == std::string::npos)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  watch->stop(std::chrono::milliseconds(1000));
  EXPECT_NE(seen.find("chat (5, 0)"), std::string::npos) << seen;
  size_t tables = 0;
  for (size_t at = seen.find("BACKENDS"); at != std::string::npos;
       at = seen.find("BACKENDS", at + 1))
    ++tables;
  EXPECT_EQ(tables, 2u) << seen;  // the first, and the changed one: none while nothing changed
}

TEST(Up, ServesTheOpenAiApiThroughTheGateway) {
  auto up = Up::start(quickstart(2));
  up->wait_ready("chat", 2);

  auto r = up->post("/v1/chat/completions", chat(12));
  ASSERT_EQ(r.status, 200) << r.body;
  json doc = json::parse(r.body);
  EXPECT_EQ(doc["usage"]["completion_tokens"], 12);
  const uint64_t prompt_tokens = doc["usage"]["prompt_tokens"];

  // A stream without include_usage gets no usage event (the gateway asked the
  // engine for one, for its own accounting, and strips it).
  auto plain = up->post("/v1/chat/completions", chat(5, true));
  auto plain_events = events_of(plain.body);
  ASSERT_EQ(plain_events.size(), 1 + 5 + 1u) << plain.body;
  EXPECT_EQ(plain_events.back(), "data: [DONE]");
  EXPECT_EQ(plain.body.find(R"("choices":[])"), std::string::npos);
  auto with_usage = up->post("/v1/chat/completions", chat(5, true, true));
  ASSERT_EQ(events_of(with_usage.body).size(), 1 + 5 + 1 + 1u);
  EXPECT_NE(with_usage.body.find(R"("completion_tokens":5)"), std::string::npos);

  // Events pass through as the engine produces them, not when the response
  // is complete: 60 steps of >= 9.5 model ms at time scale 10 span >= 57 ms;
  // the bound leaves room for a busy machine delaying the first delivery.
  std::vector<double> arrivals;
  const auto t0 = std::chrono::steady_clock::now();
  auto streamed = http::fetch_streaming(
      {.port = up->port(),
       .method = "POST",
       .target = "/v1/chat/completions",
       .body = chat(60, true)},
      [&](std::string_view) {
        arrivals.push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        return true;
      });
  ASSERT_TRUE(streamed.ok());
  ASSERT_GE(arrivals.size(), 2u);
  EXPECT_GT(arrivals.back() - arrivals.front(), 0.020);

  auto models = http::fetch({.port = up->port(), .target = "/v1/models"});
  ASSERT_TRUE(models.ok());
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "chat");
  auto e = up->post("/v1/embeddings", R"({"model":"chat","input":"hello"})");
  EXPECT_EQ(e.status, 200);

  EXPECT_EQ(settled_metric(up->port(), "loadstar_gateway_requests_total", "code=\"200\"", 5), 5);
  EXPECT_EQ(metric(up->port(), "loadstar_gateway_completion_tokens_total"), 12 + 5 + 5 + 60);
  EXPECT_EQ(metric(up->port(), "loadstar_gateway_prompt_tokens_total"), 4 * prompt_tokens + 1);
  EXPECT_EQ(metric(up->port(), "loadstar_gateway_time_to_first_token_seconds_count"), 5);
  EXPECT_EQ(metric(up->port(), "loadstar_gateway_inter_token_latency_seconds_count"), 2 * 5 + 60);
}

TEST(Up, ErrorsHaveOpenAiShape) {
  auto up = Up::start(quickstart(1) + R"(---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: idle}
spec: {model: tiny, replicas: 0}
)",
                      {"--max-body-size", "64KiB"});
  up->wait_ready("chat", 1);
  auto malformed = up->post("/v1/chat/completions", "{\"model\": ");
  EXPECT_EQ(malformed.status, 400);
  EXPECT_EQ(json::parse(malformed.body)["error"]["code"], 400);
  auto unknown = up->post("/v1/chat/completions",
                          R"({"model":"gpt-x","messages":[{"role":"user","content":"x"}]})");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(json::parse(unknown.body)["error"]["message"],
            "The model `gpt-x` does not exist or you do not have access to it.");
  auto big = up->post("/v1/completions",
                      json({{"model", "chat"}, {"prompt", std::string(100000, 'x')}}).dump());
  EXPECT_EQ(big.status, 413);
  auto none = up->post("/v1/chat/completions",
                       R"({"model":"idle","messages":[{"role":"user","content":"x"}]})");
  EXPECT_EQ(none.status, 503);
  EXPECT_EQ(none.header("Retry-After"), "1");
  EXPECT_EQ(json::parse(none.body)["error"]["type"], "ServiceUnavailableError");
  // Engine errors pass through with their status and body.
  auto too_long = up->post(
      "/v1/completions", json({{"model", "chat"}, {"prompt", "x"}, {"max_tokens", 100000}}).dump());
  EXPECT_EQ(too_long.status, 400);
  EXPECT_NE(too_long.body.find("maximum context length"), std::string::npos);
}

TEST(Up, LeastOutstandingRequestsSpreadsStreams) {
  // The least-request picker, named: the default scored picker also weighs
  // prefix affinity (these prompts are identical) against queued prefill,
  // whose balance depends on how fast the engines answer (under ASan, 3/1
  // in about 2 runs of 5).
  auto up =
      Up::start(quickstart(2, R"("--time-scale", "1")") + "  routing: {picker: least-request}\n");
  up->wait_ready("chat", 2);
  std::vector<std::thread> clients;
  std::atomic<int> done{0};
  for (int i = 0; i < 4; ++i) {
    // Staggered, so each pick sees the previous requests' in-flight counts.
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    clients.emplace_back([&] {
      auto r = http::fetch_streaming({.port = up->port(),
                                      .method = "POST",
                                      .target = "/v1/chat/completions",
                                      .body = chat(150, true)},
                                     [](std::string_view) { return true; });
      done += r.ok() && r->status == 200;
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::vector<double> running;
  for (const auto& r : replicas(*up))
    running.push_back(metric(r["port"].get<uint16_t>(), "vllm:num_requests_running"));
  for (auto& t : clients) t.join();
  EXPECT_EQ(done, 4);
  ASSERT_EQ(running.size(), 2u);
  EXPECT_EQ(running[0], 2);
  EXPECT_EQ(running[1], 2);
}

TEST(Up, AKilledReplicaFailsItsStreamCleanlyAndComesBack) {
  auto up = Up::start(quickstart(2, R"("--time-scale", "1")"));
  up->wait_ready("chat", 2);
  std::atomic<int> events{0};
  std::string body;
  std::optional<Result<http::ClientResponse>> result;
  std::thread client([&] {
    result = http::fetch_streaming({.port = up->port(),
                                    .method = "POST",
                                    .target = "/v1/chat/completions",
                                    .body = chat(3000, true),
                                    .timeout_s = 20},
                                   [&](std::string_view data) {
                                     body.append(data);
                                     events = static_cast<int>(events_of(body).size());
                                     return true;
                                   });
  });
  const auto wait_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (events < 3 && std::chrono::steady_clock::now() < wait_deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (events < 3) {
    ::kill(up->process().pid(), SIGKILL);  // ends the stream so the client thread can be joined
    client.join();
    FAIL() << "the stream delivered no events in 10 s";
  }
  // Kill the replica that serves the stream.
  int victim_pid = 0;
  std::string victim;
  for (const auto& r : replicas(*up)) {
    if (metric(r["port"].get<uint16_t>(), "vllm:num_requests_running") == 1) {
      victim_pid = r["pid"];
      victim = r["name"];
    }
  }
  ASSERT_NE(victim_pid, 0);
  const auto killed_at = std::chrono::steady_clock::now();
  ::kill(victim_pid, SIGKILL);
  client.join();
  EXPECT_LT(std::chrono::steady_clock::now() - killed_at, std::chrono::seconds(3));  // no hang
  ASSERT_TRUE(result && result->ok());
  auto evs = events_of(body);
  ASSERT_GE(evs.size(), 2u);
  EXPECT_NE(evs[evs.size() - 2].find(R"("error")"), std::string::npos) << evs[evs.size() - 2];
  EXPECT_EQ(evs.back(), "data: [DONE]");
  // Bytes had reached the client: no retry, no second stream spliced in.
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_upstream_retries_total"), 0);
  EXPECT_EQ(std::count(evs.begin(), evs.end(), "data: [DONE]"), 1);

  // New requests go to the survivor meanwhile.
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(
        up->post("/v1/completions", R"({"model":"chat","prompt":"hi","max_tokens":2})").status,
        200);
  // And the killed replica comes back.
  up->wait_ready("chat", 2);
  for (const auto& r : replicas(*up)) {
    if (r["name"] != victim) continue;
    EXPECT_EQ(r["restarts"], 1);
  }
}

TEST(Up, AClientThatHangsUpCancelsTheUpstreamRequest) {
  auto up = Up::start(quickstart(1, R"("--time-scale", "1")"));
  up->wait_ready("chat", 1);
  const uint16_t engine_port = replicas(*up)[0]["port"];
  int seen = 0;
  auto r = http::fetch_streaming({.port = up->port(),
                                  .method = "POST",
                                  .target = "/v1/chat/completions",
                                  .body = chat(3000, true)},
                                 [&](std::string_view data) {
                                   seen += static_cast<int>(events_of(std::string(data)).size());
                                   return seen < 3;
                                 });
  ASSERT_TRUE(r.ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (metric(engine_port, "vllm:num_requests_running") != 0 &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(metric(engine_port, "vllm:num_requests_running"), 0);
  EXPECT_EQ(metric(engine_port, "vllm:kv_cache_usage_perc"), 0);
  EXPECT_LT(metric(engine_port, "vllm:generation_tokens_total"), 1000);
}

TEST(Up, ReapplyingWithFewerReplicasStopsOne) {
  auto up = Up::start(quickstart(2));
  up->wait_ready("chat", 2);
  const fs::path file = scratch_dir() / "fewer.yaml";
  std::ofstream(file) << quickstart(1);
  std::string out;
  ASSERT_EQ(
      run_loadstar({"apply", "-f", file.string(), "--admin-port", std::to_string(up->admin_port())},
                   &out),
      0)
      << out;
  EXPECT_NE(out.find("InferenceService/chat configured"), std::string::npos);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (replicas(*up).size() != 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto items = replicas(*up);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0]["name"], "chat-0");
  EXPECT_EQ(up->post("/v1/completions", R"({"model":"chat","prompt":"hi","max_tokens":2})").status,
            200);
  // A bad file is refused with the field and line, and changes nothing.
  std::ofstream(file) << "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: "
                         "{name: chat}\nspec: {model: tiny, replicas: many}\n";
  EXPECT_EQ(
      run_loadstar({"apply", "-f", file.string(), "--admin-port", std::to_string(up->admin_port())},
                   &out),
      1);
  EXPECT_NE(out.find("spec.replicas: must be a non-negative integer, got 'many'"),
            std::string::npos)
      << out;
  EXPECT_EQ(replicas(*up).size(), 1u);
}

TEST(Up, PromtoolAcceptsTheGatewayMetrics) {
  auto up = Up::start(quickstart(1));
  up->wait_ready("chat", 1);
  ASSERT_EQ(up->post("/v1/chat/completions", chat(3, true)).status, 200);
  auto [status, output] = run_shell(
      fmt::format("curl -s http://127.0.0.1:{}/metrics | promtool check metrics", up->port()));
  EXPECT_EQ(status, 0) << output;
  EXPECT_EQ(output, "");
}

TEST(Up, CtrlCLeavesNoEngineBehindAndARestartResumes) {
  auto up = Up::start(quickstart(2));
  up->wait_ready("chat", 2);
  std::vector<int> pids;
  for (const auto& r : replicas(*up)) pids.push_back(r["pid"]);
  up->process().signal(SIGINT);
  auto status = up->process().wait_for(std::chrono::seconds(15));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, 0) << up->log();
  for (int pid : pids) EXPECT_EQ(::kill(pid, 0), -1) << "engine " << pid << " survived";
  // The store is on disk: `up` without -f brings the same service back.
  auto again = Up::start("", {}, up->data_dir());
  again->wait_ready("chat", 2);
  EXPECT_EQ(
      again->post("/v1/completions", R"({"model":"chat","prompt":"hi","max_tokens":2})").status,
      200);
}

}  // namespace
}  // namespace loadstar::testing
