// LoRA adapters end to end in `loadstar up`: adapters named by clients
// through the gateway, and routed to the replicas that run them.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/digest.h"
#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// The base Model `tiny` and its adapters `sql` (rank 8) and `poems`, each
// synthesized once, as YAML documents ending in a separator.
std::string models_yaml() {
  const fs::path base = synth_model("lora-base", "16MiB");
  return fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: tiny}}
spec: {{source: "file://{}"}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: sql}}
spec: {{source: "file://{}", adapterOf: tiny, rank: 8}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: poems}}
spec: {{source: "file://{}", adapterOf: tiny}}
---
)",
                     base.string(), synth_adapter("up-sql", base, 8).string(),
                     synth_adapter("up-poems", base, 8).string());
}

// LoRA adapters in `loadstar up`: Models that are adapters of the service's
// model, listed in spec.lora, are loaded by each replica at start and
// named by clients through the gateway; an unknown name is 404; an adapter
// of another base model is refused before anything starts.
TEST(UpLora, AClientNamesAnAdapterThroughTheGateway) {
  const std::string resources =
      models_yaml() + fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  model: tiny
  replicas: 1
  engine: {{name: engine-sim, args: ["--time-scale", "10"]}}
  lora: {{adapters: [sql, poems], maxLoras: 2}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: everyone}}
spec:
  apiKeys: [{{name: k, sha256: {}}}]
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: analysts}}
spec:
  apiKeys: [{{name: k, sha256: {}}}]
  models: [sql]
)",
                                  sha256_hex("sk-all"), sha256_hex("sk-sql"));
  // An adapter of another model is refused, naming why.
  const fs::path bad = scratch_dir() / "up-lora-bad.yaml";
  {
    std::string text = resources;
    text.replace(text.find("adapterOf: tiny, rank: 8"), 24, "adapterOf: other, rank: 8");
    std::ofstream(bad) << text;
  }
  std::string out;
  EXPECT_NE(run_loadstar({"validate", "-f", bad.string()}, &out), 0);
  EXPECT_NE(out.find("spec.lora.adapters: 'sql' is not an adapter of 'tiny' (its spec.adapterOf "
                     "is 'other')"),
            std::string::npos)
      << out;

  auto up = Up::start(resources);
  up->wait_ready("chat", 1);
  auto ask = [&](const std::string& model, const std::string& key) {
    return up->post("/v1/completions",
                    json({{"model", model}, {"prompt", "hello"}, {"max_tokens", 3}}).dump(),
                    {{"Authorization", "Bearer " + key}});
  };
  for (const std::string model : {"sql", "poems", "chat"}) {
    auto r = ask(model, "sk-all");
    ASSERT_EQ(r.status, 200) << model << ": " << r.body;
    EXPECT_EQ(json::parse(r.body)["model"], model);
  }
  EXPECT_EQ(ask("nope", "sk-all").status, 404);
  // A tenant's allowed models name adapters like any model.
  EXPECT_EQ(ask("sql", "sk-sql").status, 200);
  EXPECT_EQ(ask("poems", "sk-sql").status, 404);
  EXPECT_EQ(ask("chat", "sk-sql").status, 404);
  // The replica loaded both at start, under the service's model.
  const json replicas = json::parse(up->replicas_json());
  const uint16_t port = replicas["items"][0]["port"];
  auto models = http::fetch({.port = port, .target = "/v1/models"});
  ASSERT_TRUE(models.ok());
  const json listed = json::parse(models->body)["data"];
  ASSERT_EQ(listed.size(), 3u) << models->body;
  EXPECT_EQ(listed[1]["parent"], "chat");
}

