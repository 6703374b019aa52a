// engine-sim as a user runs it: a real process, real HTTP, real metrics.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "support.h"
#include "tokenizer/tokenizer.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

class EngineSimTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = synth_model("tiny", "16MiB");
    sim_ = EngineSim::start(model_, {"--served-model-name", "tiny", "--time-scale", "20",
                                     "--max-model-len", "2048", "--max-body-size", "256KiB"});
  }
  static void TearDownTestSuite() { sim_.reset(); }

  static std::string chat_body(const std::string& content, int max_tokens, bool stream = false) {
    json body = {{"model", "tiny"},
                 {"messages", {{{"role", "user"}, {"content", content}}}},
                 {"max_tokens", max_tokens},
                 {"ignore_eos", true}};
    if (stream) {
      body["stream"] = true;
      body["stream_options"] = {{"include_usage", true}};
    }
    return body.dump();
  }

  static inline fs::path model_;
  static inline std::unique_ptr<EngineSim> sim_;
};

TEST_F(EngineSimTest, ChatCompletionCountsTokensLikeTheTokenizer) {
  const std::string content = "Tell me about the history of the printing press in Europe.";
  auto r = sim_->post("/v1/chat/completions", chat_body(content, 20));
  ASSERT_EQ(r.status, 200) << r.body;
  json doc = json::parse(r.body);
  EXPECT_EQ(doc["object"], "chat.completion");
  EXPECT_EQ(doc["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(doc["usage"]["completion_tokens"], 20);
  std::vector<tokenizer::TokenId> ids;
  tokenizer::ChatMessage m{"user", content};
  tokenizer::apply_chat_template({&m, 1}, ids);
  EXPECT_EQ(doc["usage"]["prompt_tokens"], ids.size());
  // The generated text re-tokenizes to exactly the tokens generated.
  const std::string text = doc["choices"][0]["message"]["content"];
  EXPECT_EQ(tokenizer::Tokenizer::get().count(text), 20u);
}

TEST_F(EngineSimTest, StreamsOneEventPerTokenWithUsageAndDone) {
  std::vector<std::string> events;
  std::string buffer;
  std::vector<double> arrival;
  const auto start = std::chrono::steady_clock::now();
  auto r = http::fetch_streaming(
      {.port = sim_->port(),
       .method = "POST",
       .target = "/v1/chat/completions",
       .body = chat_body("Hi", 100, true)},
      [&](std::string_view data) {
        buffer.append(data);
        size_t pos;
        while ((pos = buffer.find("\n\n")) != std::string::npos) {
          events.push_back(buffer.substr(0, pos));
          arrival.push_back(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
          buffer.erase(0, pos + 2);
        }
        return true;
      });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->header("Content-Type"), "text/event-stream");
  ASSERT_EQ(events.size(), 1 + 100 + 1 + 1u);  // role, tokens, usage, [DONE]
  EXPECT_EQ(events.back(), "data: [DONE]");
  json role = json::parse(events[0].substr(6));
  EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
  json last_token = json::parse(events[100].substr(6));
  EXPECT_EQ(last_token["choices"][0]["finish_reason"], "length");
  json usage = json::parse(events[101].substr(6));
  EXPECT_EQ(usage["usage"]["completion_tokens"], 100);
  EXPECT_TRUE(usage["choices"].empty());
  // Tokens arrive as they are produced, not all at the end: 100 steps of at
  // least 9.5 model ms at time scale 20 take 47 ms of wall time. The bound is
  // a third of that: the step loop catches up to 5 ms after falling behind and
  // a busy CI machine can delay the first event's delivery (29.9 ms seen), while
  // a server that buffered the stream would deliver all of them within ~1 ms.
  EXPECT_GT(arrival[100] - arrival[1], 0.015);
}

TEST_F(EngineSimTest, BadInputGetsVllmAnswersAndTheServerKeepsServing) {
  auto malformed = sim_->post("/v1/chat/completions", "{\"model\":");
  EXPECT_EQ(malformed.status, 400);
  EXPECT_EQ(json::parse(malformed.body)["error"]["type"], "BadRequestError");

  auto unknown = sim_->post("/v1/chat/completions",
                            R"({"model":"gpt-9","messages":[{"role":"user","content":"x"}]})");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(json::parse(unknown.body)["error"]["message"], "The model `gpt-9` does not exist.");

  std::string long_prompt;
  for (int i = 0; i < 2100; ++i) long_prompt += " word";
  auto too_long =
      sim_->post("/v1/completions", json({{"model", "tiny"}, {"prompt", long_prompt}}).dump());
  EXPECT_EQ(too_long.status, 400);
  EXPECT_NE(json::parse(too_long.body)["error"]["message"].get<std::string>().find(
                "maximum context length is 2048 tokens"),
            std::string::npos);

  auto too_big =
      sim_->post("/v1/completions",
                 json({{"model", "tiny"}, {"prompt", std::string(300 * 1024, 'a')}}).dump());
  EXPECT_EQ(too_big.status, 413);

  EXPECT_EQ(sim_->get("/nope").status, 404);
  EXPECT_EQ(sim_->get("/health").status, 200);
  EXPECT_EQ(
      sim_->post("/v1/completions", R"({"model":"tiny","prompt":"still here","max_tokens":2})")
          .status,
      200);
}

TEST_F(EngineSimTest, ModelsEmbeddingsAndCompletionsAnswer) {
  json models = json::parse(sim_->get("/v1/models").body);
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][0]["max_model_len"], 2048);

  auto e = sim_->post("/v1/embeddings",
                      R"({"model":"tiny","input":["the cat sat","the cat sat down"]})");
  ASSERT_EQ(e.status, 200) << e.body;
  json doc = json::parse(e.body);
  auto a = doc["data"][0]["embedding"].get<std::vector<double>>();
  auto b = doc["data"][1]["embedding"].get<std::vector<double>>();
  ASSERT_EQ(a.size(), 384u);
  double dot = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += a[i] * b[i];
    norm += a[i] * a[i];
  }
  EXPECT_NEAR(norm, 1.0, 1e-5);
  EXPECT_GT(dot, 0.5);  // similar texts, similar vectors
  auto again = sim_->post("/v1/embeddings", R"({"model":"tiny","input":"the cat sat"})");
  EXPECT_EQ(json::parse(again.body)["data"][0]["embedding"].get<std::vector<double>>(), a);
}

