// Multi-node replicas in Kubernetes mode (spec.multiNode, LeaderWorkerSet's
// shape) against the real API server, with engine-sim playing a model over
// two nodes: a replica's Pods are bound all in one rack or not at all, the
// leader serves through the gateways once its other Pod (told the leader's
// address) joined it, and a killed engine of the group ends every Pod of
// it, which the controller starts again as a whole; the Event says why.
// A controller that takes over keeps the group's Pods as they run.
#include <signal.h>

#include "kubernetes_fixture.h"

namespace loadstar::testing {
namespace {

TEST_F(KubernetesTest, AMultiNodeReplicasPodsRunInOneRackAndRestartAsAGroup) {
  add_node(1, 1, {"--label", "loadstar.dev/rack=r1"});
  add_node(2, 1, {"--label", "loadstar.dev/rack=r1"});
  add_node(3, 1, {"--label", "loadstar.dev/rack=r2"});
  start_controller("controller", {"--no-leader-elect"});
  wait_output("controller", "controller reconciling");
  const uint16_t gw = start_gateway("gateway-1");
  apply(model_yaml() + "---\n" + service_yaml(2) +
        "  engine: {name: engine-sim}\n  multiNode: {size: 2, topology: rack}\n");
  ASSERT_TRUE(eventually([&] { return chat(gw) == 200; }, 90))
      << read_text(processes_["controller"]->log);

  // One replica's two Pods share rack r1; the other replica has none (rack
  // r2 has one node) and its status says why.
  auto group = [&] {
    std::map<std::string, json> out;
    for (const json& pod : pods())
      if (!pod["metadata"].contains("deletionTimestamp"))
        out[pod["metadata"].value("name", "")] = pod;
    return out;
  };
  std::map<std::string, json> running = group();
  ASSERT_EQ(running.size(), 2u) << running.size();
  const std::string leader = running.begin()->first;
  const std::string member = leader + "-node1";
  ASSERT_TRUE(running.count(member)) << leader;
  const json& m = running[member];
  EXPECT_EQ(m["metadata"]["labels"]["app.kubernetes.io/component"], "engine-worker");
  std::set<std::string> nodes = {running[leader]["spec"].value("nodeName", ""),
                                 m["spec"].value("nodeName", "")};
  EXPECT_EQ(nodes, (std::set<std::string>{ns_ + "-n1", ns_ + "-n2"}));
  const json status = get_json("inferenceservice chat").value("status", json::object());
  const json replicas = status.value("replicaStatus", json::object());
  std::string pending;
  for (const auto& [name, r] : replicas.items())
    if (r.value("state", "") == "Pending") pending = r.value("message", "");
  EXPECT_NE(pending.find("rack"), std::string::npos) << status.dump();

  // Its other node's engine dies: the whole group goes and comes back.
  const std::string member_node = m["spec"].value("nodeName", "");
  const std::string member_uid = m["metadata"].value("uid", "");
  const std::string leader_uid = running[leader]["metadata"].value("uid", "");
  const pid_t pid = std::stoi(
      wait_output(member_node, "pod " + member + R"(: container engine started \(pid (\d+)\))"));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_TRUE(eventually(
      [&] {
        std::map<std::string, json> now = group();
        return now.count(leader) && now.count(member) &&
               now[leader]["metadata"].value("uid", "") != leader_uid &&
               now[member]["metadata"].value("uid", "") != member_uid;
      },
      60))
      << read_text(processes_["controller"]->log);
  EXPECT_TRUE(eventually([&] { return chat(gw) == 200; }, 60));
  auto [st, events] = kubectl("-n " + ns_ + " get events -o json");
  EXPECT_NE(
      events.find("multi-node group ended: node 1: pod " + member + " engine exited with code 137"),
      std::string::npos)
      << events;

  // A controller that takes over keeps the group as it runs: the same Pods.
  running = group();
  processes_["controller"]->process.signal(SIGKILL);
  start_controller("controller-b", {"--no-leader-elect"});
  wait_output("controller-b", "replica " + leader + ": running on .*; taken over");
  std::this_thread::sleep_for(3s);  // nothing is restarted or added afterwards
  const std::map<std::string, json> after = group();
  ASSERT_EQ(after.size(), 2u);
  for (const auto& [name, pod] : running)
    EXPECT_EQ(after.at(name)["metadata"]["uid"], pod["metadata"]["uid"]) << name << " recreated";
  EXPECT_EQ(chat(gw), 200);
}

}  // namespace
}  // namespace loadstar::testing
