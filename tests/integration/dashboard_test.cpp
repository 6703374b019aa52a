// What `loadstar up` shows people: the dashboard's page and the JSON it
// reads (the GPU map, each service's traffic, tenants), and the usage
// ledger, counted from the gateway's load reports and kept across a
// restart. (tests/js/dashboard.test.mjs drives the page in Chromium.)
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;

constexpr const char* kKey = "sk-test-dashboard-key-0001";

// `service_spec`: more of the chat service's spec.
std::string with_tenant(const std::string& service_spec = "") {
  return quickstart(2) + service_spec + R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  apiKeys: [{name: ci, sha256: 11b36e2dd85361c896eeac2803a51c87cf319591c8752ffeed50a5951d7b46a1}]
  limits: {requestsPerMinute: 600}
)";
}

json get(Up& up, const std::string& target) {
  auto r = http::fetch({.port = up.admin_port(), .target = target, .timeout_s = 5});
  if (!r.ok() || r->status != 200) return json();
  return json::parse(r->body, nullptr, false);
}

void chat(Up& up, int n) {
  for (int i = 0; i < n; ++i) {
    auto r = up.post("/v1/chat/completions",
                     R"({"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 4})",
                     {{"Authorization", std::string("Bearer ") + kKey}});
    ASSERT_EQ(r.status, 200) << r.body;
  }
}

// The ledger's CSV once it shows `requests` for team-a (or what it shows
// at the deadline).
std::string usage_csv_at(Up& up, int requests) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  const std::string want = ",team-a,chat," + std::to_string(requests) + ",";
  while (std::chrono::steady_clock::now() < deadline) {
    run_loadstar({"usage", "-o", "csv", "--admin-port", std::to_string(up.admin_port())}, &out);
    if (out.find(want) != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return out;
}

TEST(Dashboard, ThePageIsServedWithoutDataAndTheGpuMapMatchesTheReplicas) {
  // Two replicas of half a card each, on a node of two cards.
  auto up = Up::start(with_tenant("  resources: {gpu: {fraction: 0.5}}\n") + R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {name: box}
spec:
  cpu: 8
  memory: 32Gi
  gpus: [{model: L4, memory: 24Gi, count: 2}]
)");
  up->wait_ready("chat", 2);
  auto page = http::fetch({.port = up->admin_port(), .target = "/", .timeout_s = 5});
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("/dashboard/dashboard.js"), std::string::npos);
  EXPECT_NE(page->header("content-security-policy").find("script-src 'self'"), std::string::npos);
  EXPECT_EQ(page->header("x-frame-options"), "DENY");
  auto script = http::fetch({.port = up->admin_port(), .target = "/dashboard/dashboard.js"});
  ASSERT_TRUE(script.ok());
  EXPECT_EQ(script->status, 200);
  EXPECT_NE(script->header("content-type").find("text/javascript"), std::string::npos);
  auto missing = http::fetch({.port = up->admin_port(), .target = "/dashboard/nope.js"});
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 404);

  // Every replica's devices are booked to it on its node's cards.
  const json replicas = json::parse(up->replicas_json());
  const json nodes = get(*up, "/api/v1/nodes");
  ASSERT_TRUE(nodes.contains("items")) << nodes.dump();
  std::map<std::string, std::string> booked;  // replica -> node/gpuN:MILLIm
  for (const json& n : nodes["items"])
    for (const json& d : n["devices"])
      for (const json& h : d["holders"])
        booked[h["name"].get<std::string>()] =
            fmt::format("{}/gpu{}:{}m", n["name"].get<std::string>(), d["index"].get<int>(),
                        h["milli"].get<int>());
  ASSERT_EQ(replicas["items"].size(), 2u);
  for (const json& r : replicas["items"])
    EXPECT_EQ(booked[r["name"].get<std::string>()],
              r["node"].get<std::string>() + "/" + r["devices"].get<std::string>())
        << nodes.dump();

  // Traffic as the gateway measured it.
  chat(*up, 6);
  json traffic;
  for (int i = 0; i < 50; ++i) {
    traffic = get(*up, "/api/v1/services")["items"][0]["traffic"];
    if (traffic.value("requests_per_second", 0.0) > 0 && traffic["ttft_p50_seconds"].is_number())
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_GT(traffic.value("requests_per_second", 0.0), 0) << traffic.dump();
  EXPECT_TRUE(traffic["ttft_p50_seconds"].is_number()) << traffic.dump();
  EXPECT_EQ(traffic.value("failures_per_second", -1.0), 0) << traffic.dump();
  // ...and per revision (a canary's against the stable one's).
  const json revision = get(*up, "/api/v1/services")["items"][0]["rollout"]["revisions"][0];
  EXPECT_EQ(revision["revision"], 1) << revision.dump();
  EXPECT_GT(revision["traffic"].value("requests_per_second", 0.0), 0) << revision.dump();
  // The same through `loadstar get -o wide`, as kubectl's wide output.
  const std::string port = std::to_string(up->admin_port());
  std::string out;
  ASSERT_EQ(run_loadstar({"get", "services", "-o", "wide", "--admin-port", port}, &out), 0) << out;
  EXPECT_NE(out.find("TTFT-P90"), std::string::npos) << out;
  EXPECT_NE(out.find("revision 1 rolled out"), std::string::npos) << out;
  ASSERT_EQ(run_loadstar({"get", "replicas", "-o", "wide", "--admin-port", port}, &out), 0) << out;
  EXPECT_NE(out.find("gpu0:500m"), std::string::npos) << out;
  EXPECT_NE(out.find("queued +"), std::string::npos) << out;
  EXPECT_NE(out.find("ready +"), std::string::npos) << out;
  // describe for what is declared: the spec as applied, and what is live.
  ASSERT_EQ(run_loadstar({"describe", "node", "box", "--admin-port", port}, &out), 0) << out;
  EXPECT_NE(out.find("count: 2"), std::string::npos) << out;
  EXPECT_NE(out.find("chat-0 (0.5)"), std::string::npos) << out;
  ASSERT_EQ(run_loadstar({"describe", "model", "tiny", "--admin-port", port}, &out), 0) << out;
  EXPECT_NE(out.find("Served by:     chat (2 ready)"), std::string::npos) << out;
  ASSERT_EQ(run_loadstar({"describe", "queue", "default", "--admin-port", port}, &out), 0) << out;
  EXPECT_NE(out.find("1 allocated"), std::string::npos) << out;  // two halves
  EXPECT_EQ(run_loadstar({"describe", "route", "nope", "--admin-port", port}, &out), 1);
  EXPECT_NE(out.find("no route named 'nope'"), std::string::npos) << out;
}