TEST_F(EngineSimTest, MetricsMatchWhatWasServed) {
  const double prompt_before = sim_->metric("vllm:prompt_tokens_total");
  const double gen_before = sim_->metric("vllm:generation_tokens_total");
  const double success_before =
      sim_->metric("vllm:request_success_total", "finished_reason=\"length\"");
  const double ttft_count_before = sim_->metric("vllm:time_to_first_token_seconds_count");
  uint64_t prompt = 0, completion = 0;
  for (int i = 0; i < 5; ++i) {
    auto r =
        sim_->post("/v1/chat/completions", chat_body("request number " + std::to_string(i), 7 + i));
    ASSERT_EQ(r.status, 200);
    json usage = json::parse(r.body)["usage"];
    prompt += usage["prompt_tokens"].get<uint64_t>();
    completion += usage["completion_tokens"].get<uint64_t>();
  }
  EXPECT_EQ(sim_->metric("vllm:prompt_tokens_total") - prompt_before, prompt);
  EXPECT_EQ(sim_->metric("vllm:generation_tokens_total") - gen_before, completion);
  EXPECT_EQ(
      sim_->metric("vllm:request_success_total", "finished_reason=\"length\"") - success_before, 5);
  EXPECT_EQ(sim_->metric("vllm:time_to_first_token_seconds_count") - ttft_count_before, 5);
  EXPECT_EQ(sim_->metric("vllm:num_requests_running"), 0);
  EXPECT_EQ(sim_->metric("vllm:cache_config_info", "num_gpu_blocks=\"24000\""), 1);
}

