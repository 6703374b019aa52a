// Jobs through the controller, pass by pass, with fake workers the test
// ends: gangs start all or none, a failing worker fails its attempt and the
// job retries up to backoffLimit, serving reclaims a borrowing job's GPUs
// (the job checkpoints within its grace period, is requeued and resumes),
// an ended job is not run again, and GPU-seconds add up.
#include "controller_fakes.h"

namespace loadstar::controller {
namespace {

using namespace std::chrono_literals;
using namespace fakes;

class FakeWorkers : public WorkerRuntime {
 public:
  explicit FakeWorkers(std::vector<std::string>& log) : log_(log) {}
  Status start(const WorkerLaunch& l) override {
    if (refuse == l.worker) return make_error(ErrorCode::kInvalidArgument, "no such program");
    log_.push_back(
        fmt::format("start {} attempt {} on {} {}", l.worker, l.attempt, l.node, l.devices));
    running[l.worker] = {.exists = true};
    return ok_status();
  }
  WorkerStatus status(const std::string& worker) override {
    auto it = running.find(worker);
    if (it == running.end()) return {};
    WorkerStatus st = it->second;
    if (!st.exists) running.erase(it);
    return st;
  }
  void stop(const std::string& worker, double grace_s) override {
    log_.push_back(fmt::format("stop {} grace {:g}", worker, grace_s));
  }
  std::string logs_of(const std::string& job) const override { return "/logs/" + job; }
  void record_end(const std::string& job, const std::string& phase,
                  const std::string& message) override {
    ends[job] = {phase, message};
  }
  std::optional<std::pair<std::string, std::string>> ended(const std::string& job) override {
    auto it = ends.find(job);
    if (it == ends.end()) return std::nullopt;
    return it->second;
  }
  void forget(const std::string& job) override { ends.erase(job); }

  // The worker ends with `code`, saying `message`.
  void end(const std::string& worker, int code, std::string message = "") {
    running.at(worker) = {
        .exists = false, .exited = true, .exit_code = code, .message = std::move(message)};
  }
  bool runs(const std::string& worker) const { return running.count(worker) > 0; }
  std::vector<RunningWorker> running_workers(const std::string& job) override {
    std::vector<RunningWorker> out;
    for (const RunningWorker& w : left_running)
      if (w.worker.starts_with(job + "-worker-")) out.push_back(w);
    return out;
  }

  std::map<std::string, WorkerStatus> running;
  std::map<std::string, std::pair<std::string, std::string>> ends;
  std::string refuse;                       // a worker whose start fails
  std::vector<RunningWorker> left_running;  // by a controller before this one

