// The reconciler driven pass by pass with fakes of everything it works on:
// an in-memory store, a runtime whose engines the test starts and ends, a
// load source the test fills, and a clock the test moves. Each test checks
// what the controller did (launches, stops, what it published) and what it
// reports, as Kubernetes controllers are tested.
#include <thread>

#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include <fmt/ranges.h>

#include "controller/controller.h"

namespace loadstar::controller {
namespace {

using namespace std::chrono_literals;

class FakeStore : public store::ResourceStore {
 public:
  std::vector<api::Resource> list() const override {
    std::vector<api::Resource> out;
    for (const auto& [key, r] : objects_) out.push_back(r);
    return out;
  }
  std::optional<api::Resource> get(std::string_view kind, std::string_view name) const override {
    auto it = objects_.find({std::string(kind), std::string(name)});
    if (it == objects_.end()) return std::nullopt;
    return it->second;
  }
  Status apply(const api::Resource& r) override {
    objects_[{std::string(api::kind_of(r)), api::metadata_of(r).name}] = r;
    return ok_status();
  }
  Status remove(std::string_view kind, std::string_view name) override {
    objects_.erase({std::string(kind), std::string(name)});
    return ok_status();
  }
  uint64_t revision() const override { return 0; }
  std::shared_ptr<void> watch(store::WatchCallback) override { return nullptr; }
  void publish_status(std::string_view, std::string_view name, const std::string& json) override {
    statuses[std::string(name)] = json;
  }
  std::map<std::string, std::string> statuses;

 private:
  std::map<std::pair<std::string, std::string>, api::Resource> objects_;
};

// Engines exist from launch until the test ends them; what the controller
// asked is written to a log shared with the publish callback, so tests can
// check the order of things.
class FakeRuntime : public EngineRuntime {
 public:
  explicit FakeRuntime(std::vector<std::string>& log) : log_(log) {}
  Status launch(const EngineLaunch& l) override {
    log_.push_back("launch " + l.replica);
    EngineStatus& st = engines[l.replica];
    st = {};
    st.exists = st.staged = st.started = true;
    st.message = "loading";
    nodes[l.replica] = l.node + " " + l.devices;
    std::this_thread::sleep_for(launch_cost);
    return ok_status();
  }
  EngineStatus status(const std::string& replica) override {
    auto it = engines.find(replica);
    if (it == engines.end()) return {.exists = false, .exited = true, .message = "exited"};
    return it->second;
  }
  void stop(const std::string& replica) override { log_.push_back("stop " + replica); }
  void unroute(const std::string& replica) override { log_.push_back("unroute " + replica); }
  void kill(const std::string& replica) override { engines.erase(replica); }

  void make_ready(const std::string& replica, uint16_t port) {
    EngineStatus& st = engines.at(replica);
    st.ready = true;
    st.host = "127.0.0.1";
    st.port = port;
  }
  void end(const std::string& replica) { engines.erase(replica); }
  bool engines_outlive_controller() const override { return true; }
  std::vector<ExistingEngine> existing() override { return left_running; }

  std::map<std::string, EngineStatus> engines;
  std::vector<ExistingEngine> left_running;  // by a controller before this one
  std::map<std::string, std::string> nodes;  // where each launch was placed
  std::chrono::milliseconds launch_cost{0};  // wall time each launch takes (an API write)

 private:
  std::vector<std::string>& log_;
};

class FakeLoad : public LoadSource {
 public:
  std::optional<LoadRound> take() override { return std::exchange(next, std::nullopt); }
  void on_demand(std::function<void()>) override {}
  std::optional<LoadRound> next;
};

class FakeClock : public Clock {
 public:
  time_point now() const override { return now_; }
  std::chrono::system_clock::time_point wall() const override {
    return std::chrono::system_clock::time_point{} + (now_ - time_point{});
  }
  void advance(std::chrono::milliseconds d) { now_ += d; }

 private:
  time_point now_ = time_point{} + 1000s;
};

constexpr const char* kModel = R"(
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: m}
spec: {source: "synth://m", size: 1Mi}
)";