TEST_F(EngineSimTest, RepeatedPrefixRaisesHitsAndReportsCachedTokens) {
  std::string system_prompt;
  for (int i = 0; i < 300; ++i) system_prompt += " shared context words";
  const double hits_before = sim_->metric("vllm:prefix_cache_hits_total");
  auto first = sim_->post("/v1/chat/completions", chat_body(system_prompt + " first question", 2));
  auto second =
      sim_->post("/v1/chat/completions", chat_body(system_prompt + " second question", 2));
  ASSERT_EQ(second.status, 200);
  const uint64_t cached =
      json::parse(second.body)["usage"]["prompt_tokens_details"]["cached_tokens"];
  EXPECT_GT(cached, 800u);
  EXPECT_EQ(sim_->metric("vllm:prefix_cache_hits_total") - hits_before, cached);
}

TEST_F(EngineSimTest, ClientThatHangsUpMidStreamFreesItsKvBlocks) {
  int events = 0;
  auto r = http::fetch_streaming(
      {.port = sim_->port(),
       .method = "POST",
       .target = "/v1/chat/completions",
       .body = chat_body("a long story please", 1800, true)},
      [&](std::string_view data) {
        events += static_cast<int>(std::count(data.begin(), data.end(), '\n')) / 2;
        return events < 5;  // hang up after a few tokens
      });
  ASSERT_TRUE(r.ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (sim_->metric("vllm:num_requests_running") != 0 &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(sim_->metric("vllm:num_requests_running"), 0);
  EXPECT_EQ(sim_->metric("vllm:kv_cache_usage_perc"), 0);
  EXPECT_EQ(sim_->get("/health").status, 200);
}

TEST_F(EngineSimTest, PromtoolAcceptsTheMetricsPage) {
  const fs::path page = scratch_dir() / "metrics.txt";
  std::ofstream(page) << sim_->metrics_text();
  auto [status, output] = run_shell("promtool check metrics < " + page.string());
  // Exit 1 is a parse failure. Exit 3 is lint: the only lint allowed is the
  // colon that vLLM's own names carry ("vllm:..."); anything else fails.
  ASSERT_NE(status, 1) << output;
  ASSERT_NE(status, 127) << "promtool not found: " << output;
  std::istringstream lines(output);
  std::string line;
  int problems = 0;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    ++problems;
    EXPECT_TRUE(line.rfind("vllm:", 0) == 0 &&
                line.find("metric names should not contain ':'") != std::string::npos)
        << line;
  }
  EXPECT_EQ(status == 0, problems == 0);
}

TEST(EngineSimProcess, FullWaitingQueueAnswers503) {
  auto model = synth_model("tiny", "16MiB");
  // One running slot, one waiting slot.
  auto sim = EngineSim::start(
      model, {"--served-model-name", "tiny", "--max-num-seqs", "1", "--max-waiting", "1"});
  auto request = [&](const std::string& prompt) {
    return http::fetch(
        {.port = sim->port(),
         .method = "POST",
         .target = "/v1/completions",
         .body =
             json({{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 60}, {"ignore_eos", true}})
                 .dump()});
  };
  auto wait_for = [&](const char* gauge, double value) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (sim->metric(gauge) != value && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return sim->metric(gauge) == value;
  };
  std::atomic<int> ok{0};
  std::thread running([&] { ok += request("first").value().status == 200; });
  ASSERT_TRUE(wait_for("vllm:num_requests_running", 1));
  std::thread waiting([&] { ok += request("second").value().status == 200; });
  ASSERT_TRUE(wait_for("vllm:num_requests_waiting", 1));
  auto refused = request("third");
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(refused->header("Retry-After"), "1");
  EXPECT_NE(refused->body.find("waiting queue is full"), std::string::npos) << refused->body;
  running.join();
  waiting.join();
  EXPECT_EQ(ok, 2);
  // The server kept serving: once the queue drains a new request gets in.
  EXPECT_EQ(request("fourth").value().status, 200);
}

// Fault injection: the share of failures asked for, and the delay.
TEST(EngineSimProcess, InjectedFaultsFailTheShareAskedForAndDelayEveryRequest) {
  auto model = synth_model("tiny", "16MiB");
  auto sim = EngineSim::start(model, {"--served-model-name", "tiny", "--time-scale", "50",
                                      "--fault-error-rate", "0.3", "--fault-delay", "0.02"});
  int failed = 0;
  const auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) {
    auto r = http::fetch(
        {.port = sim->port(),
         .method = "POST",
         .target = "/v1/completions",
         .body = json({{"model", "tiny"}, {"prompt", "hi"}, {"max_tokens", 1}}).dump()});
    ASSERT_TRUE(r.ok());
    if (r->status == 500) {
      ++failed;
      EXPECT_NE(r->body.find("injected fault"), std::string::npos) << r->body;
    } else {
      EXPECT_EQ(r->status, 200) << r->body;
    }
  }
  EXPECT_GE(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));  // 100 x 20 ms
  EXPECT_GE(failed, 15);
  EXPECT_LE(failed, 45);
  // Health and metrics are not faulted: the replica stays routable.
  EXPECT_EQ(http::fetch({.port = sim->port(), .target = "/health"})->status, 200);
}

