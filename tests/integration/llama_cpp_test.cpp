// A real engine: `loadstar up` running llama.cpp's llama-server (built by
// scripts/llama-server.sh) on a synthetic GGUF with a real tokenizer. The
// OpenAI API through the gateway (chat, completions, streams with usage),
// the engine's own prompt cache, its /metrics scraped by the gateway, a
// client hang-up freeing the engine's slot, a killed engine coming back, a
// bad flag reported in the engine's own words, scale to zero and back.
// Skipped when no llama-server is found, unless LOADSTAR_REQUIRE_LLAMA=1
// (scripts/test.sh sets it).
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/digest.h"
#include "http/client.h"
#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

bool have_llama_server() {
  auto [code, out] = run_shell(std::string(LOADSTAR_SOURCE_DIR) + "/scripts/llama-server.sh path");
  return code == 0 || std::getenv("LOADSTAR_LLAMA_CPP_BIN");
}

#define REQUIRE_LLAMA()                                                  \
  do {                                                                   \
    if (!have_llama_server()) {                                          \
      const char* required = std::getenv("LOADSTAR_REQUIRE_LLAMA");      \
      if (required && std::string(required) == "1")                      \
        FAIL() << "no llama-server (run scripts/llama-server.sh build)"; \
      GTEST_SKIP() << "no llama-server (scripts/llama-server.sh build)"; \
    }                                                                    \
  } while (0)

// `extra`: more of the service's spec; `engine`: more of its spec.engine.
std::string service(int replicas, const std::string& extra = "", const std::string& engine = "",
                    int max_sequences = 2) {
  return fmt::format(R"(
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: tiny-gguf}}
spec: {{source: "synth://tiny-gguf", format: gguf, size: 26Mi}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  model: tiny-gguf
  replicas: {}
  engine: {{name: llama.cpp, contextLength: 1024, maxSequences: {}, threads: 1{}}}
{}
)",
                     replicas, max_sequences, engine, extra);
}

json replicas(Up& up) {
  return json::parse(up.replicas_json())["items"];
}

json chat(const std::string& content, int max_tokens, bool stream = false) {
  json body = {{"model", "chat"},
               {"messages", {{{"role", "user"}, {"content", content}}}},
               {"max_tokens", max_tokens},
               {"temperature", 0}};
  if (stream) {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
  }
  return body;
}

std::vector<json> events_of(const std::string& body) {
  std::vector<json> out;
  size_t pos = 0, end;
  while ((end = body.find("\n\n", pos)) != std::string::npos) {
    std::string event = body.substr(pos, end - pos);
    pos = end + 2;
    if (!event.starts_with("data: ") || event == "data: [DONE]") continue;
    out.push_back(json::parse(event.substr(6), nullptr, false));
  }
  return out;
}

// A streamed chat of exactly `tokens` tokens; true when it was answered 200.
bool stream_to_the_end(Up& up, const std::string& content, int tokens) {
  json body = chat(content, tokens, true);
  body["ignore_eos"] = true;
  auto r = http::fetch({.port = up.port(),
                        .method = "POST",
                        .target = "/v1/chat/completions",
                        .body = body.dump(),
                        .headers = {{"Content-Type", "application/json"}},
                        .timeout_s = 120});
  return r.ok() && r->status == 200;
}

double engine_metric(uint16_t port, const std::string& name) {
  return scrape_metric(port, name);
}

