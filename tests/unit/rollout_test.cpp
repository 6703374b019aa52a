// Rollouts: the rolling-update plan as a pure function, and the controller
// rolling a service from one revision to the next pass by pass (fakes of
// the store, the engines and the clock, controller_fakes.h).
#include "controller/rollout.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "controller_fakes.h"
#include "store/store.h"

namespace loadstar::controller {
namespace {

using namespace fakes;

api::RolloutSpec rollout(uint32_t surge, uint32_t unavailable) {
  return {{surge, false}, {unavailable, false}};
}

RolloutReplica old_ready(std::string name, uint32_t index) {
  return {std::move(name), index, false, true, true};
}

TEST(RolloutPlan, WithoutOldReplicasItScalesLowestIndexesUpAndUnreadyHighestFirstDown) {
  auto plan = plan_rollout(3, {}, {{"a-0", 0, true, true}});
  EXPECT_EQ(plan.create, 2u);
  EXPECT_FALSE(plan.rolling);
  plan = plan_rollout(1, {},
                      {{"a-0", 0, true, true}, {"a-1", 1, true, false}, {"a-2", 2, true, true}});
  EXPECT_EQ(plan.drain, (std::vector<std::string>{"a-1", "a-2"}));
}

TEST(RolloutPlan, ScaleDownDrainsTheReadyReplicaOnTheEmptiestNodeFirst) {
  // a-0 alone on an 8-GPU node (7 free), a-1 and a-2 share a busier one:
  // a-0 goes, so its node empties for work that needs a whole node.
  RolloutReplica a0{"a-0", 0, true, true}, a1{"a-1", 1, true, true}, a2{"a-2", 2, true, true};
  a0.node_gpu_free_milli = 7000;
  a1.node_gpu_free_milli = a2.node_gpu_free_milli = 2000;
  auto plan = plan_rollout(2, {}, {a0, a1, a2});
  EXPECT_EQ(plan.drain, std::vector<std::string>{"a-0"});
  // Equally free nodes: the highest index, as before.
  a0.node_gpu_free_milli = 2000;
  plan = plan_rollout(2, {}, {a0, a1, a2});
  EXPECT_EQ(plan.drain, std::vector<std::string>{"a-2"});
  // One serving nothing yet goes before any ready one.
  RolloutReplica starting{"a-3", 3, true, false};
  plan = plan_rollout(3, {}, {a0, a1, a2, starting});
  EXPECT_EQ(plan.drain, std::vector<std::string>{"a-3"});
}

TEST(RolloutPlan, SurgeFirstNeverBelowTheDesiredReadyCount) {
  // maxSurge 1, maxUnavailable 0, two ready old replicas.
  auto plan = plan_rollout(2, rollout(1, 0), {old_ready("a-0", 0), old_ready("a-1", 1)});
  EXPECT_TRUE(plan.rolling);
  EXPECT_EQ(plan.create, 1u);
  EXPECT_TRUE(plan.drain.empty());
  // The new one starting: nothing more.
  plan = plan_rollout(2, rollout(1, 0),
                      {old_ready("a-0", 0), old_ready("a-1", 1), {"a-2", 2, true, false, true}});
  EXPECT_EQ(plan.create, 0u);
  EXPECT_TRUE(plan.drain.empty());
  // Ready: one old one goes, the highest index.
  plan = plan_rollout(2, rollout(1, 0),
                      {old_ready("a-0", 0), old_ready("a-1", 1), {"a-2", 2, true, true, true}});
  EXPECT_EQ(plan.drain, std::vector<std::string>{"a-1"});
}

TEST(RolloutPlan, UnavailableFirstDrainsOnlyWhereTheNewWeightsAreStaged) {
  // maxSurge 0, maxUnavailable 1: an old replica must go first.
  RolloutReplica a = old_ready("a-0", 0), b = old_ready("a-1", 1);
  auto plan = plan_rollout(2, rollout(0, 1), {a, b});
  EXPECT_EQ(plan.create, 0u);
  EXPECT_EQ(plan.drain, std::vector<std::string>{"a-1"});  // nothing new could stage first
  // A new replica that is still staging holds the next old one back,
  // unless the new weights are on that one's node already.
  plan = plan_rollout(2, rollout(0, 1), {a, {"a-2", 2, true, false, false}});
  EXPECT_TRUE(plan.drain.empty());
  plan = plan_rollout(2, rollout(1, 1), {a, b, {"a-2", 2, true, false, false}});
  EXPECT_TRUE(plan.drain.empty());
  b.new_weights_here = true;
  plan = plan_rollout(2, rollout(1, 1), {a, b, {"a-2", 2, true, false, false}});
  EXPECT_EQ(plan.drain, std::vector<std::string>{"a-1"});
}

TEST(RolloutPlan, OldReplicasThatServeNothingGoFirstAndZeroDrainsAll) {
  RolloutReplica broken{"a-1", 1, false, false, false};
  auto plan = plan_rollout(2, rollout(1, 0), {old_ready("a-0", 0), broken});
  EXPECT_EQ(plan.create, 1u);
  EXPECT_TRUE(plan.drain.empty());  // the surge is the new one's
  plan =
      plan_rollout(2, rollout(1, 0), {old_ready("a-0", 0), broken, {"a-2", 2, true, true, true}});
  EXPECT_EQ(plan.drain, std::vector<std::string>{"a-1"});  // not the ready one
  plan = plan_rollout(0, {}, {old_ready("a-0", 0), {"a-1", 1, true, true, true}});
  EXPECT_EQ(plan.create, 0u);
  EXPECT_EQ(plan.drain.size(), 2u);
}

// Where GPUs are scarce the surge finds no place: one replica is replaced
// in place instead of the rollout waiting for room that never comes.
TEST(RolloutPlan, ASurgeWithNoRoomReplacesOneReplicaInPlace) {
  RolloutReplica waiting{"a-2", 2, true, false, false};
  waiting.unplaced = true;
  auto plan = plan_rollout(2, {}, {old_ready("a-0", 0), old_ready("a-1", 1), waiting});
  EXPECT_EQ(plan.drain, std::vector<std::string>{"a-1"});
  waiting.unplaced = false;  // placed, staging: the old ones wait for it
  plan = plan_rollout(2, {}, {old_ready("a-0", 0), old_ready("a-1", 1), waiting});
  EXPECT_TRUE(plan.drain.empty());
}

TEST(RolloutPlan, PercentagesRoundSurgeUpAndUnavailableDownAndNeverBothZero) {
  api::RolloutSpec spec;  // 25% surge, none unavailable
  EXPECT_EQ(spec.max_surge.of(1, true), 1u);
  EXPECT_EQ(spec.max_unavailable.of(8, false), 0u);
  EXPECT_EQ((api::IntOrPercent{25, true}).of(8, false), 2u);
  EXPECT_EQ((api::IntOrPercent{25, true}).of(3, false), 0u);
  // 0 and 0% of one replica: one may be unavailable, or nothing moves.
  auto plan = plan_rollout(1, {{0, false}, {25, true}}, {old_ready("a-0", 0)});
  EXPECT_EQ(plan.drain, std::vector<std::string>{"a-0"});
}

TEST(RolloutSpec, DecodesCountsAndPercentagesAndRefusesBothZero) {
  auto decoded = api::decode_resources(
      service(2, "  rollout: {maxSurge: 2, maxUnavailable: 10%}\n"), "svc.yaml");
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  const auto& spec = std::get<api::InferenceService>(decoded->front()).spec.rollout;
  EXPECT_EQ(spec.max_surge, (api::IntOrPercent{2, false}));
  EXPECT_EQ(spec.max_unavailable, (api::IntOrPercent{10, true}));
  auto again = api::decode_resources(api::encode_resource(decoded->front()), "again.yaml");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(std::get<api::InferenceService>(again->front()).spec.rollout, spec);
  auto zero = api::decode_resources(service(2, "  rollout: {maxSurge: 0, maxUnavailable: 0}\n"),
                                    "svc.yaml");
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.error().message.find("spec.rollout"), std::string::npos);
  auto bad = api::decode_resources(service(2, "  rollout: {maxSurge: 120%}\n"), "svc.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("spec.rollout.maxSurge"), std::string::npos);
  // A canary: steps and analysis, through encode and back.
  auto canary = api::decode_resources(
      service(2,
              "  rollout:\n    canary:\n      steps: [{weight: 5, pause: 1m}, {weight: 50}]\n"
              "      analysis: {minRequests: 50, maxErrorRateIncrease: 0.01, maxItlP99Ratio: 0}\n"),
      "svc.yaml");
  ASSERT_TRUE(canary.ok()) << canary.error().message;
  const auto& c = std::get<api::InferenceService>(canary->front()).spec.rollout.canary;
  ASSERT_TRUE(c.has_value());
  ASSERT_EQ(c->steps.size(), 2u);
  EXPECT_EQ(c->steps[0].pause_s, 60);
  EXPECT_EQ(c->steps[1].weight, 50u);
  EXPECT_EQ(c->analysis.min_requests, 50u);
  EXPECT_FALSE(c->analysis.max_itl_p99_ratio.has_value());
  EXPECT_EQ(c->analysis.max_ttft_p99_ratio, 1.5);
  auto back = api::decode_resources(api::encode_resource(canary->front()), "again.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(std::get<api::InferenceService>(back->front()).spec.rollout.canary, c);
  auto full = api::decode_resources(
      service(2, "  rollout:\n    canary:\n      steps: [{weight: 100}]\n"), "svc.yaml");
  ASSERT_FALSE(full.ok());
  EXPECT_NE(full.error().message.find("spec.rollout.canary.steps[0].weight"), std::string::npos)
      << full.error().message;
}

TEST(Revision, OnlyWhatShapesAReplicaChangesTheHash) {
  auto decode = [](const std::string& yaml) {
    return std::get<api::InferenceService>(api::decode_resources(yaml, "s.yaml")->front());
  };
  api::Model model{{"m"}, {"synth://m", "safetensors", 1 << 20}};
  const std::string base = revision_hash(decode(service(1)), &model);
  EXPECT_EQ(base, revision_hash(decode(service(5, "  minReplicas: 0\n  queue: q\n")), &model));
  EXPECT_NE(base, revision_hash(decode(service(1, "  engine: {args: [--x]}\n")), &model));
  api::Model other = model;
  other.spec.source = "synth://m2";
  EXPECT_NE(base, revision_hash(decode(service(1)), &other));
  // Adapters loaded at start shape a replica; loaded on demand, they do not
  // (the list changes without restarts), but the loading mode does.
  const auto lora = [&](const std::string& adapters, const std::string& loading) {
    return revision_hash(
        decode(service(1, "  lora: {adapters: [" + adapters + "]" + loading + "}\n")), &model);
  };
  EXPECT_NE(lora("a", ""), lora("a, b", ""));
  EXPECT_EQ(lora("a", ", loading: onDemand"), lora("a, b", ", loading: onDemand"));
  EXPECT_NE(lora("a", ""), lora("a", ", loading: onDemand"));
  // An adapter loaded at start with new bytes (its source) is a new revision.
  const auto start = decode(service(1, "  lora: {adapters: [a]}\n"));
  const auto on_demand = decode(service(1, "  lora: {adapters: [a], loading: onDemand}\n"));
  api::Model a1{{"a"}, {"file:///adapters/a1", "safetensors", {}}};
  api::Model a2{{"a"}, {"file:///adapters/a2", "safetensors", {}}};
  a1.spec.adapter_of = a2.spec.adapter_of = "m";
  EXPECT_NE(revision_hash(start, &model, "", std::vector{a1}),
            revision_hash(start, &model, "", std::vector{a2}));
  EXPECT_EQ(revision_hash(on_demand, &model, "", std::vector{a1}),
            revision_hash(on_demand, &model, "", std::vector{a2}));
}

TEST(Revision, TheResolvedVersionOfAVersionedSourceIsPartOfIt) {
  const auto svc =
      std::get<api::InferenceService>(api::decode_resources(service(1), "s.yaml")->front());
  api::Model model{{"m"}, {"hf://org/m", "safetensors", {}}};
  EXPECT_EQ(revision_hash(svc, &model), revision_hash(svc, &model, ""));
  EXPECT_NE(revision_hash(svc, &model, "aaaa"), revision_hash(svc, &model, "bbbb"));
  EXPECT_NE(revision_hash(svc, &model, "aaaa"), revision_hash(svc, &model));
  EXPECT_TRUE(source_has_versions("hf://org/m"));
  EXPECT_TRUE(source_has_versions("s3://bucket/m/"));
  EXPECT_TRUE(source_has_versions("https://host/m/"));
  EXPECT_FALSE(source_has_versions("file:///models/m"));
  EXPECT_FALSE(source_has_versions("synth://m"));
  EXPECT_TRUE(source_is_pinned("hf://org/m@0123456789abcdef0123456789abcdef01234567"));
  EXPECT_TRUE(source_is_pinned("hf://org/m@0123456789abcdef0123456789abcdef01234567/m.gguf"));
  EXPECT_FALSE(source_is_pinned("hf://org/m@main"));
  EXPECT_FALSE(source_is_pinned("hf://org/m"));
  EXPECT_FALSE(source_is_pinned("s3://bucket/m@0123456789abcdef0123456789abcdef01234567"));
}

constexpr const char* kV1 = "1111111111111111";
constexpr const char* kV2 = "2222222222222222";
constexpr const char* kP1 = "0000000000000001";

TEST(ModelVersions, ResolvesWhatIsWantedWhenDueAndKeepsTheLastVersionThroughFailures) {
  std::map<std::string, Result<std::string>> answers;
  int changes = 0;
  std::vector<std::string> asked;
  ModelVersions versions(
      [&](const std::string& source) {
        asked.push_back(source);
        return answers.at(source);
      },
      60, [&] { ++changes; });
  const std::string hub = "hf://org/m";
  const std::string pinned = "hf://org/m@0123456789abcdef0123456789abcdef01234567";
  answers.emplace(hub, std::string(kV1));
  answers.emplace(pinned, std::string(kP1));
  versions.want({hub, pinned});
  versions.poll(0);
  EXPECT_EQ(versions.version(hub), kV1);
  EXPECT_EQ(versions.version(pinned), kP1);
  EXPECT_EQ(changes, 1);
  const uint64_t generation = versions.generation();
  asked.clear();
  versions.poll(30);  // not due
  EXPECT_TRUE(asked.empty());
  answers.insert_or_assign(hub, std::string(kV2));
  versions.poll(61);  // due; the pinned one never again
  EXPECT_EQ(asked, std::vector<std::string>{hub});
  EXPECT_EQ(versions.version(hub), kV2);
  EXPECT_GT(versions.generation(), generation);
  EXPECT_EQ(changes, 2);
  answers.insert_or_assign(hub, Result<std::string>(make_error(ErrorCode::kUnavailable, "down")));
  versions.poll(130);
  EXPECT_EQ(versions.version(hub), kV2);  // kept
  EXPECT_EQ(versions.error(hub), "down");
  asked.clear();
  versions.poll(135);  // a failure is tried again sooner than the interval, not at once
  EXPECT_TRUE(asked.empty());
  versions.poll(141);
  EXPECT_EQ(asked.size(), 1u);
  versions.want({pinned});  // the other is forgotten
  EXPECT_EQ(versions.version(hub), std::nullopt);
  EXPECT_EQ(changes, 2);
}

// "Reason: message" lines.
std::string events_text(const ServiceStatus& status) {
  std::string out;
  for (const store::Event& e : status.events) out += e.reason + ": " + e.message + "\n";
  return out;
}

class RolloutTest : public ControllerTest {
 protected:
  // Engines start and stop as asked: launched ones become ready, stopped
  // ones end. Returns the ready replicas after the pass.
  uint32_t pass() {
    ctl_->pass();
    for (const std::string& entry : log_)
      if (entry.starts_with("stop ")) runtime_.end(entry.substr(5));
    uint32_t port = 9000;
    for (auto& [name, st] : runtime_.engines)
      if (!st.ready) runtime_.make_ready(name, static_cast<uint16_t>(port++));
    log_.clear();
    uint32_t ready = 0;
    for (const auto& r : ctl_->replicas()) ready += r.state == ReplicaState::kReady;
    return ready;
  }
  // Passes until nothing changes for three passes; the fewest ready
  // replicas seen and the most that existed.
  std::pair<uint32_t, size_t> settle(int max_passes = 40) {
    uint32_t fewest = 1000;
    size_t most = 0;
    for (int i = 0; i < max_passes; ++i) {
      clock_.advance(1s);
      load({});
      fewest = std::min(fewest, pass());
      most = std::max(most, runtime_.engines.size());
    }
    return {fewest, most};
  }
  // The controller stops; its engines run on, each with its revision, and
  // a new controller takes them over.
  void restart_controller() {
    runtime_.left_running.clear();
    for (const auto& r : ctl_->replicas())
      if (r.state != ReplicaState::kTerminating)
        runtime_.left_running.push_back({.replica = r.name,
                                         .service = "chat",
                                         .node = "local",
                                         .revision = runtime_.revisions[r.name],
                                         .index = static_cast<uint32_t>(r.name.back() - '0')});
    ctl_.reset();
    controller();
  }
  std::map<std::string, uint32_t> revisions() {
    std::map<std::string, uint32_t> out;
    for (const auto& r : ctl_->replicas())
      if (r.state != ReplicaState::kTerminating) out[r.name] = r.revision;
    return out;
  }
};

TEST_F(RolloutTest, AChangedEngineRollsOutWithinItsBoundsAndAScaleChangeRestartsNothing) {
  apply(service(3));
  controller();
  settle(5);
  EXPECT_EQ(revisions(),
            (std::map<std::string, uint32_t>{{"chat-0", 1}, {"chat-1", 1}, {"chat-2", 1}}));
  apply(service(4));  // the count is no revision
  settle(5);
  EXPECT_EQ(revisions().size(), 4u);
  for (const auto& [name, revision] : revisions()) EXPECT_EQ(revision, 1u) << name;
  apply(service(4, "  engine: {args: [--v2]}\n"));
  const auto [fewest, most] = settle();
  EXPECT_GE(fewest, 4u);  // maxUnavailable 0 (the default)
  EXPECT_LE(most, 5u);    // maxSurge 25% of 4
  EXPECT_EQ(revisions().size(), 4u);
  for (const auto& [name, revision] : revisions()) {
    EXPECT_EQ(revision, 2u) << name;
    EXPECT_EQ(runtime_.args[name], "--v2") << name;
  }
  EXPECT_EQ(store_.history["chat"].size(), 2u);
  const ServiceStatus status = ctl_->services().front();
  EXPECT_FALSE(status.rollout.rolling);
  EXPECT_EQ(status.rollout.revision, 2u);
  const std::string events = events_text(status);
  EXPECT_NE(events.find("RolloutStarted: rollout to revision 2"), std::string::npos) << events;
  EXPECT_NE(events.find("RolledOut: revision 2 rolled out"), std::string::npos) << events;
  EXPECT_NE(events.find("ScaledUp: 3 -> 4: spec.replicas"), std::string::npos) << events;
}

TEST_F(RolloutTest, AnOldReplicaThatFailsRestartsAtItsOwnRevision) {
  apply(service(2, "  rollout: {maxSurge: 1, maxUnavailable: 0}\n"));
  controller();
  settle(5);
  apply(service(2, "  rollout: {maxSurge: 1, maxUnavailable: 0}\n  engine: {args: [--v2]}\n"));
  clock_.advance(1s);
  pass();  // chat-2 launched at revision 2, not yet ready
  ASSERT_EQ(runtime_.revisions.count("chat-2"), 1u);
  runtime_.end("chat-0");
  runtime_.engines["chat-2"].ready = false;  // it keeps starting
  clock_.advance(5s);
  ctl_->pass();
  clock_.advance(5s);
  ctl_->pass();
  EXPECT_EQ(runtime_.args["chat-0"], "");  // restarted as it was
  EXPECT_EQ(replica("chat-0").revision, 1u);
}

TEST_F(RolloutTest, AStartThatNeverBecomesReadyStallsTheRolloutWithItsReason) {
  apply(service(2, "  rollout: {maxSurge: 1, maxUnavailable: 0}\n"));
  controller();
  settle(5);
  apply(service(2, "  rollout: {maxSurge: 1, maxUnavailable: 0}\n  engine: {args: [--bad]}\n"));
  for (int i = 0; i < 10; ++i) {
    clock_.advance(1s);
    load({});
    ctl_->pass();
    for (auto& [name, st] : runtime_.engines) st.message = "error: unknown flag --bad";
  }
  uint32_t ready = 0;
  for (const auto& r : ctl_->replicas()) ready += r.state == ReplicaState::kReady;
  EXPECT_EQ(ready, 2u);  // the old ones serve on
  const ServiceStatus status = ctl_->services().front();
  EXPECT_TRUE(status.rollout.rolling);
  EXPECT_NE(status.rollout.message.find("unknown flag --bad"), std::string::npos)
      << status.rollout.message;
  ASSERT_EQ(status.rollout.revisions.size(), 2u);
  EXPECT_EQ(status.rollout.revisions[0].number, 2u);
  EXPECT_EQ(status.rollout.revisions[0].ready, 0u);
  EXPECT_EQ(status.rollout.revisions[1].ready, 2u);
}

TEST_F(RolloutTest, UndoWritesThePreviousSpecBackAndItComesBackAsTheNextNumber) {
  apply(service(2));
  controller();
  settle(5);
  apply(service(2, "  engine: {args: [--v2]}\n"));
  settle();
  auto undone = ctl_->undo("chat", 0);
  ASSERT_TRUE(undone.ok()) << undone.error().message;
  EXPECT_NE(undone->find("revision 1"), std::string::npos) << *undone;
  settle();
  for (const auto& [name, revision] : revisions()) {
    EXPECT_EQ(revision, 3u) << name;
    EXPECT_EQ(runtime_.args[name], "") << name;
  }
  auto history = ctl_->history("chat");
  ASSERT_TRUE(history.ok());
  ASSERT_EQ(history->size(), 2u);  // revision 1 came back as 3
  EXPECT_EQ((*history)[0].number, 2u);
  EXPECT_EQ((*history)[1].number, 3u);
  EXPECT_EQ((*history)[1].replicas, 2u);
  EXPECT_EQ(ctl_->undo("chat", 7).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(ctl_->undo("chat", 3).error().code, ErrorCode::kInvalidArgument);
}

TEST_F(RolloutTest, ANewControllerGoesOnWithTheRolloutItFinds) {
  apply(service(2, "  rollout: {maxSurge: 1, maxUnavailable: 0}\n"));
  controller();
  settle(5);
  apply(service(2, "  rollout: {maxSurge: 1, maxUnavailable: 0}\n  engine: {args: [--v2]}\n"));
  clock_.advance(1s);
  pass();
  clock_.advance(1s);
  pass();  // chat-2 (revision 2) ready; chat-1 draining
  restart_controller();
  const auto [fewest, most] = settle();
  EXPECT_GE(fewest, 2u);
  for (const auto& [name, revision] : revisions()) {
    EXPECT_EQ(revision, 2u) << name;
    EXPECT_EQ(runtime_.args[name], "--v2") << name;
  }
}

// The local store keeps revisions (renumbered, with their state) and events
// (the same again counted, a cut last line skipped, at most kMaxEvents)
// across a reopen, as a restarted `loadstar up` finds them.
TEST(LocalStoreHistory, RevisionsAndEventsSurviveAReopen) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / fmt::format("ls-store-{}", getpid());
  fs::remove_all(dir);
  {
    auto store = store::LocalStore::open(dir);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->save_revision("chat", {"abc", 1, R"({"service":""})", ""}).ok());
    ASSERT_TRUE((*store)->save_revision("chat", {"abc", 3, R"({"service":""})", "s"}).ok());
    ASSERT_TRUE((*store)->save_revision("chat", {"def", 2, "{}", ""}).ok());
    ASSERT_TRUE((*store)->remove_revision("chat", "def").ok());
    store::Event e{
        "2026-12-04T00:00:00Z", "InferenceService", "chat", "Normal", "ScaledUp", "1 -> 2"};
    (*store)->record_event(e);
    e.count = 2;
    (*store)->record_event(e);
    e.reason = "RolledOut";
    e.count = 1;
    for (size_t i = 0; i < 2 * store::LocalStore::kMaxEvents + 5; ++i) {
      e.message = std::to_string(i);
      (*store)->record_event(e);
    }
  }
  std::ofstream(dir / "events.jsonl", std::ios::app) << R"({"time":"cut)";
  auto store = store::LocalStore::open(dir);
  ASSERT_TRUE(store.ok());
  auto revisions = (*store)->revisions("chat");
  ASSERT_TRUE(revisions.ok());
  ASSERT_EQ(revisions->size(), 1u);
  EXPECT_EQ((*revisions)[0].number, 3u);
  EXPECT_EQ((*revisions)[0].state, "s");
  const auto events = (*store)->past_events();
  ASSERT_EQ(events.size(), store::LocalStore::kMaxEvents);
  EXPECT_EQ(events.back().message, std::to_string(2 * store::LocalStore::kMaxEvents + 4));
  fs::remove_all(dir);
}

TEST(CanaryAnalysis, JudgesOnlyWithEnoughRequestsAndFailsOnABreachAtOnce) {
  api::CanaryAnalysis analysis;  // 20 requests, +5 points of errors, p99 ratios 1.5
  CanarySample canary, stable;
  ReplicaLoad load;
  load.requests = 10;
  load.failures = 5;
  canary.add(load);
  EXPECT_EQ(judge_step(analysis, canary, stable, 100, 10).kind, CanaryVerdict::kWait);
  canary.add(load);  // 20 requests, half failed
  load.failures = 1;
  stable.add(load);
  const CanaryVerdict failed = judge_step(analysis, canary, stable, 1, 10);
  EXPECT_EQ(failed.kind, CanaryVerdict::kFail);  // before the pause ends
  EXPECT_NE(failed.reason.find("50.0% of the canary's requests failed"), std::string::npos)
      << failed.reason;
  // Healthy, same latency: waits out the pause, then passes.
  CanarySample good, base;
  ReplicaLoad fast;
  fast.requests = 30;
  fast.ttft[3] = 30;  // 0.1-0.2 s
  fast.itl[2] = 300;  // 10-20 ms
  good.add(fast);
  base.add(fast);
  EXPECT_EQ(judge_step(analysis, good, base, 5, 10).kind, CanaryVerdict::kWait);
  EXPECT_EQ(judge_step(analysis, good, base, 10, 10).kind, CanaryVerdict::kPass);
  // Slow first tokens: 1-1.5 s against 0.1-0.2 s.
  CanarySample slow;
  ReplicaLoad late = fast;
  late.ttft = {};
  late.ttft[8] = 30;
  slow.add(late);
  const CanaryVerdict slow_verdict = judge_step(analysis, slow, base, 10, 10);
  EXPECT_EQ(slow_verdict.kind, CanaryVerdict::kFail);
  EXPECT_NE(slow_verdict.reason.find("TTFT p99"), std::string::npos) << slow_verdict.reason;
  analysis.max_ttft_p99_ratio.reset();  // off
  EXPECT_EQ(judge_step(analysis, slow, base, 10, 10).kind, CanaryVerdict::kPass);
  EXPECT_EQ(canary_replicas(4, 25), 1u);
  EXPECT_EQ(canary_replicas(4, 50), 2u);
  EXPECT_EQ(canary_replicas(3, 5), 1u);
  EXPECT_EQ(canary_replicas(0, 50), 0u);
}

constexpr const char* kCanary =
    "  rollout:\n    canary:\n      steps: [{weight: 25, pause: 10s}, {weight: 50, pause: 10s}]\n"
    "      analysis: {minRequests: 10}\n";

class CanaryTest : public RolloutTest {
 protected:
  // A load round: every ready replica got `requests`, of which the
  // canary's (revision 2) failed `canary_failures`.
  void traffic(uint64_t requests, uint64_t canary_failures) {
    LoadRound round;
    for (const auto& r : ctl_->replicas()) {
      if (r.state != ReplicaState::kReady) continue;
      ReplicaLoad& l = round.replicas[r.name];
      l.requests = requests;
      l.ttft[3] = requests;
      if (r.revision == 2) l.failures = canary_failures;
    }
    load_.next = std::move(round);
  }
  // Replicas not draining, by revision.
  std::map<uint32_t, int> by_revision() {
    std::map<uint32_t, int> out;
    for (const auto& [name, revision] : revisions()) ++out[revision];
    return out;
  }
  // One pass with traffic, engines starting and stopping as asked.
  void step(uint64_t requests, uint64_t canary_failures, std::chrono::milliseconds advance = 1s) {
    clock_.advance(advance);
    traffic(requests, canary_failures);
    pass();
  }
};

TEST_F(CanaryTest, AHealthyCanaryStepsThroughItsSharesAndIsPromoted) {
  apply(service(4, kCanary));
  controller();
  settle(5);
  apply(service(4, std::string(kCanary) + "  engine: {args: [--v2]}\n"));
  step(0, 0);
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{1, 4}, {2, 1}}));  // 25% of 4: one more
  step(0, 0);                                                           // the canary is ready
  std::string canary;
  for (const auto& [name, revision] : revisions())
    if (revision == 2) canary = name;
  EXPECT_EQ(runtime_.shares[canary], 25u);
  EXPECT_TRUE(ctl_->services().front().rollout.rolling);
  for (int i = 0; i < 12; ++i) step(5, 0);  // 10 s held, enough requests
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{1, 4}, {2, 2}}))
      << ctl_->services().front().rollout.message;
  for (int i = 0; i < 14; ++i) step(5, 0);
  settle();
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{2, 4}}));
  for (const auto& [name, share] : runtime_.shares) EXPECT_EQ(share, 0u) << name;
  const ServiceStatus status = ctl_->services().front();
  EXPECT_FALSE(status.rollout.rolling);
  EXPECT_FALSE(status.rollout.aborted);
  const std::string events = events_text(status);
  EXPECT_NE(events.find("step 1/2 (25%) passed"), std::string::npos) << events;
  EXPECT_NE(events.find("promoted after 2 steps"), std::string::npos) << events;
}

