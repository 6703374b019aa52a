// Jobs inside `loadstar up`, as real processes: a gang starts all its
// workers or none, each with the gang's environment; a failing worker's own
// error line is the job's status; and an autoscaled service under a load
// step takes its GPU back from a job borrowing it — the job checkpoints in
// its grace period, is requeued, resumes from its checkpoint once serving
// lets go, and the queues' GPU-seconds match what ran.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kNode = R"(apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {name: n1}
spec:
  cpu: 16
  memory: 64Gi
  gpus: [{model: A100-80GB, memory: 80Gi, count: 2}]
  topology: {rack: r1}
---
)";

json admin_get(Up& up, const std::string& path) {
  auto r = http::fetch({.port = up.admin_port(), .target = path, .timeout_s = 5});
  if (!r.ok() || r->status != 200) return json::object();
  return json::parse(r->body);
}

json job(Up& up, const std::string& name) {
  const json doc = admin_get(up, "/api/v1/jobs");
  for (const auto& j : doc.value("items", json::array()))
    if (j["name"] == name) return j;
  return json::object();
}

// Polls `job` until `done` holds or `seconds` pass; the last state.
template <typename Done>
json wait_job(Up& up, const std::string& name, Done done, double seconds = 20) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  json j = job(up, name);
  while (!done(j) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    j = job(up, name);
  }
  return j;
}