template <typename F>
bool eventually(F done, std::chrono::milliseconds within = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

TEST(LlamaCpp, ServesTheOpenAiApiThroughTheGatewayWithItsOwnPromptCache) {
  REQUIRE_LLAMA();
  auto up = Up::start(service(1));
  up->wait_ready("chat", 1);

  // Chat, answered by the engine with real token counts.
  auto r = up->post("/v1/chat/completions", chat("Tell me about lighthouses.", 8).dump());
  ASSERT_EQ(r.status, 200) << r.body;
  json answer = json::parse(r.body);
  EXPECT_EQ(answer["object"], "chat.completion");
  EXPECT_GT(answer["usage"]["prompt_tokens"].get<int>(), 5);
  EXPECT_GE(answer["usage"]["completion_tokens"].get<int>(), 1);
  EXPECT_LE(answer["usage"]["completion_tokens"].get<int>(), 8);

  // Completions.
  r = up->post("/v1/completions",
               json({{"model", "chat"}, {"prompt", "Once upon"}, {"max_tokens", 4}}).dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["object"], "text_completion");

  // A stream, event by event, ending with usage.
  r = up->post("/v1/chat/completions", chat("Count to ten.", 6, true).dump());
  ASSERT_EQ(r.status, 200) << r.body;
  auto events = events_of(r.body);
  ASSERT_GE(events.size(), 2u) << r.body;
  EXPECT_EQ(events.front()["object"], "chat.completion.chunk");
  EXPECT_TRUE(events.back().contains("usage") && events.back()["usage"].is_object()) << r.body;
  EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos);

  // The engine's prompt cache: a long prompt sent again is mostly reused
  // (llama-server's own timings say how many prompt tokens it evaluated).
  std::string long_prompt;
  for (int i = 0; i < 40; ++i) long_prompt += "The keeper climbed the stairs at dusk. ";
  r = up->post("/v1/chat/completions", chat(long_prompt, 1).dump());
  ASSERT_EQ(r.status, 200) << r.body;
  const json first = json::parse(r.body);
  r = up->post("/v1/chat/completions", chat(long_prompt, 1).dump());
  const json second = json::parse(r.body);
  ASSERT_TRUE(second.contains("timings")) << r.body;
  EXPECT_GT(first["timings"]["prompt_n"].get<int>(), 300);
  EXPECT_LT(second["timings"]["prompt_n"].get<int>(), 10) << r.body;
  EXPECT_GT(second["timings"]["cache_n"].get<int>(), 300) << r.body;

  // The gateway scrapes the engine's llamacpp: metrics for its picker and
  // the autoscaler (a fresh scrape in its load report).
  EXPECT_TRUE(eventually([&] {
    auto load = http::fetch({.port = up->port(), .target = "/loadstar/v1/load"});
    if (!load.ok()) return false;
    const json report = json::parse(load->body, nullptr, false);
    return report.is_object() && !report["endpoints"].empty() &&
           report["endpoints"][0]["metrics_age_s"].get<double>() >= 0;
  }));
  EXPECT_GE(scrape_metric(up->port(), "loadstar_gateway_requests_total", "code=\"200\""), 5);
  // The replica's cold start, phase by phase, includes the engine's load.
  const json t = replicas(*up)[0]["timeline"];
  for (const char* event : {"queued", "placed", "staged", "started", "ready", "routed"})
    EXPECT_TRUE(t[event].is_number()) << event << " " << t;
  EXPECT_GT(t["ready"].get<double>(), t["started"].get<double>());  // llama-server loading
}

TEST(LlamaCpp, RepeatedPromptsGoToTheReplicaHoldingTheirPrefix) {
  REQUIRE_LLAMA();
  auto up = Up::start(service(2, "  routing: {picker: scored}\n"));
  up->wait_ready("chat", 2);
  // Each long prompt twice: the second time the gateway's prefix-aware
  // picker sends it where the first went, and llama-server's own prompt
  // cache answers most of it (a blind picker would miss about half).
  int hits = 0;
  for (int i = 0; i < 6; ++i) {
    std::string prompt = fmt::format("Story {}:", i);
    for (int k = 0; k < 30; ++k)
      prompt += fmt::format(" The keeper of tower {} lit lamp {}.", i, k);
    ASSERT_EQ(up->post("/v1/chat/completions", chat(prompt, 1).dump()).status, 200);
    auto r = up->post("/v1/chat/completions", chat(prompt, 1).dump());
    ASSERT_EQ(r.status, 200) << r.body;
    hits += json::parse(r.body)["timings"]["cache_n"].get<int>() > 200;
  }
  EXPECT_EQ(hits, 6);
  EXPECT_GT(scrape_metric(up->port(), "loadstar_gateway_prefix_blocks_matched_total"), 0);
}