TEST_F(CanaryTest, AFailingCanaryRollsBackAtOnceAndStaysRolledBackAcrossARestart) {
  apply(service(4, kCanary));
  controller();
  settle(5);
  apply(service(4, std::string(kCanary) + "  engine: {args: [--bad]}\n"));
  step(0, 0);
  step(0, 0);
  step(6, 3);  // 6 requests: not judged yet
  EXPECT_EQ(by_revision()[2], 1);
  step(6, 3);  // 12, half failed: rolled back in this pass
  step(0, 0);
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{1, 4}}));
  ServiceStatus status = ctl_->services().front();
  EXPECT_TRUE(status.rollout.aborted);
  EXPECT_FALSE(status.rollout.rolling);
  EXPECT_NE(status.rollout.message.find("rolled back"), std::string::npos)
      << status.rollout.message;
  EXPECT_NE(status.rollout.message.find("50.0% of the canary's requests failed"), std::string::npos)
      << status.rollout.message;
  // A new controller does not try it again.
  restart_controller();
  settle(10);
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{1, 4}}));
  EXPECT_TRUE(ctl_->services().front().rollout.aborted);
  // Undo writes revision 1's spec back: nothing left to roll.
  ASSERT_TRUE(ctl_->undo("chat", 0).ok());
  settle(5);
  EXPECT_FALSE(ctl_->services().front().rollout.aborted);
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{3, 4}}));
}