TEST(Dashboard, TheUsageLedgerCountsEachTenantsRequestsAndKeepsThemAcrossARestart) {
  const auto dir = scratch_dir() / "usage-up";
  {
    auto up = Up::start(with_tenant(), {}, dir);
    up->wait_ready("chat", 2);
    chat(*up, 5);
    const std::string csv = usage_csv_at(*up, 5);
    EXPECT_NE(csv.find("hour,tenant,model,requests,errors,prompt_tokens,completion_tokens,cost"),
              std::string::npos)
        << csv;
    EXPECT_NE(csv.find(",team-a,chat,5,0,"), std::string::npos) << csv;
    const json tenants = get(*up, "/api/v1/tenants");
    bool found = false;
    for (const json& t : tenants.value("items", json::array()))
      if (t["name"] == "team-a") {
        found = true;
        EXPECT_EQ(t["requests"], 5) << t.dump();
        EXPECT_GT(t["prompt_tokens"].get<int>(), 0) << t.dump();
        EXPECT_EQ(t["requests_per_minute"], 600) << t.dump();
      }
    EXPECT_TRUE(found) << tenants.dump();
    // A bad range is the caller's error, named.
    auto bad = http::fetch({.port = up->admin_port(), .target = "/api/v1/usage?from=yesterday"});
    ASSERT_TRUE(bad.ok());
    EXPECT_EQ(bad->status, 400);
    EXPECT_NE(bad->body.find("from: 'yesterday' is not a time"), std::string::npos) << bad->body;
  }
  // A new `up` (a new gateway, counters from zero) goes on from the ledger.
  auto up = Up::start(with_tenant(), {}, dir);
  up->wait_ready("chat", 2);
  EXPECT_NE(usage_csv_at(*up, 5).find(",team-a,chat,5,0,"), std::string::npos);
  chat(*up, 2);
  const std::string csv = usage_csv_at(*up, 7);
  EXPECT_NE(csv.find(",team-a,chat,7,0,"), std::string::npos) << csv;
  std::string table;
  ASSERT_EQ(run_loadstar({"usage", "--admin-port", std::to_string(up->admin_port())}, &table), 0);
  EXPECT_NE(table.find("team-a"), std::string::npos) << table;
}

}  // namespace
}  // namespace loadstar::testing
