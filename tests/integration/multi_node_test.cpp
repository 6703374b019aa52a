// Multi-node replicas inside `loadstar up` (spec.multiNode, the
// LeaderWorkerSet shape) with engine-sim playing a model spread over two
// nodes: a replica is placed in one rack or not at all, its leader serves
// once its other node joined, and a killed node ends the group, which is
// restarted as a whole.
#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;

std::string node(const std::string& name, const std::string& rack) {
  return fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {{name: {}}}
spec:
  cpu: 16
  memory: 64Gi
  gpus: [{{model: H100-80GB, memory: 80Gi, count: 1}}]
  topology: {{rack: {}}}
---
)",
                     name, rack);
}

json replica(Up& up, const std::string& name) {
  const json doc = json::parse(up.replicas_json());
  for (const auto& r : doc["items"])
    if (r["name"] == name) return r;
  return json::object();
}

int chat(Up& up) {
  return up
      .post("/v1/chat/completions",
            R"({"model":"big","messages":[{"role":"user","content":"hi"}],"max_tokens":4})")
      .status;
}

TEST(MultiNode, AReplicaIsPlacedInOneRackOrNotAtAllAndRestartedAsAGroupWhenANodeDies) {
  auto up = Up::start(node("n1", "r1") + node("n2", "r1") + node("n3", "r2") +
                      R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: tiny}
spec: {source: "synth://tiny", size: 16Mi}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: big}
spec:
  model: tiny
  replicas: 2
  engine: {name: engine-sim, args: ["--time-scale", "10"]}
  resources: {gpu: {count: 1}}
  multiNode: {size: 2, topology: rack}
)");
  up->wait_ready("big", 1);
  // Rack r1 holds one replica's two nodes; r2 has one node: the second
  // replica waits, none of its nodes started.
  const json first = replica(*up, "big-0").empty() ? replica(*up, "big-1") : replica(*up, "big-0");
  EXPECT_EQ(first.value("node", ""), "n1") << up->replicas_json();
  const std::string waiting = first["name"] == "big-0" ? "big-1" : "big-0";
  const json second = replica(*up, waiting);
  EXPECT_EQ(second.value("state", ""), "Pending") << up->replicas_json();
  EXPECT_NE(second.value("message", "").find("rack"), std::string::npos) << second.dump();
  EXPECT_EQ(chat(*up), 200);

  // Its second node, as the runtime started it.
  const std::string name = first["name"];
  std::smatch m;
  const std::string log = up->log();
  ASSERT_TRUE(std::regex_search(
      log, m, std::regex("replica " + name + ": node 1 started \\(pid (\\d+)\\)")))
      << log;
  const pid_t node1 = std::stoi(m[1]);
  ASSERT_EQ(::kill(node1, SIGKILL), 0);

  // The group ends and starts again as a whole.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  json r = replica(*up, name);
  while (r.value("restarts", 0) < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    r = replica(*up, name);
  }
  EXPECT_EQ(r.value("restarts", 0), 1) << r.dump();
  up->wait_ready("big", 1);
  EXPECT_EQ(chat(*up), 200);
  std::string events;
  ASSERT_EQ(run_loadstar({"events", "--admin-port", std::to_string(up->admin_port())}, &events), 0);
  EXPECT_NE(events.find("multi-node group ended: node 1 exited with status 137"), std::string::npos)
      << events;
  const std::string after = up->log();
  const std::regex started("replica " + name + ": node 1 started");
  EXPECT_EQ(std::distance(std::sregex_iterator(after.begin(), after.end(), started),
                          std::sregex_iterator()),
            2)
      << after;
}

}  // namespace
}  // namespace loadstar::testing
