// batch/v1 Jobs admitted through Loadstar's queues: what a Job asks of the
// scheduler (admitted_workload), and the controller's side of admission
// with a fake source: a gang placed all or none in its queue, the
// scheduler's reason for one that waits, and the place given back when the
// workload ends.
#include "controller/batch_admission.h"
#include "controller_fakes.h"

namespace loadstar::controller {
namespace {

using namespace fakes;
using kube::json;

json batch_job(const std::string& extra_spec, const std::string& labels = "",
               const std::string& template_spec = "\"schedulerName\":\"loadstar\",") {
  return json::parse(
      R"({"metadata":{"name":"train","namespace":"ns","labels":{"loadstar.dev/queue":"research")" +
      labels + R"(}},"spec":{)" + extra_spec + R"("template":{"spec":{)" + template_spec +
      R"("containers":[{"name":"a","resources":{"limits":{"nvidia.com/gpu":"2"},"requests":{"cpu":"500m","memory":"1Gi"}}},)"
      R"({"name":"b","resources":{"requests":{"cpu":1}}}]}}}})");
}

TEST(BatchAdmission, AJobAsksForItsParallelismAsAGangOfItsPodTemplatesResources) {
  auto w = admitted_workload(batch_job(R"("parallelism":3,)", R"(,"loadstar.dev/priority":"5")"),
                             "job.batch/train");
  ASSERT_TRUE(w.ok()) << w.error().message;
  EXPECT_EQ(w->metadata.name, "job.batch/train");
  EXPECT_EQ(w->spec.queue, "research");
  EXPECT_EQ(w->spec.priority, 5);
  EXPECT_EQ(w->spec.workers, 3u);
  EXPECT_EQ(w->spec.gpu.count, 2u);
  EXPECT_DOUBLE_EQ(w->spec.cpu, 1.5);  // both containers
  EXPECT_EQ(w->spec.memory_bytes, 1ull << 30);
  EXPECT_FALSE(w->spec.preemptible);
  // Without parallelism: one pod.
  EXPECT_EQ(admitted_workload(batch_job(""), "j")->spec.workers, 1u);
  // Held by suspend alone (Kubernetes >= 1.21), no schedulerName needed.
  EXPECT_TRUE(admitted_workload(batch_job(R"("suspend":true,)", "", ""), "j").ok());
}

TEST(BatchAdmission, AJobThatCannotBeHeldOrReadSaysWhy) {
  auto error = [](const json& job) {
    auto w = admitted_workload(job, "j");
    return w.ok() ? std::string("admitted") : w.error().message;
  };
  EXPECT_NE(error(batch_job("", "", ""))
                .find("not held: set spec.template.spec.schedulerName: "
                      "loadstar"),
            std::string::npos);
  EXPECT_NE(error(batch_job("", R"(,"loadstar.dev/priority":"high")"))
                .find("metadata.labels.loadstar.dev/priority: 'high' is not an integer"),
            std::string::npos);
  EXPECT_NE(error(batch_job(R"("parallelism":0,)")).find("spec.parallelism: 0"), std::string::npos);
  json bad = batch_job("");
  bad["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1.5";
  EXPECT_NE(error(bad).find("nvidia.com/gpu: 1.5 is not a whole number"), std::string::npos);
  bad["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "x";
  EXPECT_NE(error(bad).find("a quantity that does not parse"), std::string::npos);
}

// What a controller that takes over reads of a running Job: where the one
// before placed each of its pods, or nothing it could hold.
TEST(BatchAdmission, ARunningJobsRecordedPlacementIsOneNodeAndItsCardsPerPod) {
  auto with = [](const json& recorded, const std::string& extra_spec = R"("parallelism":2,)") {
    json job = batch_job(extra_spec, "", "");  // un-suspended, no schedulerName: not held
    job["metadata"]["annotations"][kPlacementAnnotation] = recorded;
    return recorded_placement(job);
  };
  const std::string two =
      R"([{"node":"n1","shares":"[{\"device\":0,\"milli\":1000},{\"device\":1,\"milli\":1000}]"},)"
      R"({"node":"n2","shares":"[{\"device\":3,\"milli\":1000},{\"device\":4,\"milli\":1000}]"}])";
  auto placed = with(two);
  ASSERT_TRUE(placed);
  ASSERT_EQ(placed->size(), 2u);
  EXPECT_EQ((*placed)[0].node, "n1");
  EXPECT_EQ((*placed)[1].node, "n2");
  ASSERT_EQ((*placed)[1].shares.size(), 2u);
  EXPECT_EQ((*placed)[1].shares[0].device, 3);
  EXPECT_EQ((*placed)[1].shares[0].milli, 1000u);
  // None: not one per pod, garbage, no node, not a string, or suspended
  // (not running yet: it waits in its queue).
  EXPECT_FALSE(with(two, R"("parallelism":3,)"));
  EXPECT_FALSE(with("not json"));
  EXPECT_FALSE(with(R"({"node":"n1"})"));
  EXPECT_FALSE(with(R"([{"node":""},{"node":"n2"}])"));
  EXPECT_FALSE(with(R"([{"shares":"[]"},{"node":"n2"}])"));
  EXPECT_FALSE(with(json::array()));
  EXPECT_FALSE(with(two, R"("parallelism":2,"suspend":true,)"));
  EXPECT_FALSE(recorded_placement(batch_job(R"("parallelism":2,)")));
}

// A fake source of admitted workloads: the test declares and ends them.
class FakeAdmissions : public Admissions {
 public:
  std::vector<PlacementReplica> placement_units(Placement& placement) override {
    for (auto it = held.begin(); it != held.end();)
      if (!jobs.count(*it)) {
        placement.remove(*it, 0);
        it = held.erase(it);
      } else {
        ++it;
      }
    std::vector<PlacementReplica> out;
    for (const auto& [name, job] : jobs) out.push_back({name, "", &job, false, false, false});
    return out;
  }
  bool has(const std::string& name) const override { return jobs.count(name) > 0; }
  void waiting(const std::string& name, const std::string& why) override { waits[name] = why; }
  void release(Placement& placement, double /*now*/) override {
    for (const auto& [name, job] : jobs)
      if (!placement.members(name).empty()) {
        held.insert(name);
        placed[name] = placement.members(name).size();
      }
  }
  std::map<std::string, api::Job> jobs;
  std::map<std::string, std::string> waits;
  std::map<std::string, size_t> placed;
  std::set<std::string> held;
};

api::Job gang(const std::string& name, uint32_t workers) {
  api::Job j;
  j.metadata.name = name;
  j.spec.workers = workers;
  j.spec.gpu.count = 1;
  j.spec.preemptible = false;
  return j;
}

TEST_F(ControllerTest, AdmittedWorkloadsShareTheQueuesAndGiveTheirPlaceBackWhenTheyEnd) {
  apply(gpu_node(2));
  FakeAdmissions batch;
  batch.jobs["job.batch/a"] = gang("job.batch/a", 2);
  batch.jobs["job.batch/b"] = gang("job.batch/b", 1);
  Controller& ctl = controller();
  ctl.admit(batch);
  ctl.pass();
  // The node's two GPUs hold a's gang whole; b waits with the scheduler's reason.
  EXPECT_EQ(batch.placed["job.batch/a"], 2u);
  EXPECT_FALSE(batch.placed.count("job.batch/b"));
  EXPECT_NE(batch.waits["job.batch/b"].find("GPU"), std::string::npos)
      << batch.waits["job.batch/b"];
  // a ends: its place goes to b at the next pass.
  batch.jobs.erase("job.batch/a");
  ctl.pass();
  ctl.pass();
  EXPECT_EQ(batch.placed["job.batch/b"], 1u);
  EXPECT_FALSE(batch.held.count("job.batch/a"));
}

}  // namespace
}  // namespace loadstar::controller
