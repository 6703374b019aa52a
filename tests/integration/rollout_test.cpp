// Rollouts on `loadstar up`: real engines replaced under steady traffic,
// driven with the CLI a user has (apply, rollout status|history|undo).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string service_yaml(int replicas, const std::string& engine_args,
                         const std::string& rollout = "{maxSurge: 1, maxUnavailable: 0}") {
  return quickstart(replicas, engine_args) + "  rollout: " + rollout + "\n";
}

// The CLI against `up`'s admin API.
int cli(Up& up, std::vector<std::string> args, std::string* out) {
  args.push_back("--admin-port");
  args.push_back(std::to_string(up.admin_port()));
  return run_loadstar(args, out);
}

void apply_file(Up& up, const std::string& yaml) {
  const fs::path file = scratch_dir() / "rollout.yaml";
  std::ofstream(file) << yaml;
  std::string out;
  ASSERT_EQ(cli(up, {"apply", "-f", file.string()}, &out), 0) << out;
}

json service(Up& up) {
  auto r = http::fetch({.port = up.admin_port(), .target = "/api/v1/services"});
  if (!r.ok()) return json::object();
  const json doc = json::parse(r->body, nullptr, false);
  if (!doc.is_object()) return json::object();
  for (const auto& s : doc["items"])
    if (s["name"] == "chat") return s;
  return json::object();
}