TEST(LlamaCpp, AClientHangUpFreesTheSlotAndAnEngineKilledMidStreamComesBack) {
  REQUIRE_LLAMA();
  auto up = Up::start(service(1));
  up->wait_ready("chat", 1);
  const json r0 = replicas(*up)[0];
  const uint16_t engine_port = r0["port"];
  // A long stream, dropped after a few events: the engine stops generating.
  json body = chat("Write a long story.", 4000, true);
  body["ignore_eos"] = true;
  int seen = 0;
  auto r = http::fetch_streaming(
      {.port = up->port(), .method = "POST", .target = "/v1/chat/completions", .body = body.dump()},
      [&](std::string_view data) {
        seen += static_cast<int>(std::count(data.begin(), data.end(), '\n')) / 2;
        return seen < 3;
      });
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(eventually([&] {
    return engine_metric(engine_port, "llamacpp:requests_processing") == 0;
  })) << "the engine still generates for a client that left";

  // kill -9 mid-stream: the client's stream ends at once (no hang), the
  // replica is restarted and serves again.
  std::atomic<int> events{0};
  std::optional<Result<http::ClientResponse>> result;
  std::thread client([&] {
    result = http::fetch_streaming(
        {.port = up->port(),
         .method = "POST",
         .target = "/v1/chat/completions",
         .body = body.dump(),
         .timeout_s = 60},
        [&](std::string_view data) {
          events += static_cast<int>(std::count(data.begin(), data.end(), '\n') / 2);
          return true;
        });
  });
  const bool streaming = eventually([&] { return events >= 3; });
  const auto killed_at = std::chrono::steady_clock::now();
  ::kill(r0["pid"].get<int>(), SIGKILL);
  client.join();
  ASSERT_TRUE(streaming);
  EXPECT_LT(std::chrono::steady_clock::now() - killed_at, 5s);
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(eventually([&] { return replicas(*up)[0]["restarts"].get<int>() == 1; }));
  up->wait_ready("chat", 1);
  EXPECT_EQ(up->post("/v1/chat/completions", chat("Hello again.", 2).dump()).status, 200);
}

TEST(LlamaCpp, ABadFlagIsReportedInTheEnginesOwnWords) {
  REQUIRE_LLAMA();
  auto up = Up::start(service(1, "", R"(, args: ["--no-such-flag"])"));
  std::string message;
  EXPECT_TRUE(eventually(
      [&] {
        const json items = replicas(*up);
        message = items.empty() ? "" : items[0].value("message", "");
        return message.find("--no-such-flag") != std::string::npos;
      },
      20s))
      << message;
  EXPECT_NE(message.find("engine exited with status"), std::string::npos) << message;
}

