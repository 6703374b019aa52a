// Rollouts in Kubernetes mode: replica Pods carry their revision, the
// history lives in ControllerRevisions, a rollout survives the controller's
// death, and undo writes the old spec back into the InferenceService.
#include "kubernetes_fixture.h"

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <thread>

namespace loadstar::testing {
namespace {

class KubernetesRolloutTest : public KubernetesTest {
 protected:
  static std::string rolling_service(const std::string& args) {
    return service_yaml(2) + "  rollout: {maxSurge: 1, maxUnavailable: 0}\n" +
           "  engine: {name: engine-sim, args: [" + args + "]}\n";
  }
  // The revision label of every Pod neither draining nor being deleted
  // (draining ones count against no bound, as a Deployment's terminating
  // Pods; their GPUs stay booked until they end).
  std::map<std::string, std::string> revisions() {
    std::map<std::string, std::string> out;
    for (const auto& pod : pods())
      if (!pod["metadata"].contains("deletionTimestamp") &&
          !pod["metadata"].value("annotations", json::object()).contains("loadstar.dev/draining"))
        out[pod["metadata"]["name"]] =
            pod["metadata"].value("labels", json::object()).value("loadstar.dev/revision", "");
    return out;
  }
  // The ControllerRevisions of chat: hash -> number.
  std::map<std::string, int> history() {
    std::map<std::string, int> out;
    const json list = get_json("controllerrevisions -l loadstar.dev/service=chat");
    for (const auto& item : list.value("items", json::array()))
      out[item["metadata"]["labels"].value("loadstar.dev/revision", "")] =
          item.value("revision", 0);
    return out;
  }
  static bool all_at(const std::map<std::string, std::string>& pods, const std::string& hash,
                     size_t count) {
    if (pods.size() != count) return false;
    for (const auto& [name, revision] : pods)
      if (revision != hash) return false;
    return true;
  }
};

TEST_F(KubernetesRolloutTest, ARolloutGoesOnAcrossAControllerRestartAndUndoWritesTheSpecBack) {
  add_node(1, 4);
  start_controller("controller-a", {"--no-leader-elect"});
  apply(model_yaml() + "---\n" + rolling_service(""));
  ASSERT_TRUE(eventually([&] { return ready_pods() == 2; }, 90));
  ASSERT_TRUE(eventually([&] { return history().size() == 1; }, 10));
  const std::string first = history().begin()->first;
  EXPECT_TRUE(all_at(revisions(), first, 2));

  apply(rolling_service(R"("--seed", "2")"));
  // As soon as a Pod of the new revision exists, the controller dies.
  std::string second;
  ASSERT_TRUE(eventually([&] {
    for (const auto& [name, revision] : revisions())
      if (revision != first) second = revision;
    return !second.empty();
  }));
  processes_["controller-a"]->process.signal(SIGKILL);
  EXPECT_EQ(history()[second], 2);
  start_controller("controller-b", {"--no-leader-elect"});
  size_t most = 0;
  ASSERT_TRUE(eventually(
      [&] {
        const auto now = revisions();
        most = std::max(most, now.size());
        return all_at(now, second, 2) && ready_pods() == 2;
      },
      120))
      << read_text(processes_["controller-b"]->log);
  EXPECT_LE(most, 3u);  // maxSurge 1, across both controllers
  EXPECT_TRUE(eventually([&] {
    return get_json("inferenceservice chat")
               .value("status", json::object())
               .value("rollout", "")
               .find("revision 2 rolled out") != std::string::npos;
  }));

  // Undo through the admin API, as `loadstar rollout undo` does it.
  const uint16_t admin = static_cast<uint16_t>(
      std::stoi(wait_output("controller-b", R"(admin API on http://127\.0\.0\.1:(\d+))")));
  auto undone = http::fetch({.port = admin,
                             .method = "POST",
                             .target = "/api/v1/services/chat/undo",
                             .body = "{}",
                             .headers = {{"Authorization", "Bearer " + read_text(token_file())}},
                             .timeout_s = 10});
  ASSERT_TRUE(undone.ok());
  ASSERT_EQ(undone->status, 200) << undone->body;
  EXPECT_TRUE(get_json("inferenceservice chat")["spec"]["engine"]["args"].empty());
  ASSERT_TRUE(eventually([&] { return all_at(revisions(), first, 2) && ready_pods() == 2; }, 120))
      << read_text(processes_["controller-b"]->log);
  // The first revision came back as the third, in its own ControllerRevision.
  EXPECT_EQ(history(), (std::map<std::string, int>{{first, 3}, {second, 2}}));
}

// A canary through a gateway Pod: the controller marks the canary's Pod with
// its share, the gateway splits by it and reports the canary's failures,
// the controller rolls it back, and a new controller leaves it rolled back.
TEST_F(KubernetesRolloutTest, AFailingCanaryIsRolledBackThroughTheGatewaysViewAndStaysSo) {
  add_node(1, 4);
  start_controller("controller-a", {"--no-leader-elect"});
  const std::string gateway_ip = gateway_pod(1);
  ASSERT_FALSE(gateway_ip.empty());
  const std::string canary =
      "  rollout:\n    canary:\n      steps: [{weight: 50, pause: 30s}]\n"
      "      analysis: {minRequests: 6, maxTtftP99Ratio: 0, maxItlP99Ratio: 0}\n";
  apply(model_yaml() + "---\n" + service_yaml(2) + canary);
  ASSERT_TRUE(eventually([&] { return ready_pods() == 2; }, 90));
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0}, failed{0};
  std::thread client([&] {
    while (!stop) {
      auto r = chat_request(gateway_ip, 8080, 10);
      ++sent;
      if (!r.ok() || r->status != 200) ++failed;
      std::this_thread::sleep_for(20ms);
    }
  });
  // The canary's share is on its Pod only for as long as the step runs
  // (here about a second): a watch sees every change, polling might not.
  const std::string kubectl_bin = run_shell("command -v kubectl").second;
  spawn(
      "pod-watch",
      {kubectl_bin.substr(0, kubectl_bin.find('\n')), "-n", ns_, "get", "pods", "-l",
       "app.kubernetes.io/managed-by=loadstar", "--watch", "-o",
       R"(jsonpath={.metadata.name} weight={.metadata.annotations.loadstar\.dev/canary-weight}{"\n"})"});
  apply(service_yaml(2) + canary +
        "  engine: {name: engine-sim, args: [--fault-error-rate, \"1\"]}\n");
  std::string message;
  ASSERT_TRUE(eventually(
      [&] {
        message =
            get_json("inferenceservice chat").value("status", json::object()).value("rollout", "");
        return message.find("rolled back") != std::string::npos;
      },
      90))
      << message << read_text(processes_["controller-a"]->log);
  // The gateways were told the canary's share.
  EXPECT_NE(read_text(processes_["pod-watch"]->log).find(" weight=50\n"), std::string::npos)
      << read_text(processes_["pod-watch"]->log);
  EXPECT_NE(message.find("100.0% of the canary's requests failed"), std::string::npos) << message;
  ASSERT_TRUE(eventually([&] { return pods().size() == 2; }, 60));
  // The outcome is kept with the revision: a new controller does not retry it.
  const json revisions = get_json("controllerrevisions -l loadstar.dev/service=chat");
  std::string states;
  for (const auto& item : revisions["items"])
    states += item["metadata"]
                  .value("annotations", json::object())
                  .value("loadstar.dev/rollout-state", "");
  EXPECT_NE(states.find("aborted"), std::string::npos) << revisions.dump(2);
  // ...and said as a Kubernetes Event on the service.
  std::string reasons;
  const json events = get_json("events --field-selector involvedObject.name=chat");
  for (const auto& e : events.value("items", json::array())) reasons += e.value("reason", "") + " ";
  EXPECT_NE(reasons.find("CanaryStarted"), std::string::npos) << reasons;
  EXPECT_NE(reasons.find("CanaryRolledBack"), std::string::npos) << reasons;
  processes_["controller-a"]->process.signal(SIGKILL);
  start_controller("controller-b", {"--no-leader-elect"});
  wait_output("controller-b", "controller reconciling");
  std::this_thread::sleep_for(4s);
  EXPECT_EQ(pods().size(), 2u);
  EXPECT_NE(get_json("inferenceservice chat")
                .value("status", json::object())
                .value("rollout", "")
                .find("rolled back"),
            std::string::npos);
  stop = true;
  client.join();
  std::printf("requests through the gateway: %d sent, %d failed\n", sent.load(), failed.load());
  EXPECT_GT(sent, 10);
  // The gateway retried the canary's failures on the stable replica (within
  // its retry budget): at most about the requests the canary got.
  EXPECT_LE(failed, 12);
}

}  // namespace
}  // namespace loadstar::testing