TEST(EngineSimProcess, StartUpTimeGrowsWithModelSize) {
  auto small = synth_model("small-8m", "8MiB");
  auto large = synth_model("large-256m", "256MiB");
  auto a = EngineSim::start(small, {"--served-model-name", "s"});
  auto b = EngineSim::start(large, {"--served-model-name", "l"});
  EXPECT_GT(b->metric("loadstar_engine_sim_model_load_bytes"),
            30 * a->metric("loadstar_engine_sim_model_load_bytes"));
  EXPECT_GT(b->metric("loadstar_engine_sim_model_load_seconds"),
            a->metric("loadstar_engine_sim_model_load_seconds"));
}

TEST(EngineSimProcess, BadModelDirectoryIsAClearError) {
  std::string out;
  EXPECT_EQ(run_loadstar({"engine-sim", "--model", "/nonexistent/model", "--port", "0"}, &out), 2);
  EXPECT_NE(out.find("/nonexistent/model/config.json"), std::string::npos) << out;
}

TEST(EngineSimProcess, SigtermStopsCleanly) {
  auto model = synth_model("tiny", "16MiB");
  auto sim = EngineSim::start(model);
  sim->process().signal(SIGTERM);
  auto status = sim->process().wait_for(std::chrono::seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, 0);
}

}  // namespace
}  // namespace loadstar::testing