std::string service(uint32_t replicas, const std::string& extra = "") {
  return fmt::format(R"(
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  model: m
  replicas: {}
{})",
                     replicas, extra);
}

// A Node n1 with `gpus` A100s.
std::string gpu_node(int gpus) {
  return fmt::format(R"(
apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {{name: n1}}
spec:
  cpu: 8
  memory: 32Gi
  gpus: [{{model: A100-80GB, memory: 80Gi, count: {}}}]
)",
                     gpus);
}

class ControllerTest : public ::testing::Test {
 protected:
  void SetUp() override { apply(kModel); }

  void apply(const std::string& yaml) {
    auto resources = api::decode_resources(yaml, "test.yaml");
    ASSERT_TRUE(resources.ok()) << resources.error().message;
    for (const auto& r : *resources) ASSERT_TRUE(store_.apply(r).ok());
  }
  Controller& controller(ControllerOptions options = {}) {
    ctl_ = std::make_unique<Controller>(
        store_, runtime_, &load_, clock_, options, [this](const routing::RoutingInputs& in) {
          std::vector<std::string> ready;
          for (const auto& [svc, replicas] : in.ready)
            for (const auto& r : replicas) ready.push_back(r.replica);
          log_.push_back(fmt::format("publish [{}]", fmt::join(ready, " ")));
        });
    return *ctl_;
  }
  ReplicaStatus replica(const std::string& name) {
    for (auto& r : ctl_->replicas())
      if (r.name == name) return r;
    ADD_FAILURE() << "no replica " << name;
    return {};
  }
  size_t count(const std::string& entry) const {
    return std::count(log_.begin(), log_.end(), entry);
  }
  std::ptrdiff_t position(const std::string& entry) const {
    return std::find(log_.begin(), log_.end(), entry) - log_.begin();
  }
  // A load round in which `in_flight` requests run on each named replica.
  void load(std::map<std::string, int64_t> in_flight, std::set<std::string> demand = {}) {
    LoadRound round;
    for (const auto& [name, n] : in_flight) round.replicas[name].in_flight = n;
    round.demand = std::move(demand);
    load_.next = std::move(round);
  }

  std::vector<std::string> log_;
  FakeStore store_;
  FakeRuntime runtime_{log_};
  FakeLoad load_;
  FakeClock clock_;
  std::unique_ptr<Controller> ctl_;
};

TEST_F(ControllerTest, ReplicasStartWhenPlacedAndArePublishedWhenReady) {
  apply(service(2));
  Controller& ctl = controller();
  ctl.pass();
  EXPECT_EQ(count("launch chat-0"), 1u);
  EXPECT_EQ(count("launch chat-1"), 1u);
  EXPECT_EQ(replica("chat-0").state, ReplicaState::kStarting);
  EXPECT_EQ(count("publish []"), 1u);  // the service is routable (requests wait)

  clock_.advance(250ms);
  runtime_.make_ready("chat-0", 9000);
  runtime_.make_ready("chat-1", 9001);
  ctl.pass();
  EXPECT_EQ(log_.back(), "publish [chat-0 chat-1]");
  const ReplicaStatus r = replica("chat-0");
  EXPECT_EQ(r.state, ReplicaState::kReady);
  EXPECT_EQ(r.port, 9000);
  // The cold start's timeline ran from queued to routed.
  ASSERT_TRUE(r.timeline[kRouted].has_value());
  EXPECT_DOUBLE_EQ(*r.timeline[kReady], 0.25);
  EXPECT_NE(
      ctl.scheduler_metrics().find("loadstar_cold_start_phase_seconds_count{phase=\"total\"} 2"),
      std::string::npos)
      << ctl.scheduler_metrics();
  ctl.pass();  // nothing changed: nothing published again
  EXPECT_EQ(count("publish [chat-0 chat-1]"), 1u);
}