// The scored picker sends an adapter's request where that adapter runs, and
// another adapter's where there is room for one more: two replicas that
// batch one adapter each (and keep one in host memory) end up one adapter
// each, each read from disk once, whatever order the requests come in.
// The adapter's weight is raised above the load terms' sum: with the
// default (4), one scrape that catches a request between its arrival and
// the engine's next step (waiting 1) tips a request to the idle replica,
// trading an adapter load for balance, as it is meant to under load.
TEST(UpLora, AnAdapterGoesToTheReplicaThatRunsIt) {
  const std::string resources = models_yaml() + R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: tiny
  replicas: 2
  engine: {name: engine-sim, args: ["--time-scale", "1"]}
  lora: {adapters: [sql, poems], maxLoras: 1, maxCpuLoras: 1}
  routing: {scorers: {lora: 10}}
)";
  auto up = Up::start(resources);
  up->wait_ready("chat", 2);
  auto ask = [&](const std::string& model) {
    return up->post(
        "/v1/completions",
        json({{"model", model}, {"prompt", "hello"}, {"max_tokens", 3}, {"ignore_eos", true}})
            .dump());
  };
  // A long sql stream holds one replica's only adapter slot...
  std::atomic<bool> streaming{false};
  int sql_status = 0;
  std::thread long_sql([&] {
    auto r = http::fetch_streaming({.port = up->port(),
                                    .method = "POST",
                                    .target = "/v1/completions",
                                    .body = json({{"model", "sql"},
                                                  {"prompt", "hello"},
                                                  // Long enough to outlast the six
                                                  // requests below on a loaded machine.
                                                  {"max_tokens", 1500},
                                                  {"ignore_eos", true},
                                                  {"stream", true}})
                                                .dump(),
                                    .timeout_s = 60},
                                   [&](std::string_view data) {
                                     if (data.find("data: {") != std::string_view::npos)
                                       streaming = true;
                                     return true;
                                   });
    sql_status = r.ok() ? r->status : -1;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!streaming && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(streaming.load());
  // ...so poems goes to the other, and sql joins the stream's replica, in
  // either order, again and again.
  for (const std::string model : {"poems", "sql", "sql", "poems", "poems", "sql"}) {
    auto r = ask(model);
    EXPECT_EQ(r.status, 200) << model << ": " << r.body;
  }
  long_sql.join();
  EXPECT_EQ(sql_status, 200);
  const json replicas = json::parse(up->replicas_json());
  ASSERT_EQ(replicas["items"].size(), 2u);
  std::vector<double> served;
  for (const auto& replica : replicas["items"]) {
    const uint16_t port = replica["port"];
    EXPECT_EQ(scrape_metric(port, "loadstar_engine_sim_lora_loads_total"), 1) << replica.dump();
    served.push_back(
        scrape_metric(port, "vllm:request_success_total", "finished_reason=\"length\""));
  }
  std::sort(served.begin(), served.end());
  EXPECT_EQ(served, (std::vector<double>{3, 4}));  // poems x3; sql x3 and the stream
}

// spec.lora.loading: onDemand. Replicas start with no adapter; the gateway
// loads one into the replica a request for it goes to (vLLM's
// /v1/load_lora_adapter, which engine-sim takes when
// VLLM_ALLOW_RUNTIME_LORA_UPDATING is set, as the runtime does), once; and
// an adapter added to the list is served without restarting any replica.
TEST(UpLora, OnDemandAnAdapterIsLoadedWhereItIsAskedForAndAddedWithoutRestarts) {
  auto yaml = [&](const std::string& adapters) {
    return models_yaml() + fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  model: tiny
  replicas: 2
  engine: {{name: engine-sim, args: ["--time-scale", "10"]}}
  lora: {{adapters: [{}], loading: onDemand}}
)",
                                       adapters);
  };
  auto up = Up::start(yaml("sql"));
  up->wait_ready("chat", 2);
  auto ask = [&](const std::string& model) {
    return up->post("/v1/completions",
                    json({{"model", model}, {"prompt", "hello"}, {"max_tokens", 2}}).dump());
  };
  auto holders = [&](const std::string& adapter) {
    int n = 0;
    const json replicas = json::parse(up->replicas_json());
    for (const auto& replica : replicas["items"]) {
      auto models = http::fetch({.port = replica["port"].get<uint16_t>(), .target = "/v1/models"});
      if (models.ok() && models->body.find("\"" + adapter + "\"") != std::string::npos) ++n;
    }
    return n;
  };
  EXPECT_EQ(holders("sql"), 0);  // nothing at start
  for (int i = 0; i < 3; ++i) {
    auto r = ask("sql");
    ASSERT_EQ(r.status, 200) << r.body;
  }
  EXPECT_EQ(holders("sql"), 1);  // where it was asked for, and kept there
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_adapter_loads_total"), 1);
  EXPECT_EQ(ask("poems").status, 404);  // not in the list (yet)

  const json before = json::parse(up->replicas_json())["items"];
  const fs::path file = scratch_dir() / "lora-on-demand.yaml";
  std::ofstream(file) << yaml("sql, poems");
  std::string out;
  ASSERT_EQ(
      run_loadstar({"apply", "-f", file.string(), "--admin-port", std::to_string(up->admin_port())},
                   &out),
      0)
      << out;
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while ((status = ask("poems").status) == 404 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(status, 200);
  EXPECT_EQ(holders("poems"), 1);
  // The same replicas, never restarted.
  const json after = json::parse(up->replicas_json())["items"];
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i]["name"], before[i]["name"]);
    EXPECT_EQ(after[i]["pid"], before[i]["pid"]);
  }

  // An adapter the engine refuses (rank 64 over its --max-lora-rank 16,
  // unchecked at apply as the Model does not say its rank): 500 with the
  // gist, the engine's words in the gateway's log, and the replicas are not
  // blamed for it (no outlier ejection; the base model still answers).
  const fs::path big = synth_adapter("up-big", synth_model("lora-base", "16MiB"), 64);
  std::ofstream(file) << yaml("sql, poems, big")
                      << fmt::format(R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: big}}
spec: {{source: "file://{}", adapterOf: tiny}}
)",
                                     big.string());
  ASSERT_EQ(
      run_loadstar({"apply", "-f", file.string(), "--admin-port", std::to_string(up->admin_port())},
                   &out),
      0)
      << out;
  const auto again = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while ((status = ask("big").status) == 404 && std::chrono::steady_clock::now() < again)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(status, 500);
  for (int i = 0; i < 6; ++i) {
    auto r = ask("big");
    EXPECT_EQ(r.status, 500);
    EXPECT_NE(r.body.find("The adapter `big` could not be loaded"), std::string::npos) << r.body;
  }
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_outlier_ejections_total"), 0);
  EXPECT_GE(scrape_metric(up->port(), "loadstar_gateway_adapter_load_failures_total"), 1);
  EXPECT_EQ(ask("chat").status, 200);
}

}  // namespace
}  // namespace loadstar::testing
