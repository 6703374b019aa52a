// The reconciler driven pass by pass with fakes of everything it works on:
// an in-memory store, a runtime whose engines the test starts and ends, a
// load source the test fills, and a clock the test moves. Each test checks
// what the controller did (launches, stops, what it published) and what it
// reports, as Kubernetes controllers are tested.
#include "controller_fakes.h"

namespace loadstar::controller {
namespace {

using namespace std::chrono_literals;
using namespace fakes;

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

// Requests the gateways turned away (its one replica saturated, the queue
// full) are activity: the service is busy, not idle, though none was sent;
// with a fixed size and with an autoscaler alike.
class TurnedAwayTest : public ControllerTest {
 protected:
  void keeps_the_service_busy(const std::string& autoscaling) {
    apply(service(1, "  minReplicas: 0\n  idleTimeout: 10s\n" + autoscaling));
    Controller& ctl = controller();
    load({}, {"chat"});
    ctl.pass();
    runtime_.make_ready("chat-0", 9000);
    for (int i = 0; i < 4; ++i) {  // 12 s, past the idle timeout
      clock_.advance(3s);
      load({{"chat-0", 0}});
      load_.next->turned_away["chat"] = 5;
      ctl.pass();
    }
    EXPECT_EQ(replica("chat-0").state, ReplicaState::kReady);
    for (int i = 0; i < 4; ++i) {  // then 12 s with nothing
      clock_.advance(3s);
      load({{"chat-0", 0}});
      ctl.pass();
    }
    EXPECT_EQ(replica("chat-0").state, ReplicaState::kTerminating);
  }
};

TEST_F(TurnedAwayTest, RequestsTurnedAwayAtTheGatewayKeepAFixedSizeServiceFromIdling) {
  keeps_the_service_busy("");
}

TEST_F(TurnedAwayTest, RequestsTurnedAwayAtTheGatewayKeepAnAutoscaledServiceFromIdling) {
  keeps_the_service_busy(
      "  autoscaling: {maxReplicas: 2, scaleDownStabilization: 1s, targets: {inFlightPerReplica: "
      "4}}\n");
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

namespace loadstar::controller {
namespace {

using namespace fakes;
using namespace std::chrono_literals;

// A disaggregated service runs as two services to the controller; its pools'
// replicas are drawn together (their KV crosses between them): a prefill
// replica goes to the rack its decode replica is in, not to the first free node.
TEST_F(ControllerTest, ADisaggregatedServicesPoolsArePlacedNearEachOther) {
  // Four like nodes in two racks; the first rack closed while the decode
  // replica is placed, so that it lands in the second.
  auto nodes = [](bool first_rack_open) {
    return rack_node("n1", "r1", first_rack_open) + rack_node("n2", "r1", first_rack_open) +
           rack_node("n3", "r2") + rack_node("n4", "r2");
  };
  const std::string gpu = "  resources: {gpu: {count: 1}}\n";
  apply(nodes(false) + service(1, gpu + "  prefill: {replicas: 0}\n"));
  Controller& ctl = controller();
  ctl.pass();
  const std::string decode_node = replica("chat-0").node;
  ASSERT_TRUE(decode_node == "n3" || decode_node == "n4") << decode_node;
  // Every node open again, and a prefill replica: of three like nodes it
  // takes the one in its decode replica's rack.
  apply(nodes(true) + service(1, gpu + "  prefill: {replicas: 1}\n"));
  ctl.pass();
  EXPECT_EQ(replica("chat-prefill-0").node, decode_node == "n3" ? "n4" : "n3");
  EXPECT_EQ(count("launch chat-prefill-0"), 1u);
}

// A controller that takes over a running multi-node replica keeps every
// pod of it where it runs: its other node's GPU stays taken, so a new
// replica goes to the free node, and nothing is started twice.
TEST_F(ControllerTest, ATakenOverMultiNodeReplicaKeepsEveryNodeOfItsGroup) {
  const std::string nodes = rack_node("n1", "r1") + rack_node("n2", "r1") + rack_node("n3", "r2");
  apply(nodes + service(1, R"(  engine: {name: engine-sim}
  resources: {gpu: {count: 1}}
  multiNode: {size: 2, topology: rack}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: solo}
spec:
  model: m
  replicas: 1
  resources: {gpu: {count: 1}}
)"));
  runtime_.left_running = {{.replica = "chat-0",
                            .service = "chat",
                            .node = "n1",
                            .index = 0,
                            .shares = {{0, 1000, 0}},
                            .members = {{"n2", "", {{0, 1000, 0}}}}}};
  runtime_.engines["chat-0"] = {.exists = true, .staged = true, .started = true};
  runtime_.make_ready("chat-0", 9000);
  Controller& ctl = controller();
  ctl.pass();
  EXPECT_EQ(count("launch chat-0"), 0u);
  EXPECT_EQ(replica("chat-0").state, ReplicaState::kReady);
  EXPECT_EQ(replica("solo-0").node, "n3");
}

}  // namespace
}  // namespace loadstar::controller