 private:
  std::vector<std::string>& log_;
};

std::string job(const std::string& name, uint32_t workers, uint32_t gpus,
                const std::string& extra = "") {
  return fmt::format(R"(
apiVersion: loadstar.dev/v1alpha1
kind: Job
metadata: {{name: {}}}
spec:
  command: [train]
  workers: {}
  resources: {{gpu: {{count: {}}}}}
{})",
                     name, workers, gpus, extra);
}

class JobsTest : public ControllerTest {
 protected:
  Controller& start(JobOptions options = {.backoff_s = 10, .backoff_max_s = 360}) {
    Controller& ctl = controller();
    ctl.run_jobs(workers_, options);
    return ctl;
  }
  JobStatus job_status(const std::string& name) {
    for (auto& j : ctl_->jobs())
      if (j.name == name) return j;
    ADD_FAILURE() << "no job " << name;
    return {};
  }
  FakeWorkers workers_{log_};
};

// A controller that takes over finds an attempt whose every worker runs:
// it keeps them where they are (no new start, their GPUs held), and the
// job ends when they do. A job that lost one of its workers starts again.
TEST_F(JobsTest, ATakenOverAttemptKeepsItsRunningWorkersAndTheirGpus) {
  apply(gpu_node(2));
  apply(job("train", 2, 1));
  apply(job("partial", 2, 1));
  workers_.left_running = {{.worker = "train-worker-0",
                            .index = 0,
                            .attempt = 3,
                            .node = "n1",
                            .devices = "gpu0",
                            .shares = {{0, 1000, 0}}},
                           {.worker = "train-worker-1",
                            .index = 1,
                            .attempt = 3,
                            .node = "n1",
                            .devices = "gpu1",
                            .shares = {{1, 1000, 0}}},
                           {.worker = "partial-worker-1",
                            .index = 1,
                            .attempt = 1,
                            .node = "n1",
                            .devices = "gpu0",
                            .shares = {{0, 1000, 0}}}};
  workers_.running["train-worker-0"] = {.exists = true};
  workers_.running["train-worker-1"] = {.exists = true};
  Controller& ctl = start();
  ctl.pass();
  EXPECT_EQ(std::count_if(log_.begin(), log_.end(),
                          [](const std::string& e) { return e.starts_with("start train"); }),
            0);
  JobStatus st = job_status("train");
  EXPECT_EQ(st.phase, JobPhase::kRunning);
  EXPECT_EQ(st.attempts, 3u);
  ASSERT_EQ(st.nodes.size(), 2u);
  EXPECT_EQ(st.nodes[0], "n1 gpu0");
  // Both cards are train's: the other job waits.
  EXPECT_EQ(job_status("partial").phase, JobPhase::kQueued);
  EXPECT_NE(job_status("partial").message.find("GPU"), std::string::npos)
      << job_status("partial").message;
  workers_.end("train-worker-0", 0);
  workers_.end("train-worker-1", 0);
  ctl.pass();
  EXPECT_EQ(job_status("train").phase, JobPhase::kSucceeded);
  ctl.pass();
  EXPECT_TRUE(workers_.runs("partial-worker-0"));
}

TEST_F(JobsTest, AGangStartsAllItsWorkersOrNone) {
  apply(gpu_node(4));
  apply(service(1, "  resources: {gpu: {count: 1}}"));
  apply(job("train", 2, 2));
  Controller& ctl = start();
  ctl.pass();
  // 3 GPUs free, the gang needs 4: no worker starts, and the job says why.
  EXPECT_FALSE(workers_.runs("train-worker-0"));
  EXPECT_FALSE(workers_.runs("train-worker-1"));
  JobStatus st = job_status("train");
  EXPECT_EQ(st.phase, JobPhase::kQueued);
  EXPECT_NE(st.message.find("GPU"), std::string::npos) << st.message;

  ASSERT_TRUE(store_.remove("InferenceService", "chat").ok());
  runtime_.end("chat-0");
  ctl.pass();
  ctl.pass();
  EXPECT_TRUE(workers_.runs("train-worker-0"));
  EXPECT_TRUE(workers_.runs("train-worker-1"));
  st = job_status("train");
  EXPECT_EQ(st.phase, JobPhase::kRunning);
  EXPECT_EQ(st.attempts, 1u);
  ASSERT_EQ(st.nodes.size(), 2u);
  EXPECT_EQ(st.nodes[0], "n1 gpu0,gpu1");
  EXPECT_EQ(st.nodes[1], "n1 gpu2,gpu3");

  clock_.advance(10s);
  workers_.end("train-worker-0", 0);
  ctl.pass();
  EXPECT_EQ(job_status("train").phase, JobPhase::kRunning);  // worker 1 still runs
  workers_.end("train-worker-1", 0);
  clock_.advance(10s);
  ctl.pass();
  st = job_status("train");
  EXPECT_EQ(st.phase, JobPhase::kSucceeded);
  // Two workers of two GPUs: 10 s with both, 10 s with one.
  EXPECT_DOUBLE_EQ(st.gpu_seconds, 2 * 2 * 10.0 + 2 * 10.0);
  EXPECT_EQ(workers_.ends.at("train").first, "Succeeded");
  const std::string metrics = ctl.scheduler_metrics();
  EXPECT_NE(metrics.find("loadstar_jobs{queue=\"default\",phase=\"Succeeded\"} 1"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("loadstar_job_gpu_seconds_total{job=\"train\",queue=\"default\"} 60"),
            std::string::npos)
      << metrics;
  // Its GPUs are free again.
  apply(job("next", 1, 4));
  ctl.pass();
  EXPECT_TRUE(workers_.runs("next-worker-0"));
}

TEST_F(JobsTest, AFailedWorkerFailsTheAttemptAndTheJobRetriesUpToItsBackoffLimit) {
  apply(gpu_node(4));
  apply(job("train", 2, 1, "  backoffLimit: 1\n  terminationGracePeriodSeconds: 5"));
  Controller& ctl = start();
  ctl.pass();
  ASSERT_TRUE(workers_.runs("train-worker-1"));
  workers_.end("train-worker-1", 3, "exited with status 3: CUDA error: out of memory");
  ctl.pass();
  // The gang stops as a whole.
  EXPECT_EQ(count("stop train-worker-0 grace 5"), 1u);
  workers_.end("train-worker-0", 143);
  ctl.pass();
  JobStatus st = job_status("train");
  EXPECT_EQ(st.phase, JobPhase::kQueued);
  EXPECT_EQ(st.failures, 1u);
  EXPECT_NE(st.message.find("retrying in 10s"), std::string::npos) << st.message;
  EXPECT_NE(st.message.find("CUDA error: out of memory"), std::string::npos) << st.message;
  clock_.advance(5s);
  ctl.pass();
  EXPECT_FALSE(workers_.runs("train-worker-0"));  // still backing off
  clock_.advance(6s);
  ctl.pass();
  ctl.pass();
  EXPECT_EQ(count("start train-worker-0 attempt 2 on n1 gpu0"), 1u)
      << fmt::format("{}", fmt::join(log_, "\n"));
  workers_.end("train-worker-0", 1, "exited with status 1: loss is NaN");
  ctl.pass();
  workers_.end("train-worker-1", 143);
  ctl.pass();
  st = job_status("train");
  EXPECT_EQ(st.phase, JobPhase::kFailed);
  EXPECT_NE(st.message.find("2 failed attempts (backoffLimit 1)"), std::string::npos) << st.message;
  EXPECT_NE(st.message.find("loss is NaN"), std::string::npos) << st.message;

  // A new controller (a restarted `loadstar up`) does not run it again.
  Controller& again = start();
  again.pass();
  EXPECT_EQ(job_status("train").phase, JobPhase::kFailed);
  EXPECT_FALSE(workers_.runs("train-worker-0"));
}

TEST_F(JobsTest, ServingReclaimsABorrowingJobsGpusAfterItsGracePeriodAndTheJobResumes) {
  apply(gpu_node(4));
  apply(R"(
apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: serving}
spec: {deserved: {gpu: 4}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: batch}
spec: {deserved: {gpu: 0}}
)");
  apply(job("train", 2, 2, "  queue: batch\n  terminationGracePeriodSeconds: 30"));
  Controller& ctl = start();
  ctl.pass();
  ASSERT_TRUE(workers_.runs("train-worker-0"));
  ASSERT_TRUE(workers_.runs("train-worker-1"));

  // Serving wants one GPU of its deserved four back.
  apply(service(1, "  queue: serving\n  resources: {gpu: {count: 1}}"));
  ctl.pass();
  EXPECT_EQ(count("stop train-worker-0 grace 30"), 1u);
  EXPECT_EQ(count("stop train-worker-1 grace 30"), 1u);
  // The replica is placed on the job's devices but waits for its workers.
  EXPECT_EQ(runtime_.launches, 0);
  EXPECT_NE(replica("chat-0").message.find("waiting for preempted job train"), std::string::npos)
      << replica("chat-0").message;
  EXPECT_EQ(job_status("train").phase, JobPhase::kStopping);
  EXPECT_EQ(job_status("train").preemptions, 1u);

  // The workers checkpoint and end within their grace period.
  clock_.advance(3s);
  workers_.end("train-worker-0", 0);
  workers_.end("train-worker-1", 143);
  ctl.pass();
  EXPECT_EQ(count("launch chat-0"), 1u);
  JobStatus st = job_status("train");
  EXPECT_EQ(st.phase, JobPhase::kQueued);  // requeued, not lost, not failed
  EXPECT_EQ(st.failures, 0u);

  // Serving lets go again: the job resumes (its next attempt).
  ASSERT_TRUE(store_.remove("InferenceService", "chat").ok());
  runtime_.end("chat-0");
  ctl.pass();
  ctl.pass();
  EXPECT_EQ(count("start train-worker-0 attempt 2 on n1 gpu0,gpu1"), 1u)
      << fmt::format("{}", fmt::join(log_, "\n"));
  EXPECT_EQ(job_status("train").attempts, 2u);
}

TEST_F(JobsTest, ANonPreemptibleJobKeepsItsGpusAndServingWaits) {
  apply(gpu_node(2));
  apply(job("train", 1, 2, "  preemptible: false"));
  Controller& ctl = start();
  ctl.pass();
  ASSERT_TRUE(workers_.runs("train-worker-0"));
  apply(service(1, "  resources: {gpu: {count: 1}}"));
  ctl.pass();
  EXPECT_EQ(count("stop train-worker-0 grace 30"), 0u);
  EXPECT_EQ(runtime_.launches, 0);
  EXPECT_EQ(replica("chat-0").state, ReplicaState::kPending);
}

TEST_F(JobsTest, AWorkerThatCannotStartFailsTheAttemptAndDeletionStopsTheGang) {
  apply(gpu_node(4));
  apply(job("train", 2, 1, "  backoffLimit: 0"));
  workers_.refuse = "train-worker-1";
  Controller& ctl = start();
  ctl.pass();
  EXPECT_EQ(count("stop train-worker-0 grace 30"), 1u);  // all or none
  workers_.end("train-worker-0", 143);
  ctl.pass();
  JobStatus st = job_status("train");
  EXPECT_EQ(st.phase, JobPhase::kFailed);
  EXPECT_NE(st.message.find("worker 1 could not start: no such program"), std::string::npos)
      << st.message;

  // Deleted and created again: it runs (its end was forgotten).
  workers_.refuse.clear();
  ASSERT_TRUE(store_.remove("Job", "train").ok());
  ctl.pass();
  EXPECT_TRUE(workers_.ends.empty());
  apply(job("train", 2, 1));
  ctl.pass();
  ctl.pass();
  EXPECT_TRUE(workers_.runs("train-worker-0"));
  ASSERT_TRUE(store_.remove("Job", "train").ok());
  ctl.pass();
  EXPECT_EQ(count("stop train-worker-1 grace 30"), 1u);
}

TEST_F(JobsTest, AJobPastItsActiveDeadlineFails) {
  apply(gpu_node(1));
  apply(job("train", 1, 1, "  activeDeadlineSeconds: 60"));
  Controller& ctl = start();
  ctl.pass();
  clock_.advance(61s);
  ctl.pass();
  EXPECT_EQ(count("stop train-worker-0 grace 30"), 1u);
  workers_.end("train-worker-0", 143);
  ctl.pass();
  JobStatus st = job_status("train");
  EXPECT_EQ(st.phase, JobPhase::kFailed);
  EXPECT_NE(st.message.find("activeDeadlineSeconds (60s)"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace loadstar::controller

#include "controller/pod_workers.h"

namespace loadstar::controller {
namespace {

// A worker Pod's checkpoint volume: the claim (or node directory) mounted
// with the job's own directory as its subPath, which
// $LOADSTAR_CHECKPOINT_DIR names; without one, no volume at all.
TEST(WorkerPod, ItsCheckpointsGoToTheJobsDirectoryOnItsClaim) {
  api::Job job;
  job.metadata.name = "team/train";
  job.spec.command = {"train"};
  job.spec.image = "trainer:1";
  job.spec.checkpoint_claim = "ckpt";
  WorkerLaunch launch;
  launch.worker = "team/train-worker-0";
  launch.job = &job;
  launch.node = "n1";
  launch.shares = {{0, 1000, 0}};
  const kube::json pod = worker_pod(launch, "team", "uid", "", {});
  EXPECT_EQ(pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "ckpt");
  const kube::json& c = pod["spec"]["containers"][0];
  EXPECT_EQ(c["volumeMounts"][0]["mountPath"], "/var/lib/loadstar/checkpoint");
  EXPECT_EQ(c["volumeMounts"][0]["subPath"], "team_train");
  std::string dir;
  for (const auto& e : c["env"])
    if (e["name"] == "LOADSTAR_CHECKPOINT_DIR") dir = e.value("value", "");
  EXPECT_EQ(dir, "/var/lib/loadstar/checkpoint");
  // Its cards recorded for a controller that takes it over.
  EXPECT_EQ(pod["metadata"]["annotations"]["loadstar.dev/shares"],
            R"([{"device":0,"migSlices":0,"milli":1000}])");
  job.spec.checkpoint_claim.clear();
  EXPECT_FALSE(worker_pod(launch, "team", "uid", "", {})["spec"].contains("volumes"));
}

}  // namespace
}  // namespace loadstar::controller