TEST_F(ControllerTest, APassStopsLaunchingAtItsBudgetAndTheNextGoesOn) {
  apply(service(10));
  runtime_.launch_cost = 20ms;
  Controller& ctl = controller({.launch_budget_s = 0.03});
  auto launched = [&] {
    return std::count_if(log_.begin(), log_.end(),
                         [](const std::string& e) { return e.starts_with("launch "); });
  };
  ctl.pass();
  // Two launches fit in 30 ms of 20 ms each (the rest of a pass takes far
  // less than a quarter of that); at least one always does.
  EXPECT_GE(launched(), 1);
  EXPECT_LT(launched(), 10);
  EXPECT_EQ(replica("chat-9").state, ReplicaState::kPending);
  for (int i = 0; i < 10 && launched() < 10; ++i) ctl.pass();
  EXPECT_EQ(launched(), 10);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(count(fmt::format("launch chat-{}", i)), 1u);
}

TEST_F(ControllerTest, ADrainedReplicaStopsOnlyAfterTheTableWithoutItWentOutAndTheGracePassed) {
  apply(service(2));
  Controller& ctl = controller({.drain_timeout_s = 30, .unroute_grace_s = 0.5});
  ctl.pass();
  runtime_.make_ready("chat-0", 9000);
  runtime_.make_ready("chat-1", 9001);
  ctl.pass();
  // Scale to one while a request runs on chat-1.
  apply(service(1));
  load({{"chat-0", 0}, {"chat-1", 1}});
  ctl.pass();
  EXPECT_EQ(replica("chat-1").state, ReplicaState::kTerminating);
  EXPECT_EQ(log_.back(), "publish [chat-0]");
  EXPECT_LT(position("unroute chat-1"), position("publish [chat-0]"));
  EXPECT_EQ(count("stop chat-1"), 0u);

  // Its request finishes at once, but gateway workers may still hold the
  // old table: not stopped within the grace.
  clock_.advance(200ms);
  load({{"chat-0", 0}});
  ctl.pass();
  EXPECT_EQ(count("stop chat-1"), 0u);

  // Past the grace with a request in flight again: still not.
  clock_.advance(400ms);
  load({{"chat-0", 0}, {"chat-1", 1}});
  ctl.pass();
  EXPECT_EQ(count("stop chat-1"), 0u);
  EXPECT_EQ(replica("chat-1").in_flight, 1);

  // Done, past the grace: stopped, after the table without it.
  clock_.advance(100ms);
  load({{"chat-0", 0}});
  ctl.pass();
  EXPECT_EQ(count("stop chat-1"), 1u);
  EXPECT_LT(position("publish [chat-0]"), position("stop chat-1"));
  ctl.pass();
  EXPECT_EQ(count("stop chat-1"), 1u);  // asked once
  runtime_.end("chat-1");
  ctl.pass();
  EXPECT_EQ(ctl.replicas().size(), 1u);
}

TEST_F(ControllerTest, ADrainThatNeverEmptiesEndsAtTheDrainTimeout) {
  apply(service(1));
  Controller& ctl = controller({.drain_timeout_s = 5});
  ctl.pass();
  runtime_.make_ready("chat-0", 9000);
  ctl.pass();
  ASSERT_TRUE(store_.remove("InferenceService", "chat").ok());
  load({{"chat-0", 3}});
  ctl.pass();
  clock_.advance(4s);
  load({{"chat-0", 3}});
  ctl.pass();
  EXPECT_EQ(count("stop chat-0"), 0u);
  clock_.advance(2s);
  load({{"chat-0", 3}});
  ctl.pass();
  EXPECT_EQ(count("stop chat-0"), 1u);
}