namespace loadstar::testing {
namespace {

// vLLM's multi-LoRA serving, as engine-sim models it: adapters from
// --lora-modules and loaded at runtime (VLLM_ALLOW_RUNTIME_LORA_UPDATING),
// listed under the base model, served by name, at most --max-loras of them
// in a batch (the others wait, as vllm:lora_requests_info shows), evicted
// from host memory when another needs the room, unloaded.
TEST(EngineSimLora, AdaptersAreServedLoadedUnloadedAndShownAsVllmDoes) {
  const fs::path model = synth_model("tiny", "16MiB");
  auto adapter = [&](const std::string& name, int rank) {
    return synth_adapter(name, model, rank).string();
  };
  const std::string a = adapter("a", 8), b = adapter("b", 16), wide = adapter("wide", 64);
  std::string out;
  EXPECT_EQ(run_loadstar({"engine-sim", "--model", model.string(), "--port", "0", "--enable-lora",
                          "--lora-modules", "wide=" + wide},
                         &out),
            2);
  EXPECT_NE(out.find("LoRA rank 64 is greater than max_lora_rank 16."), std::string::npos) << out;

  ::setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True", 1);
  auto sim =
      EngineSim::start(model, {"--served-model-name", "tiny", "--time-scale", "2", "--enable-lora",
                               "--max-loras", "1", "--lora-modules", "a=" + a});
  ::unsetenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING");
  auto complete = [&](const std::string& name, int tokens) {
    return sim->post("/v1/completions", json({{"model", name},
                                              {"prompt", "hello there"},
                                              {"max_tokens", tokens},
                                              {"ignore_eos", true}})
                                            .dump());
  };
  const json models = json::parse(sim->get("/v1/models").body);
  ASSERT_EQ(models["data"].size(), 2u) << models;
  EXPECT_EQ(models["data"][1]["id"], "a");
  EXPECT_EQ(models["data"][1]["parent"], "tiny");
  EXPECT_EQ(models["data"][1]["root"], a);
  auto r = complete("a", 2);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["model"], "a");
  r = complete("b", 2);
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.body.find("The model `b` does not exist."), std::string::npos) << r.body;

  auto load = [&](const std::string& name, const std::string& path) {
    return sim->post("/v1/load_lora_adapter",
                     json({{"lora_name", name}, {"lora_path", path}}).dump());
  };
  r = load("b", b);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "Success: LoRA adapter 'b' added successfully.");
  r = load("b", b);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("The lora adapter 'b' has already been loaded."), std::string::npos);
  r = load("wide", wide);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("LoRA rank 64 is greater than max_lora_rank 16."), std::string::npos);
  r = load("nothing", (scratch_dir() / "no-such-adapter").string());
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("adapter_config.json"), std::string::npos) << r.body;

  // One slot: while a long request of `a` runs, `b` waits, and the metric says so.
  std::thread long_a([&] { EXPECT_EQ(complete("a", 400).status, 200); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::thread short_b([&] { EXPECT_EQ(complete("b", 2).status, 200); });
  bool seen = false;
  for (int i = 0; i < 100 && !seen; ++i) {
    seen = sim->metrics_text().find(
               "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters="
               "\"a\",waiting_lora_adapters=\"b\"}") != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(seen) << sim->metrics_text();
  long_a.join();
  short_b.join();
  // One adapter in host memory too: b evicted a, so a is read from disk
  // again, and evicts b.
  const double loads = sim->metric("loadstar_engine_sim_lora_loads_total");
  EXPECT_EQ(complete("a", 2).status, 200);
  EXPECT_EQ(sim->metric("loadstar_engine_sim_lora_loads_total"), loads + 1);
  EXPECT_EQ(complete("a", 2).status, 200);  // held now: no load
  EXPECT_EQ(sim->metric("loadstar_engine_sim_lora_loads_total"), loads + 1);

  r = sim->post("/v1/unload_lora_adapter", json({{"lora_name", "b"}}).dump());
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "Success: LoRA adapter 'b' removed successfully.");
  EXPECT_EQ(complete("b", 2).status, 404);
  r = sim->post("/v1/unload_lora_adapter", json({{"lora_name", "b"}}).dump());
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.body.find("The lora adapter 'b' cannot be found."), std::string::npos);
}

// Without VLLM_ALLOW_RUNTIME_LORA_UPDATING the routes do not exist, as in vLLM.
TEST(EngineSimLora, RuntimeLoadingIsOffUnlessAllowed) {
  auto sim = EngineSim::start(synth_model("tiny", "16MiB"),
                              {"--served-model-name", "tiny", "--enable-lora"});
  auto r = sim->post("/v1/load_lora_adapter", R"({"lora_name":"x","lora_path":"/etc"})");
  EXPECT_EQ(r.status, 404) << r.body;
}

}  // namespace
}  // namespace loadstar::testing