// Editing the spec back to the stable revision while a canary runs: the
// canary's replica goes, the stable ones stay (they are not taken for a
// canary of their own revision).
TEST_F(CanaryTest, AnEditBackToTheStableSpecDropsTheCanary) {
  apply(service(4, kCanary));
  controller();
  settle(5);
  apply(service(4, std::string(kCanary) + "  engine: {args: [--v2]}\n"));
  step(0, 0);
  step(0, 0);
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{1, 4}, {2, 1}}));
  apply(service(4, kCanary));
  settle(5);
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{3, 4}}));  // revision 1, renumbered
}

TEST_F(CanaryTest, PauseHoldsAStepAndPromoteOrAbortEndItByHand) {
  apply(service(2, kCanary));
  controller();
  settle(5);
  EXPECT_EQ(ctl_->control_canary("chat", "pause").error().code, ErrorCode::kInvalidArgument);
  apply(service(2, std::string(kCanary) + "  engine: {args: [--v2]}\n"));
  step(0, 0);
  step(0, 0);
  ASSERT_TRUE(ctl_->control_canary("chat", "pause").ok());
  for (int i = 0; i < 15; ++i) step(5, 0);
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{1, 2}, {2, 1}}));  // held at step 1
  EXPECT_NE(ctl_->services().front().rollout.message.find("paused"), std::string::npos);
  ASSERT_TRUE(ctl_->control_canary("chat", "promote").ok());
  settle();
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{2, 2}}));
  apply(service(2, std::string(kCanary) + "  engine: {args: [--v3]}\n"));
  step(0, 0);
  step(0, 0);
  ASSERT_TRUE(ctl_->control_canary("chat", "abort").ok());
  settle(5);
  EXPECT_EQ(by_revision(), (std::map<uint32_t, int>{{2, 2}}));
  EXPECT_TRUE(ctl_->services().front().rollout.aborted);
}