TEST_F(ControllerTest, AnEngineThatExitsIsRestartedWithBackoff) {
  apply(service(1));
  Controller& ctl = controller({.restart_backoff_s = 1, .restart_backoff_max_s = 30});
  ctl.pass();
  runtime_.make_ready("chat-0", 9000);
  ctl.pass();
  runtime_.end("chat-0");
  ctl.pass();
  ReplicaStatus r = replica("chat-0");
  EXPECT_EQ(r.state, ReplicaState::kFailed);
  EXPECT_EQ(r.restarts, 1u);
  EXPECT_NE(r.message.find("restarting in 1s"), std::string::npos) << r.message;
  EXPECT_EQ(log_.back(), "publish []");  // out of the table at once
  clock_.advance(900ms);
  ctl.pass();
  EXPECT_EQ(count("launch chat-0"), 1u);
  clock_.advance(200ms);
  ctl.pass();
  EXPECT_EQ(count("launch chat-0"), 2u);
  EXPECT_EQ(replica("chat-0").starts, 2u);
  // The second failure waits twice as long.
  runtime_.end("chat-0");
  ctl.pass();
  EXPECT_NE(replica("chat-0").message.find("restarting in 2s"), std::string::npos);
}

TEST_F(ControllerTest, AReplicaThatFitsNowhereWaitsWithTheSchedulersReason) {
  apply(gpu_node(1));
  apply(service(2, "  resources: {gpu: {count: 1}}\n"));
  Controller& ctl = controller();
  ctl.pass();
  EXPECT_EQ(count("launch chat-0"), 1u);
  EXPECT_EQ(runtime_.nodes["chat-0"], "n1 gpu0");
  EXPECT_EQ(count("launch chat-1"), 0u);
  const ReplicaStatus r = replica("chat-1");
  EXPECT_EQ(r.state, ReplicaState::kPending);
  EXPECT_NE(r.message.find("insufficient GPU"), std::string::npos) << r.message;
  EXPECT_TRUE(r.node.empty());
  EXPECT_NE(store_.statuses["chat"].find("insufficient GPU"), std::string::npos);
}

TEST_F(ControllerTest, TheBookkeepingFollowsTheCardsTheKubeletHandedOut) {
  apply(gpu_node(3));
  apply(service(2, "  resources: {gpu: {count: 1}}\n"));
  Controller& ctl = controller();
  ctl.pass();
  const std::string a = replica("chat-0").devices, b = replica("chat-1").devices;
  ASSERT_FALSE(a.empty());
  ASSERT_NE(a, b);
  const int card_a = a.back() - '0', card_b = b.back() - '0';
  // The kubelet handed them each other's cards: one replica's report alone
  // cannot move (its card is booked to the other), both together swap.
  runtime_.engines["chat-0"].cards = {card_b};
  ctl.pass();
  EXPECT_EQ(replica("chat-0").devices, a);
  runtime_.engines["chat-1"].cards = {card_a};
  ctl.pass();
  EXPECT_EQ(replica("chat-0").devices, b);
  EXPECT_EQ(replica("chat-1").devices, a);
  EXPECT_NE(ctl.scheduler_metrics().find("loadstar_controller_device_moves_total 2"),
            std::string::npos)
      << ctl.scheduler_metrics();
  // A card booked to nobody: the replica moves there alone, and a third
  // replica is placed on the card it left.
  const int free_card = 3 - card_a - card_b;
  runtime_.engines["chat-1"].cards = {free_card};
  ctl.pass();
  EXPECT_EQ(replica("chat-1").devices, fmt::format("gpu{}", free_card));
  apply(service(3, "  resources: {gpu: {count: 1}}\n"));
  ctl.pass();
  EXPECT_EQ(runtime_.nodes["chat-2"], fmt::format("n1 gpu{}", card_a));
  // Nothing moves the engines: no stop, no launch again.
  EXPECT_EQ(count("stop chat-0") + count("stop chat-1"), 0u);
  EXPECT_EQ(count("launch chat-0"), 1u);
}