TEST(JobsInUp, AGangStartsAllItsWorkersOrNoneAndAFailedWorkersOwnErrorIsTheStatus) {
  auto up = Up::start(std::string(kNode) + R"(apiVersion: loadstar.dev/v1alpha1
kind: Job
metadata: {name: too-big}
spec:
  command: [sh, -c, 'touch started-$LOADSTAR_WORKER_INDEX']
  workers: 3
  resources: {gpu: {count: 1}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Job
metadata: {name: pair}
spec:
  command: [sh, -c, 'echo "$LOADSTAR_WORKER_INDEX/$LWS_GROUP_SIZE $LWS_LEADER_ADDRESS $CUDA_VISIBLE_DEVICES $DATASET" > "$LOADSTAR_CHECKPOINT_DIR/w$JOB_COMPLETION_INDEX"']
  env: {DATASET: shards-0-7}
  workers: 2
  resources: {gpu: {count: 1}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Job
metadata: {name: broken}
spec:
  command: [sh, -c, 'echo loading; echo "FileNotFoundError: dataset s3://missing/x" >&2; exit 2']
  backoffLimit: 0
)");
  auto done = [](const json& j) {
    return j.value("phase", "") == "Succeeded" || j.value("phase", "") == "Failed";
  };
  const json pair = wait_job(*up, "pair", done);
  ASSERT_EQ(pair.value("phase", ""), "Succeeded") << pair.dump();
  const auto dir = up->data_dir() / "jobs" / "pair" / "checkpoint";
  const std::string w0 = read_file(dir / "w0"), w1 = read_file(dir / "w1");
  EXPECT_EQ(w0, "0/2 127.0.0.1 0 shards-0-7\n");
  EXPECT_EQ(w1, "1/2 127.0.0.1 1 shards-0-7\n");

  const json broken = wait_job(*up, "broken", done);
  EXPECT_EQ(broken.value("phase", ""), "Failed") << broken.dump();
  EXPECT_NE(broken.value("message", "").find("FileNotFoundError: dataset s3://missing/x"),
            std::string::npos)
      << broken.dump();

  // Three one-GPU workers on two GPUs: none starts, and it says why.
  const json big = job(*up, "too-big");
  EXPECT_EQ(big.value("phase", ""), "Queued") << big.dump();
  EXPECT_EQ(big.value("attempts", -1), 0) << big.dump();
  EXPECT_NE(big.value("message", "").find("GPU"), std::string::npos) << big.dump();
  for (int i = 0; i < 3; ++i)
    EXPECT_FALSE(std::filesystem::exists(up->data_dir() / "jobs" / "too-big" /
                                         ("started-" + std::to_string(i))));
  std::string out;
  ASSERT_EQ(run_loadstar({"get", "jobs", "--admin-port", std::to_string(up->admin_port())}, &out),
            0);
  EXPECT_NE(out.find("pair"), std::string::npos) << out;
  EXPECT_NE(out.find("Succeeded"), std::string::npos) << out;
  EXPECT_NE(out.find("logs: " + (up->data_dir() / "jobs" / "broken").string()), std::string::npos)
      << out;
  // describe: the failed one's attempts, its own error, and its events.
  ASSERT_EQ(
      run_loadstar({"describe", "job", "broken", "--admin-port", std::to_string(up->admin_port())},
                   &out),
      0);
  EXPECT_NE(out.find("Phase:        Failed"), std::string::npos) << out;
  EXPECT_NE(out.find(" failed, 0 preempted)"), std::string::npos) << out;
  EXPECT_NE(out.find("Message:      "), std::string::npos) << out;
  EXPECT_NE(out.find("Logs:         " + (up->data_dir() / "jobs" / "broken").string()),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("Events (oldest first):"), std::string::npos) << out;
  ASSERT_EQ(
      run_loadstar({"describe", "job", "pair", "--admin-port", std::to_string(up->admin_port())},
                   &out),
      0);
  EXPECT_NE(out.find("Phase:        Succeeded"), std::string::npos) << out;
  EXPECT_EQ(
      run_loadstar({"describe", "job", "nope", "--admin-port", std::to_string(up->admin_port())},
                   &out),
      1);
  EXPECT_NE(out.find("no job named 'nope'"), std::string::npos) << out;
}

// A training loop that checkpoints its step on SIGTERM (taking a second to
// write it) and resumes from it; it logs when each attempt ran.
constexpr const char* kTrainer = R"yaml(apiVersion: loadstar.dev/v1alpha1
kind: Job
metadata: {name: train}
spec:
  command:
  - sh
  - -c
  - |
    ckpt="$LOADSTAR_CHECKPOINT_DIR/step"
    step=$(cat "$ckpt" 2>/dev/null || echo 0)
    echo "attempt $LOADSTAR_ATTEMPT resumes at step $step, t=$(date +%s.%N)"
    trap 'sleep 1; echo $step > "$ckpt"; echo "checkpointed at step $step, t=$(date +%s.%N)"; exit 143' TERM
    while [ $step -lt 50 ]; do step=$((step+1)); sleep 0.1; done
    echo $step > "$ckpt"
    echo "finished at step $step, t=$(date +%s.%N)"
  queue: batch
  resources: {gpu: {count: 1}}
  terminationGracePeriodSeconds: 5
)yaml";

TEST(JobsInUp, AServiceUnderALoadStepTakesItsGpuBackFromABorrowingJobWhichResumesLater) {
  auto up = Up::start(std::string(kNode) + R"(apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: serving}
spec: {deserved: {gpu: 2}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: batch}
spec: {deserved: {gpu: 0}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: tiny}
spec: {source: "synth://tiny", size: 16Mi}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: tiny
  replicas: 1
  queue: serving
  resources: {gpu: {count: 1}}
  engine: {name: engine-sim, args: ["--time-scale", "1"]}
  routing: {picker: least-request}
  autoscaling:
    maxReplicas: 2
    targets: {inFlightPerReplica: 2}
    stableWindow: 3s
    panicWindow: 1s
    scaleDownStabilization: 1s
---
)" + kTrainer);
  up->wait_ready("chat", 1);
  // The job borrows serving's idle second GPU.
  json j = wait_job(*up, "train", [](const json& j) { return j.value("phase", "") == "Running"; });
  ASSERT_EQ(j.value("phase", ""), "Running") << j.dump();

  // A load step: four long streams at two per replica want a second replica.
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i)
    clients.emplace_back([&] {
      json body = {{"model", "chat"},
                   {"messages", {{{"role", "user"}, {"content", "Count slowly."}}}},
                   {"max_tokens", 500},
                   {"ignore_eos", true},
                   {"stream", true}};
      std::string text;
      auto r = http::fetch_streaming({.port = up->port(),
                                      .method = "POST",
                                      .target = "/v1/chat/completions",
                                      .body = body.dump(),
                                      .timeout_s = 60},
                                     [&](std::string_view chunk) {
                                       text.append(chunk);
                                       return true;
                                     });
      ok += r.ok() && r->status == 200 && text.find("[DONE]") != std::string::npos;
    });
  // The second replica appears, then waits for the job's checkpoint.
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (json::parse(up->replicas_json())["items"].size() < 2 && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto asked = Clock::now();
  ASSERT_EQ(json::parse(up->replicas_json())["items"].size(), 2u) << up->replicas_json();
  up->wait_ready("chat", 2);
  // Within one pass plus the grace period (and an engine-sim start).
  const double took = std::chrono::duration<double>(Clock::now() - asked).count();
  EXPECT_LT(took, 5 + 4) << "the second replica took " << took << " s";
  j = job(*up, "train");
  EXPECT_EQ(j.value("preemptions", 0), 1) << j.dump();
  EXPECT_EQ(j.value("failures", -1), 0) << j.dump();
  const std::string log0 = read_file(up->data_dir() / "jobs" / "train" / "worker-0.log");
  EXPECT_NE(log0.find("checkpointed at step"), std::string::npos) << log0;
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok, 4);

  // Serving lets go once the load is gone; the job resumes where it was.
  j = wait_job(
      *up, "train", [](const json& j) { return j.value("phase", "") == "Succeeded"; }, 40);
  ASSERT_EQ(j.value("phase", ""), "Succeeded") << j.dump() << up->replicas_json();
  EXPECT_EQ(j.value("attempts", 0), 2) << j.dump();
  const std::string log = read_file(up->data_dir() / "jobs" / "train" / "worker-0.log");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex("checkpointed at step (\\d+)"))) << log;
  const std::string step = m[1];
  EXPECT_NE(log.find("attempt 2 resumes at step " + step), std::string::npos) << log;
  EXPECT_NE(log.find("finished at step 50"), std::string::npos) << log;

  // GPU-seconds: the batch queue's equal the job's, which equal the wall
  // time its worker logged (one GPU), within a reconcile pass per edge.
  double ran = 0, from = 0;
  const std::regex stamp("(resumes|checkpointed|finished) at step \\d+, t=([0-9.]+)");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), stamp); it != std::sregex_iterator();
       ++it) {
    const double t = std::stod((*it)[2]);
    if ((*it)[1] == "resumes")
      from = t;
    else
      ran += t - from;
  }
  const double job_gpu_s = j.value("gpu_seconds", 0.0);
  EXPECT_NEAR(job_gpu_s, ran, 0.6) << log;
  double batch_gpu_s = -1;
  const json queues = admin_get(*up, "/api/v1/queues");
  for (const auto& q : queues["items"])
    if (q["name"] == "batch") batch_gpu_s = q["gpu_seconds"].get<double>();
  EXPECT_NEAR(batch_gpu_s, job_gpu_s, 0.6) << queues.dump();
  std::printf(
      "second replica ready %.2f s after it was asked for; GPU-seconds: worker %.2f, "
      "job %.2f, batch queue %.2f\n",
      took, ran, job_gpu_s, batch_gpu_s);
}

}  // namespace
}  // namespace loadstar::testing