TEST(LlamaCpp, ScalesOutOnInFlightRequestsAndTheNewReplicaServes) {
  REQUIRE_LLAMA();
  auto up = Up::start(service(1, R"(  autoscaling:
    maxReplicas: 2
    targets: {inFlightPerReplica: 1}
    stableWindow: 3s
    panicWindow: 1s
    scaleDownStabilization: 1s
)"));
  up->wait_ready("chat", 1);
  // Two long streams on one replica: twice its target; a second replica
  // is started, loads its model and is routed to.
  std::vector<std::thread> clients;
  std::atomic<int> done{0};
  for (int i = 0; i < 2; ++i)
    clients.emplace_back(
        [&, i] { done += stream_to_the_end(*up, fmt::format("Stream {} please.", i), 400); });
  const bool scaled = eventually(
      [&] {
        int ready = 0;
        for (const auto& r : replicas(*up)) ready += r["state"] == "Ready";
        return ready == 2;
      },
      30s);
  for (auto& c : clients) c.join();
  EXPECT_TRUE(scaled) << up->replicas_json();
  EXPECT_EQ(done, 2);
  auto services = http::fetch({.port = up->admin_port(), .target = "/api/v1/services"});
  ASSERT_TRUE(services.ok());
  EXPECT_NE(services->body.find("in-flight"), std::string::npos) << services->body;  // why
}

TEST(LlamaCpp, ScalesToZeroAndBackForAHeldRequest) {
  REQUIRE_LLAMA();
  auto up = Up::start(service(1, "  minReplicas: 0\n  idleTimeout: 2s\n"));
  ASSERT_TRUE(eventually([&] {  // the service is routable (with no replica yet)
    auto models = http::fetch({.port = up->port(), .target = "/v1/models"});
    return models.ok() && models->body.find("\"chat\"") != std::string::npos;
  }));
  EXPECT_TRUE(replicas(*up).empty());
  // Asked for by a request: held, the engine starts, the request is served.
  auto r = up->post("/v1/chat/completions", chat("Wake up.", 2).dump());
  ASSERT_EQ(r.status, 200) << r.body;
  bool held = false;
  for (const auto& h : r.headers) held |= h.name == "x-loadstar-held-seconds";
  EXPECT_TRUE(held);
  // Idle past the window: back to zero.
  EXPECT_TRUE(eventually([&] { return replicas(*up).empty(); }, 20s));
  EXPECT_EQ(up->post("/v1/chat/completions", chat("Again.", 2).dump()).status, 200);
}

// With an SLO, a request still without a first token when its TTFT SLO
// passes is counted as a miss then, in the load report the controller
// autoscales on, before its answer comes; its answer, later, is marked as
// counted already. Here it waits behind a long stream for a one-slot
// llama-server: with an SLO and the slots declared, flow control is on by
// default, so it waits in the gateway's queue (counted there, and reported
// queued past its SLO), not in the engine's.
TEST(LlamaCpp, ARequestPastItsTtftSloIsReportedOverdueBeforeItIsAnswered) {
  REQUIRE_LLAMA();
  auto up = Up::start(service(1, R"(  autoscaling:
    maxReplicas: 1
    slo: {ttft: 0.3s}
)",
                              "", 1));
  up->wait_ready("chat", 1);
  auto overdue = [&](const char* field) {
    auto load = http::fetch({.port = up->port(), .target = "/loadstar/v1/load"});
    uint64_t n = 0;
    if (!load.ok()) return n;
    const json report = json::parse(load->body);
    for (const auto& e : report["endpoints"]) n += e.value(field, uint64_t{0});
    return n;
  };
  EXPECT_EQ(overdue("ttft_overdue"), 0u);
  std::atomic<int> done{0};
  auto send = [&](const std::string& content, int tokens) {
    return std::thread([&, content, tokens] { done += stream_to_the_end(*up, content, tokens); });
  };
  std::thread first = send("A long answer, please.", 900);
  std::this_thread::sleep_for(100ms);
  std::thread second = send("Then a short one.", 2);  // waits for the slot
  const bool queued = eventually([&] {
    auto load = http::fetch({.port = up->port(), .target = "/loadstar/v1/load"});
    return load.ok() && json::parse(load->body)["queued"].value("chat", 0) == 1;
  });
  const bool seen = eventually([&] { return overdue("ttft_overdue") >= 1; }, 5s);
  // Still queued, and past its SLO: the autoscaler leaves it out of the load.
  const bool queued_overdue = eventually([&] {
    auto load = http::fetch({.port = up->port(), .target = "/loadstar/v1/load"});
    return load.ok() && json::parse(load->body)["queued_overdue"].value("chat", 0) == 1 &&
           scrape_metric(up->port(), "loadstar_gateway_queued_overdue_requests",
                         "service=\"chat\"") == 1;
  });
  const int answered_then = done.load();
  first.join();
  second.join();
  EXPECT_TRUE(queued) << "not queued in the gateway";
  EXPECT_TRUE(seen);
  EXPECT_TRUE(queued_overdue) << "not reported queued past its SLO";
  EXPECT_EQ(answered_then, 0) << "the long stream ended before the check: no evidence";
  EXPECT_EQ(done, 2);
  EXPECT_GE(overdue("ttft_overdue_answered"), 1u);
  EXPECT_LE(overdue("ttft_overdue_answered"), overdue("ttft_overdue"));
}