TEST(SharesOn, MovesEachShareOntoTheCardGivenInOrderAndKeepsItsAmount) {
  const std::vector<DeviceShare> two = {{3, 1000, 0}, {1, 1000, 0}};
  auto moved = shares_on(two, {2, 0});
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->at(0).device, 0);
  EXPECT_EQ(moved->at(1).device, 2);
  auto fraction = shares_on({{0, 500, 0}}, {1});
  ASSERT_TRUE(fraction.has_value());
  EXPECT_EQ(fraction->at(0).milli, 500u);
  EXPECT_FALSE(shares_on(two, {1, 3}).has_value());       // already there
  EXPECT_FALSE(shares_on(two, {1}).has_value());          // not one another's
  EXPECT_FALSE(shares_on(two, {}).has_value());           // nothing known
  EXPECT_FALSE(shares_on({{0, 0, 3}}, {1}).has_value());  // MIG slices are not cards
}

TEST_F(ControllerTest, AnIdleServiceScalesToZeroAndAHeldRequestBringsItBack) {
  apply(service(1, "  minReplicas: 0\n  idleTimeout: 10s\n"));
  Controller& ctl = controller();
  ctl.pass();
  EXPECT_TRUE(ctl.replicas().empty());  // never asked for yet
  load({}, {"chat"});
  ctl.pass();
  EXPECT_EQ(count("launch chat-0"), 1u);
  runtime_.make_ready("chat-0", 9000);
  clock_.advance(1s);
  load({{"chat-0", 1}});
  ctl.pass();
  // Busy or not, within the idle window it stays.
  clock_.advance(9s);
  load({{"chat-0", 0}});
  ctl.pass();
  EXPECT_EQ(replica("chat-0").state, ReplicaState::kReady);
  clock_.advance(2s);
  load({{"chat-0", 0}});
  ctl.pass();
  EXPECT_EQ(replica("chat-0").state, ReplicaState::kTerminating);
}

// A new leader takes over a running replica of a service that may scale to
// zero: it does not know how long the service has been idle, so the idle
// window starts at takeover; neither drained at once nor duplicated.
TEST_F(ControllerTest, ATakenOverReplicaIsIdleOnlyFromTheTakeover) {
  apply(service(1, "  minReplicas: 0\n  idleTimeout: 10s\n"));
  runtime_.left_running = {{.replica = "chat-0", .service = "chat", .node = "local", .index = 0}};
  runtime_.engines["chat-0"] = {.exists = true, .staged = true, .started = true};
  runtime_.make_ready("chat-0", 9000);
  Controller& ctl = controller();
  ctl.pass();
  load({{"chat-0", 0}});
  clock_.advance(1s);
  ctl.pass();
  EXPECT_EQ(replica("chat-0").state, ReplicaState::kReady);
  EXPECT_EQ(count("stop chat-0"), 0u);
  EXPECT_EQ(ctl.replicas().size(), 1u);
  EXPECT_EQ(count("launch chat-1"), 0u);
  clock_.advance(10s);
  load({{"chat-0", 0}});
  ctl.pass();
  EXPECT_EQ(replica("chat-0").state, ReplicaState::kTerminating);
}

TEST_F(ControllerTest, WithoutLoadSignalsServicesRunAtTheirDeclaredSize) {
  apply(service(2, "  minReplicas: 0\n  idleTimeout: 1s\n"));
  ctl_ =
      std::make_unique<Controller>(store_, runtime_, nullptr, clock_, ControllerOptions{}, nullptr);
  ctl_->pass();
  clock_.advance(5s);
  ctl_->pass();
  EXPECT_EQ(ctl_->replicas().size(), 2u);
  EXPECT_EQ(ctl_->services().front().desired, 2u);
}

TEST_F(ControllerTest, AnEngineThatNeverAnswersIsStoppedAtTheStartTimeout) {
  apply(service(1));
  Controller& ctl = controller({.start_timeout_s = 60});
  ctl.pass();
  clock_.advance(59s);
  ctl.pass();
  EXPECT_EQ(count("stop chat-0"), 0u);
  clock_.advance(2s);
  ctl.pass();
  EXPECT_EQ(count("stop chat-0"), 1u);
  EXPECT_EQ(replica("chat-0").message, "did not become healthy in time");
}

}  // namespace
}  // namespace loadstar::controller