// Waits until revision `revision` is rolled out with `ready` replicas, every
// one of them at it; false after 60 s.
bool rolled_out(Up& up, int revision, int ready) {
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < deadline) {
    const json rollout = service(up).value("rollout", json::object());
    const json revisions = rollout.value("revisions", json::array());
    if (rollout.value("revision", 0) == revision && !rollout.value("rolling", true) &&
        revisions.size() == 1 && revisions[0].value("revision", 0) == revision &&
        revisions[0].value("ready", 0) == ready && revisions[0].value("replicas", 0) == ready)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// Clients that send chat requests (every other one streamed) through the
// gateway until stopped, counting what did not end well; and a watcher of
// the replicas' states.
class Traffic {
 public:
  explicit Traffic(Up& up) : up_(up) {
    for (int i = 0; i < 4; ++i)
      clients_.emplace_back([this, i] {
        for (int n = 0; !stop_; ++n) send(i, (n + i) % 2 == 1);
      });
    watcher_ = std::thread([this] {
      while (!stop_) {
        auto r = http::fetch({.port = up_.admin_port(), .target = "/api/v1/replicas"});
        if (r.ok()) {
          int ready = 0, active = 0;
          const json doc = json::parse(r->body);
          for (const auto& item : doc["items"]) {
            ready += item["state"] == "Ready";
            active += item["state"] != "Terminating";
          }
          fewest_ready = std::min(fewest_ready.load(), ready);
          most_active = std::max(most_active.load(), active);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  }
  ~Traffic() { stop(); }
  void stop() {
    if (stop_.exchange(true)) return;
    for (auto& t : clients_) t.join();
    watcher_.join();
  }

  std::atomic<int> sent{0}, failed{0};
  std::atomic<int> fewest_ready{1000}, most_active{0};
  std::string first_failure;

 private:
  void send(int client, bool stream) {
    json body = {
        {"model", "chat"},
        {"messages", {{{"role", "user"}, {"content", "client " + std::to_string(client)}}}},
        {"max_tokens", 24},
        {"ignore_eos", true},
        {"stream", stream}};
    auto r = http::fetch({.port = up_.port(),
                          .method = "POST",
                          .target = "/v1/chat/completions",
                          .body = body.dump(),
                          .timeout_s = 30});
    ++sent;
    const bool ok = r.ok() && r->status == 200 &&
                    (!stream || r->body.find("data: [DONE]") != std::string::npos) &&
                    r->body.find("\"error\"") == std::string::npos;
    if (ok) return;
    if (failed++ == 0)
      first_failure = r.ok() ? std::to_string(r->status) + " " + r->body : r.error().message;
  }

  Up& up_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> clients_;
  std::thread watcher_;
};

TEST(Rollout, ANewRevisionReplacesEveryReplicaUnderTrafficWithoutAFailedRequestAndUndoReturns) {
  // Real time: requests last long enough to be in flight when their
  // replica drains.
  auto up = Up::start(service_yaml(2, R"("--time-scale", "1")"));
  up->wait_ready("chat", 2);
  Traffic traffic(*up);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  apply_file(*up, service_yaml(2, R"("--time-scale", "1", "--seed", "2")"));
  ASSERT_TRUE(rolled_out(*up, 2, 2)) << service(*up).dump(2) << up->log();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  traffic.stop();
  EXPECT_EQ(traffic.failed, 0) << traffic.first_failure;
  EXPECT_GT(traffic.sent, 8);
  std::fprintf(stderr, "%d requests, %d failed, fewest ready %d, most replicas %d\n",
               traffic.sent.load(), traffic.failed.load(), traffic.fewest_ready.load(),
               traffic.most_active.load());
  EXPECT_GE(traffic.fewest_ready, 2);  // maxUnavailable 0
  EXPECT_LE(traffic.most_active, 3);   // maxSurge 1
  const json replicas = json::parse(up->replicas_json());
  for (const auto& r : replicas["items"]) EXPECT_EQ(r["revision"], 2);

  std::string out;
  ASSERT_EQ(cli(*up, {"rollout", "history", "chat"}, &out), 0) << out;
  EXPECT_NE(out.find("--seed 2"), std::string::npos) << out;
  EXPECT_NE(out.find("2*"), std::string::npos) << out;  // the current one
  ASSERT_EQ(cli(*up, {"rollout", "undo", "chat"}, &out), 0) << out;
  EXPECT_NE(out.find("rolling back to revision 1"), std::string::npos) << out;
  ASSERT_TRUE(rolled_out(*up, 3, 2)) << service(*up).dump(2);
  ASSERT_EQ(cli(*up, {"rollout", "status", "chat", "--watch", "--timeout", "10"}, &out), 0) << out;
  EXPECT_NE(out.find("revision 3 rolled out"), std::string::npos) << out;
  // Revision 1 came back as 3: two kept, and the spec on disk is the old one.
  ASSERT_EQ(cli(*up, {"rollout", "history", "chat"}, &out), 0) << out;
  EXPECT_EQ(out.find("\n1 "), std::string::npos) << out;
  EXPECT_EQ(read_file(up->data_dir() / "state" / "InferenceService.chat.yaml").find("--seed"),
            std::string::npos);
}

TEST(Rollout, ARevisionWhoseEngineCannotStartStallsWithItsErrorWhileTheOldOneServes) {
  auto up = Up::start(service_yaml(1, R"("--time-scale", "10")"));
  up->wait_ready("chat", 1);
  apply_file(*up, service_yaml(1, R"("--time-scale", "10", "--no-such-flag")"));
  // The new replica fails and restarts; the rollout says why, in the
  // engine's own words, and the old replica goes on serving.
  std::string message;
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (Clock::now() < deadline && message.find("no-such-flag") == std::string::npos) {
    message = service(*up).value("rollout", json::object()).value("message", "");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(message.find("no-such-flag"), std::string::npos) << message << up->log();
  EXPECT_NE(message.find("rolling out revision 2: 1 of 1 updated, 0 ready; 1 old"),
            std::string::npos)
      << message;
  EXPECT_EQ(up->post("/v1/completions", R"({"model":"chat","prompt":"hi","max_tokens":2})").status,
            200);
  std::string out;
  ASSERT_EQ(cli(*up, {"rollout", "status", "chat", "-w", "--timeout", "1"}, &out), 1) << out;
  // Each failed start is an event with the engine's own words.
  ASSERT_EQ(cli(*up, {"events", "chat"}, &out), 0) << out;
  EXPECT_NE(out.find("Warning  StartFailed       InferenceService/chat: replica chat-1: "),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("--no-such-flag"), std::string::npos) << out;
  ASSERT_EQ(cli(*up, {"rollout", "undo", "chat"}, &out), 0) << out;
  ASSERT_TRUE(rolled_out(*up, 3, 1)) << service(*up).dump(2);
  ASSERT_EQ(cli(*up, {"describe", "service", "chat"}, &out), 0) << out;
  EXPECT_NE(out.find("rollout to revision 2"), std::string::npos) << out;
  EXPECT_NE(out.find("revision 3 rolled out"), std::string::npos) << out;
}

// Canary analysis on real engines: engine-sim's fault injection makes a bad
// revision (errors, then slow first tokens); each is rolled back within its
// first step with few requests failing for a client (the gateway retries
// the canary's failures on the stable replicas, within its retry budget),
// and a good one is promoted step by step.
TEST(Rollout, ACanaryThatErrsOrIsSlowIsRolledBackAndAGoodOneIsPromoted) {
  const std::string canary =
      "{maxSurge: 1, maxUnavailable: 0, canary: {steps: [{weight: 30, pause: 2s}, "
      "{weight: 60, pause: 2s}], analysis: {minRequests: 10, maxTtftP99Ratio: 3, "
      "maxItlP99Ratio: 3}}}";
  const std::string args = R"("--time-scale", "10")";
  auto up = Up::start(service_yaml(2, args, canary));
  up->wait_ready("chat", 2);
  Traffic traffic(*up);
  auto rolled_back = [&](const std::string& why) {
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    json rollout;
    while (Clock::now() < deadline) {
      rollout = service(*up).value("rollout", json::object());
      if (rollout.value("aborted", false)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    const std::string message = rollout.value("message", "");
    EXPECT_TRUE(rollout.value("aborted", false)) << rollout.dump(2);
    EXPECT_NE(message.find(why), std::string::npos) << message;
    EXPECT_NE(message.find("step 1/2 (30%)"), std::string::npos) << message;
  };
  int revision = 1;
  apply_file(*up, service_yaml(2, args + R"(, "--fault-error-rate", "0.5")", canary));
  ++revision;
  rolled_back("of the canary's requests failed");
  std::string out;
  EXPECT_EQ(cli(*up, {"rollout", "status", "chat", "-w", "--timeout", "5"}, &out), 1) << out;
  apply_file(*up, service_yaml(2, args + R"(, "--fault-delay", "0.5")", canary));
  ++revision;
  rolled_back("TTFT p99");
  // Only the stable revision's replicas are left (once the canary's has
  // drained), and they serve.
  json revisions;
  for (const auto deadline = Clock::now() + std::chrono::seconds(30); Clock::now() < deadline;) {
    revisions = service(*up)["rollout"]["revisions"];
    if (revisions.size() == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(revisions.size(), 1u) << revisions.dump(2);
  EXPECT_EQ(revisions[0]["revision"], 1);
  EXPECT_EQ(revisions[0]["ready"], 2);
  apply_file(*up, service_yaml(2, args + R"(, "--seed", "3")", canary));
  ++revision;
  ASSERT_TRUE(rolled_out(*up, revision, 2)) << service(*up).dump(2);
  traffic.stop();
  // Clients see few of the canaries' failures: the gateway retries a
  // failed attempt on the stable replicas within its retry budget, and a
  // canary gets at most a few more than minRequests (10) before it goes.
  EXPECT_LE(traffic.failed, 20) << traffic.first_failure;
  EXPECT_GE(traffic.fewest_ready, 2);
  ASSERT_EQ(cli(*up, {"describe", "service", "chat"}, &out), 0) << out;
  EXPECT_NE(out.find("step 1/2 (30%) passed"), std::string::npos) << out;
  EXPECT_NE(out.find("promoted after 2 steps"), std::string::npos) << out;
  std::fprintf(stderr, "%d requests, %d failed\n%s", traffic.sent.load(), traffic.failed.load(),
               out.c_str());
}

}  // namespace
}  // namespace loadstar::testing