// LoRA on llama.cpp: each adapter (a GGUF adapter file `loadstar model
// synth --lora-of` writes) is loaded at start at scale 0, and the gateway
// turns the model a client names into llama-server's per-request selection
// ("lora": [{"id", "scale"}]). The adapter changes the answer's log
// probabilities (greedy, so the same request answers the same); a client's
// own "lora" field never selects an adapter its key may not use.
TEST(LlamaCpp, AdaptersAreSelectedPerRequestByTheirModelName) {
  REQUIRE_LLAMA();
  const fs::path dir = scratch_dir() / "llama-lora";
  fs::create_directories(dir);
  std::string out;
  ASSERT_EQ(run_loadstar({"model", "synth", "--format", "gguf", "--size", "26Mi", "-o",
                          (dir / "base.gguf").string()},
                         &out),
            0)
      << out;
  for (const auto& [name, seed] : {std::pair{"sql", "1"}, std::pair{"poems", "2"}})
    ASSERT_EQ(run_loadstar({"model", "synth", "--format", "gguf", "--lora-of",
                            (dir / "base.gguf").string(), "--rank", "8", "--seed", seed, "-o",
                            (dir / (std::string(name) + ".gguf")).string()},
                           &out),
              0)
        << out;
  auto up = Up::start(fmt::format(R"(
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: tiny-gguf}}
spec: {{source: "file://{0}/base.gguf", format: gguf}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: sql}}
spec: {{source: "file://{0}/sql.gguf", format: gguf, adapterOf: tiny-gguf, rank: 8}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: poems}}
spec: {{source: "file://{0}/poems.gguf", format: gguf, adapterOf: tiny-gguf}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  model: tiny-gguf
  replicas: 1
  engine: {{name: llama.cpp, contextLength: 512, maxSequences: 1, threads: 1}}
  lora: {{adapters: [sql, poems]}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: base-only}}
spec:
  apiKeys: [{{name: k, sha256: {1}}}]
  models: [chat]
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: everyone}}
spec:
  apiKeys: [{{name: k, sha256: {2}}}]
)",
                                  dir.string(), sha256_hex("sk-base"), sha256_hex("sk-all")));
  up->wait_ready("chat", 1);
  // The first token's log probability: what the adapter changes. The
  // engine's prompt cache is off for these requests: llama-server at the
  // pinned release reuses a prompt's KV computed under another adapter.
  auto first_logprob = [&](const std::string& model, const std::string& key,
                           const json& extra = json::object()) -> std::optional<double> {
    json body = {{"model", model},   {"prompt", "hello world"}, {"max_tokens", 1},
                 {"temperature", 0}, {"logprobs", 1},           {"cache_prompt", false}};
    body.update(extra);
    auto r = up->post("/v1/completions", body.dump(), {{"Authorization", "Bearer " + key}});
    if (r.status != 200) {
      ADD_FAILURE() << model << ": " << r.status << " " << r.body;
      return std::nullopt;
    }
    return json::parse(r.body)["choices"][0]["logprobs"]["content"][0]["logprob"].get<double>();
  };
  const auto base = first_logprob("chat", "sk-all");
  const auto sql = first_logprob("sql", "sk-all");
  const auto poems = first_logprob("poems", "sk-all");
  ASSERT_TRUE(base && sql && poems);
  EXPECT_NE(*sql, *base);
  EXPECT_NE(*poems, *base);
  EXPECT_NE(*poems, *sql);
  EXPECT_EQ(first_logprob("sql", "sk-all"), sql);  // the same selection again
  EXPECT_EQ(first_logprob("chat", "sk-all"), base);
  // A base-only key cannot reach an adapter by name, nor by llama.cpp's own
  // field: the gateway drops it.
  auto denied = up->post("/v1/completions",
                         json({{"model", "sql"}, {"prompt", "x"}, {"max_tokens", 1}}).dump(),
                         {{"Authorization", "Bearer sk-base"}});
  EXPECT_EQ(denied.status, 404) << denied.body;
  EXPECT_EQ(first_logprob("chat", "sk-base", {{"lora", {{{"id", 0}, {"scale", 1.0}}}}}), base);
}

}  // namespace
}  // namespace loadstar::testing