class VersionedSourceTest : public RolloutTest {
 protected:
  static constexpr const char* kHubModel = R"(
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: m}
spec: {source: "hf://org/m"}
)";
};

TEST_F(VersionedSourceTest, NewBytesBehindTheSameSourceRollOutAndOldReplicasKeepTheirs) {
  apply(kHubModel);
  apply(service(2, "  rollout: {maxSurge: 1, maxUnavailable: 0}\n"));
  controller();
  settle(3);
  // Not resolved (unreachable): nothing starts, and the status says why.
  EXPECT_TRUE(runtime_.engines.empty());
  EXPECT_NE(ctl_->services().front().rollout.message.find(
                "cannot resolve hf://org/m: hf://org/m: unreachable"),
            std::string::npos)
      << ctl_->services().front().rollout.message;
  runtime_.sources["hf://org/m"] = kV1;
  clock_.advance(11s);  // past the retry
  settle(5);
  ASSERT_EQ(revisions(), (std::map<std::string, uint32_t>{{"chat-0", 1}, {"chat-1", 1}}));
  EXPECT_EQ(runtime_.model_versions["chat-0"], kV1);
  // The source now holds other bytes: a new revision, rolled out.
  runtime_.sources["hf://org/m"] = kV2;
  clock_.advance(300s);
  ctl_->pass();  // resolved again; the rollout starts
  clock_.advance(1s);
  pass();
  ASSERT_EQ(runtime_.model_versions.count("chat-2"), 1u);
  EXPECT_EQ(runtime_.model_versions["chat-2"], kV2);
  runtime_.engines["chat-2"].ready = false;  // it keeps starting
  runtime_.end("chat-0");                    // an old one fails and restarts at its own version
  clock_.advance(5s);
  ctl_->pass();
  clock_.advance(5s);
  ctl_->pass();
  EXPECT_EQ(runtime_.model_versions["chat-0"], kV1);
  EXPECT_EQ(replica("chat-0").revision, 1u);
  settle();
  EXPECT_EQ(revisions().size(), 2u);
  for (const auto& [name, revision] : revisions()) {
    EXPECT_EQ(revision, 2u) << name;
    EXPECT_EQ(runtime_.model_versions[name], kV2) << name;
  }
  auto history = ctl_->history("chat");
  ASSERT_TRUE(history.ok());
  ASSERT_EQ(history->size(), 2u);
  EXPECT_NE(history->back().model.find(std::string("version ") + kV2), std::string::npos)
      << history->back().model;
  // A new controller knows the version from the history before it resolves
  // again, even when it cannot: nothing restarts.
  runtime_.sources.erase("hf://org/m");
  const int launches = runtime_.launches;
  restart_controller();
  settle(5);
  for (const auto& [name, revision] : revisions()) EXPECT_EQ(revision, 2u) << name;
  EXPECT_EQ(runtime_.launches, launches);
}

