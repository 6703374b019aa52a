// The scheduler inside `loadstar up`: replicas placed on declared nodes and
// devices, the unplaceable ones Pending with the reason, queue limits, and
// what `loadstar get replicas|queues` and /metrics show.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string node(int gpus) {
  return fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {{name: gpu-box}}
spec:
  cpu: 16
  memory: 64Gi
  gpus: [{{model: A100-80GB, memory: 80Gi, count: {}}}]
  topology: {{rack: r1}}
)",
                     gpus);
}

constexpr const char* kChat = R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: tiny}
spec: {source: "synth://tiny", size: 16Mi}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: tiny
  replicas: 3
  engine: {name: engine-sim, args: ["--time-scale", "10"]}
  resources: {cpu: 2, gpu: {count: 1, type: A100-80GB}}
)";

constexpr const char* kHalves = R"(apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: batch}
spec:
  deserved: {gpu: 0.5}
  limit: {gpu: 0.5}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: halves}
spec:
  model: tiny
  replicas: 2
  queue: batch
  engine: {name: engine-sim, args: ["--time-scale", "10"]}
  resources: {gpu: {fraction: 0.5}}
)";

json replicas(Up& up) {
  return json::parse(up.replicas_json())["items"];
}

json replica(Up& up, const std::string& name) {
  for (const auto& r : replicas(up))
    if (r["name"] == name) return r;
  return json();
}

// Waits until replica `name` has `state` (or 30 s pass); returns it.
json wait_state(Up& up, const std::string& name, const std::string& state) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  json r;
  while (std::chrono::steady_clock::now() < deadline) {
    r = replica(up, name);
    if (r.is_object() && r["state"] == state) return r;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return r;
}

TEST(Scheduling, PlacesReplicasOnDeclaredGpusAndSaysWhyOneCannotRun) {
  auto up = Up::start(node(2) + "---\n" + kChat);
  const std::string admin = std::to_string(up->admin_port());
  up->wait_ready("chat", 2);
  json pending = wait_state(*up, "chat-2", "Pending");
  ASSERT_TRUE(pending.is_object()) << up->replicas_json();
  EXPECT_EQ(pending["state"], "Pending");
  EXPECT_EQ(pending["message"], "fits on no node: 0/1 nodes are available: 1 insufficient GPU");
  EXPECT_EQ(pending["node"], "");
  std::set<std::string> devices;
  for (const char* name : {"chat-0", "chat-1"}) {
    json r = replica(*up, name);
    EXPECT_EQ(r["node"], "gpu-box");
    devices.insert(r["devices"].get<std::string>());
  }
  EXPECT_EQ(devices, (std::set<std::string>{"gpu0", "gpu1"}));  // no card booked twice

  std::string out;
  ASSERT_EQ(run_loadstar({"get", "replicas", "--admin-port", admin}, &out), 0) << out;
  EXPECT_NE(out.find("gpu-box"), std::string::npos) << out;
  EXPECT_NE(out.find("insufficient GPU"), std::string::npos) << out;
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_scheduler_gpus_allocated"), 2);
  EXPECT_EQ(
      scrape_metric(up->port(), "loadstar_scheduler_queue_pending_workloads", "queue=\"default\""),
      1);

  // More cards, and a queue whose limit admits one half-card replica of two.
  // The running replicas keep their cards and their engines.
  const int pid0 = replica(*up, "chat-0")["pid"], pid1 = replica(*up, "chat-1")["pid"];
  const fs::path file = scratch_dir() / "grow.yaml";
  std::ofstream(file) << node(4) << "---\n" << kHalves;
  ASSERT_EQ(run_loadstar({"apply", "-f", file.string(), "--admin-port", admin}, &out), 0) << out;
  EXPECT_EQ(wait_state(*up, "chat-2", "Ready")["node"], "gpu-box");
  EXPECT_EQ(replica(*up, "chat-0")["pid"], pid0);
  EXPECT_EQ(replica(*up, "chat-1")["pid"], pid1);
  std::set<std::string> after;
  for (const char* name : {"chat-0", "chat-1", "chat-2"})
    after.insert(replica(*up, name)["devices"].get<std::string>());
  EXPECT_EQ(after.size(), 3u);  // still no card booked twice
  EXPECT_TRUE(after.count("gpu0") && after.count("gpu1")) << up->replicas_json();
  json half = wait_state(*up, "halves-0", "Ready");
  EXPECT_NE(half["devices"].get<std::string>().find(":500m"), std::string::npos) << half;
  json limited = wait_state(*up, "halves-1", "Pending");
  EXPECT_NE(limited["message"].get<std::string>().find("queue 'batch' would exceed its limit"),
            std::string::npos)
      << limited;
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_scheduler_gpus_allocated"), 3.5);
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_scheduler_queue_allocated_gpus", "queue=\"batch\""),
            0.5);
  ASSERT_EQ(run_loadstar({"get", "queues", "--admin-port", admin}, &out), 0) << out;
  EXPECT_NE(out.find("batch"), std::string::npos) << out;
  EXPECT_NE(out.find("default"), std::string::npos) << out;
  // GPU-seconds accrue per queue and per tenant (the queue, by default).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_GT(scrape_metric(up->port(), "loadstar_scheduler_tenant_gpu_seconds_total",
                          "tenant=\"default\""),
            0);
  // Fewer cards: replicas on the cards that are gone stop and wait; the
  // one on gpu0 keeps running; the GPU-seconds counters carry over.
  const double seconds_before = scrape_metric(
      up->port(), "loadstar_scheduler_tenant_gpu_seconds_total", "tenant=\"default\"");
  std::string on_gpu0;
  for (const char* name : {"chat-0", "chat-1", "chat-2"})
    if (replica(*up, name)["devices"] == "gpu0") on_gpu0 = name;
  ASSERT_FALSE(on_gpu0.empty());
  const int pid_gpu0 = replica(*up, on_gpu0)["pid"];
  std::ofstream(file) << node(1);
  ASSERT_EQ(run_loadstar({"apply", "-f", file.string(), "--admin-port", admin}, &out), 0) << out;
  for (const std::string name : {"chat-0", "chat-1", "chat-2"}) {
    if (name == on_gpu0) continue;
    json r = wait_state(*up, name, "Pending");
    EXPECT_EQ(r["pid"], 0) << r;
    EXPECT_EQ(r["node"], "") << r;
  }
  EXPECT_EQ(replica(*up, on_gpu0)["pid"], pid_gpu0);
  EXPECT_EQ(replica(*up, on_gpu0)["state"], "Ready");
  EXPECT_GE(scrape_metric(up->port(), "loadstar_scheduler_tenant_gpu_seconds_total",
                          "tenant=\"default\""),
            seconds_before);
  auto [rc, promtool] = run_shell(
      fmt::format("curl -s http://127.0.0.1:{}/metrics | promtool check metrics 2>&1", up->port()));
  EXPECT_EQ(rc, 0) << promtool;
}

TEST(Scheduling, RejectsAServiceNamingAMissingQueue) {
  const fs::path file = scratch_dir() / "bad-queue.yaml";
  std::string text = kChat;
  text += "  queue: research\n";
  std::ofstream(file) << text;
  std::string out;
  EXPECT_EQ(run_loadstar({"up", "-f", file.string(), "--port", "0", "--admin-port", "0",
                          "--data-dir", (scratch_dir() / "bad-queue").string()},
                         &out),
            2);
  EXPECT_NE(out.find("InferenceService 'chat': spec.queue: no Queue named 'research'"),
            std::string::npos)
      << out;
}

}  // namespace
}  // namespace loadstar::testing
