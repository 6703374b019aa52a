// Jobs in Kubernetes mode against the real API server: a gang's workers run
// as Pods the controller binds where its scheduler put them (restartPolicy
// Never, owned by the Job), the followers told the leader's Pod IP; the
// Job's status says how it ended, a failed worker's own last log lines
// included. `kubectl get jobs` stays batch/v1's; `lsjobs` are these.
#include "kubernetes_fixture.h"

namespace loadstar::testing {
namespace {

TEST_F(KubernetesTest, AJobsGangRunsAsBoundPodsAndItsStatusSaysHowItEnded) {
  add_node(1, 2);
  start_controller("controller");
  wait_output("controller", "controller reconciling");
  const fs::path out = root_ / "job-out";
  fs::create_directories(out);
  apply(fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: Job
metadata: {{name: pair}}
spec:
  image: registry.example/trainer:1
  command: [sh, -c, 'echo "$LOADSTAR_WORKER_INDEX $LOADSTAR_LEADER_ADDRESS $POD_IP $CUDA_VISIBLE_DEVICES" > {}/w$LOADSTAR_WORKER_INDEX; echo "step 7" > $LOADSTAR_CHECKPOINT_DIR/w$LOADSTAR_WORKER_INDEX']
  workers: 2
  resources: {{gpu: {{count: 1}}}}
  checkpoint: {{hostPath: /var/lib/checkpoints}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Job
metadata: {{name: broken}}
spec:
  image: registry.example/trainer:1
  command: [sh, -c, 'echo step 1; echo "RuntimeError: NCCL timeout after 1800s" >&2; exit 1']
  backoffLimit: 0
---
apiVersion: loadstar.dev/v1alpha1
kind: Job
metadata: {{name: no-image}}
spec:
  command: [sh, -c, 'true']
  backoffLimit: 0
)",
                    out.string()));
  auto phase = [&](const std::string& job) {
    return get_json("lsjob " + job).value("status", json::object()).value("phase", "");
  };
  ASSERT_TRUE(eventually([&] { return phase("pair") == "Succeeded"; }, 60))
      << get_json("lsjob pair").dump() << read_text(processes_["controller"]->log);
  // The leader's address is its own Pod IP; the follower got it.
  std::istringstream w0(read_text(out / "w0")), w1(read_text(out / "w1"));
  std::string index0, leader0, ip0, cards0, index1, leader1, ip1, cards1;
  w0 >> index0 >> leader0 >> ip0 >> cards0;
  w1 >> index1 >> leader1 >> ip1 >> cards1;
  EXPECT_EQ(index0, "0");
  EXPECT_EQ(index1, "1");
  EXPECT_FALSE(ip0.empty());
  EXPECT_EQ(leader0, ip0);
  EXPECT_EQ(leader1, ip0);
  EXPECT_NE(ip1, ip0);
  EXPECT_NE(cards0, cards1);  // one card each
  // Their checkpoints on the node's directory, in the job's own.
  const fs::path checkpoints = root_ / (ns_ + "-n1") / "var/lib/checkpoints/pair";
  EXPECT_EQ(read_text(checkpoints / "w0"), "step 7\n");
  EXPECT_EQ(read_text(checkpoints / "w1"), "step 7\n");

  ASSERT_TRUE(eventually([&] { return phase("broken") == "Failed"; }, 60))
      << get_json("lsjob broken").dump();
  const std::string message = get_json("lsjob broken")["status"].value("message", "");
  EXPECT_NE(message.find("RuntimeError: NCCL timeout after 1800s"), std::string::npos) << message;
  ASSERT_TRUE(eventually([&] { return phase("no-image") == "Failed"; }, 30));
  EXPECT_NE(get_json("lsjob no-image")["status"].value("message", "").find("spec.image: required"),
            std::string::npos);

  // Ended workers' Pods are gone; batch/v1's `kubectl get jobs` lists none of these.
  EXPECT_TRUE(
      eventually([&] { return get_json("pods -l loadstar.dev/job=pair")["items"].empty(); }, 30));
  auto [status, batch] = kubectl("-n " + ns_ + " get jobs -o name");
  EXPECT_EQ(status, 0) << batch;
  EXPECT_EQ(batch.find("pair"), std::string::npos) << batch;
}

// A controller that takes over (the first killed) keeps a running job's
// worker Pods: they finish the attempt they were on, once each, and the
// job succeeds on that attempt.
TEST_F(KubernetesTest, AControllerThatTakesOverKeepsAJobsRunningWorkers) {
  add_node(1, 2);
  start_controller("controller-a", {"--no-leader-elect"});
  wait_output("controller-a", "controller reconciling");
  const fs::path out = root_ / "job-out";
  fs::create_directories(out);
  apply(fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: Job
metadata: {{name: long}}
spec:
  image: registry.example/trainer:1
  command: [sh, -c, 'echo "$LOADSTAR_WORKER_INDEX" >> {0}/started; sleep 6; echo "$LOADSTAR_WORKER_INDEX" >> {0}/finished']
  workers: 2
  resources: {{gpu: {{count: 1}}}}
)",
                    out.string()));
  auto running_uids = [&] {
    std::map<std::string, std::string> uids;
    const json list = get_json("pods -l loadstar.dev/job=long");
    for (const json& p : list.value("items", json::array()))
      if (p["status"].value("phase", "") == "Running")
        uids[p["metadata"]["name"]] = p["metadata"]["uid"];
    return uids;
  };
  ASSERT_TRUE(eventually([&] { return running_uids().size() == 2; }, 60))
      << read_text(processes_["controller-a"]->log);
  const auto before = running_uids();
  processes_["controller-a"]->process.signal(SIGKILL);
  start_controller("controller-b", {"--no-leader-elect"});
  wait_output("controller-b", "controller reconciling");
  ASSERT_TRUE(eventually(
      [&] {
        return get_json("lsjob long").value("status", json::object()).value("phase", "") ==
               "Succeeded";
      },
      60))
      << get_json("lsjob long").dump() << read_text(processes_["controller-b"]->log);
  // Each worker started once and finished: nothing was stopped or run again.
  EXPECT_EQ(read_text(out / "started").size(), 4u) << read_text(out / "started");
  EXPECT_EQ(read_text(out / "finished").size(), 4u) << read_text(out / "finished");
  EXPECT_EQ(get_json("lsjob long")["status"].value("attempts", 0), 1);
  EXPECT_EQ(before.size(), 2u);
  auto [st, events] = kubectl("-n " + ns_ + " get events -o json");
  EXPECT_NE(events.find("taken over"), std::string::npos) << events;
}

}  // namespace
}  // namespace loadstar::testing