// Replicas of a revision recorded before model versions existed (no
// version in it) are taken to run the version first resolved: upgrading
// restarts nothing; new bytes later roll out; and undo will not pretend to
// bring old bytes back.
TEST_F(VersionedSourceTest, ARevisionFromBeforeVersionsIsKeptUntilTheBytesChange) {
  apply(kHubModel);
  apply(service(1));
  const auto stored_svc = std::get<api::InferenceService>(*store_.get("InferenceService", "chat"));
  const auto stored_model = std::get<api::Model>(*store_.get("Model", "m"));
  Revision legacy;
  legacy.hash = revision_hash(stored_svc, &stored_model);
  legacy.number = 1;
  legacy.service = stored_svc;
  legacy.model = stored_model;
  store_.history["chat"][legacy.hash] = {legacy.hash, 1, encode_revision(legacy), ""};
  runtime_.left_running.push_back(
      {.replica = "chat-0", .service = "chat", .node = "local", .revision = legacy.hash});
  runtime_.engines["chat-0"] = {.exists = true, .staged = true, .started = true};
  runtime_.sources["hf://org/m"] = kV1;
  controller();
  const int launches = runtime_.launches;
  settle(5);
  EXPECT_EQ(runtime_.launches, launches);  // nothing restarted
  EXPECT_EQ(revisions(), (std::map<std::string, uint32_t>{{"chat-0", 1}}));
  runtime_.sources["hf://org/m"] = kV2;
  clock_.advance(300s);
  settle();
  ASSERT_EQ(revisions().size(), 1u);
  EXPECT_EQ(revisions().begin()->second, 2u);
  EXPECT_EQ(runtime_.model_versions[revisions().begin()->first], kV2);
  auto undo = ctl_->undo("chat", 0);
  ASSERT_TRUE(undo.ok()) << undo.error().message;  // revision 1 has no version: specs only
  settle(5);
  // Revision 2 (kV2) cannot come back once the source holds other bytes.
  runtime_.sources["hf://org/m"] = "3333333333333333";
  clock_.advance(300s);
  settle();
  auto refused = ctl_->undo("chat", 2);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("which now holds version 3333333333333333"),
            std::string::npos)
      << refused.error().message;
}
}  // namespace
}  // namespace loadstar::controller
