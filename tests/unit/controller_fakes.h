// Fakes of everything the controller works on, and a fixture that drives it
// pass by pass: an in-memory store (with rollout history), a runtime whose
// engines the test starts and ends, a load source the test fills, and a
// clock the test moves.
#pragma once

#include <thread>

#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include <fmt/ranges.h>

#include "controller/controller.h"

namespace loadstar::controller::fakes {

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
    ++revision_;
    return ok_status();
  }
  Status remove(std::string_view kind, std::string_view name) override {
    objects_.erase({std::string(kind), std::string(name)});
    ++revision_;
    return ok_status();
  }
  uint64_t revision() const override { return revision_; }
  Result<std::vector<store::RevisionRecord>> revisions(std::string_view service) const override {
    std::vector<store::RevisionRecord> out;
    if (auto it = history.find(std::string(service)); it != history.end())
      for (const auto& [hash, record] : it->second) out.push_back(record);
    return out;
  }
  Status save_revision(std::string_view service, const store::RevisionRecord& record) override {
    history[std::string(service)][record.hash] = record;
    return ok_status();
  }
  Status remove_revision(std::string_view service, std::string_view hash) override {
    history[std::string(service)].erase(std::string(hash));
    return ok_status();
  }
  // Rollout history by service and hash.
  std::map<std::string, std::map<std::string, store::RevisionRecord>> history;
  std::shared_ptr<void> watch(store::WatchCallback) override { return nullptr; }
  void publish_status(std::string_view, std::string_view name, const std::string& json) override {
    statuses[std::string(name)] = json;
  }
  std::map<std::string, std::string> statuses;

 private:
  std::map<std::pair<std::string, std::string>, api::Resource> objects_;
  uint64_t revision_ = 0;
};

// Engines exist from launch until the test ends them; what the controller
// asked is written to a log shared with the publish callback, so tests can
// check the order of things.
class FakeRuntime : public EngineRuntime {
 public:
  explicit FakeRuntime(std::vector<std::string>& log) : log_(log) {}
  Status launch(const EngineLaunch& l) override {
    log_.push_back("launch " + l.replica);
    ++launches;
    EngineStatus& st = engines[l.replica];
    st = {};
    st.exists = st.staged = st.started = true;
    st.message = "loading";
    nodes[l.replica] = l.node + " " + l.devices;
    revisions[l.replica] = l.revision;
    model_versions[l.replica] = l.model_version;
    args[l.replica] = fmt::format("{}", fmt::join(l.service->spec.engine.args, " "));
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
  void route_share(const std::string& replica, uint32_t weight) override {
    shares[replica] = weight;
  }
  void kill(const std::string& replica) override { engines.erase(replica); }

  void make_ready(const std::string& replica, uint16_t port) {
    EngineStatus& st = engines.at(replica);
    st.ready = true;
    st.host = "127.0.0.1";
    st.port = port;
  }
  void end(const std::string& replica) { engines.erase(replica); }
  bool engines_outlive_controller() const override { return true; }
  Result<std::string> resolve_version(const std::string& source) override {
    ++resolves[source];
    auto it = sources.find(source);
    if (it == sources.end()) return make_error(ErrorCode::kUnavailable, "{}: unreachable", source);
    return it->second;
  }
  std::vector<ExistingEngine> existing() override { return left_running; }

  std::map<std::string, EngineStatus> engines;
  std::vector<ExistingEngine> left_running;           // by a controller before this one
  std::map<std::string, std::string> nodes;           // where each launch was placed
  std::map<std::string, std::string> revisions;       // each launch's revision
  std::map<std::string, std::string> model_versions;  // each launch's model version
  std::map<std::string, std::string> sources;  // what each source resolves to; absent: unreachable
  std::map<std::string, int> resolves;         // resolve_version calls, by source
  int launches = 0;
  std::map<std::string, std::string> args;   // each launch's engine arguments
  std::map<std::string, uint32_t> shares;    // canary weights, as last set
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

inline std::string service(uint32_t replicas, const std::string& extra = "") {
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

// A Node with one H100 in `rack`.
inline std::string rack_node(const std::string& name, const std::string& rack,
                             bool schedulable = true) {
  return fmt::format(R"(
apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {{name: {}}}
spec:
  cpu: 32
  memory: 256Gi
  gpus: [{{model: H100, memory: 80Gi, count: 1}}]
  topology: {{rack: {}}}
  schedulable: {}
---
)",
                     name, rack, schedulable);
}

// A Node n1 with `gpus` A100s.
inline std::string gpu_node(int gpus) {
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

}  // namespace loadstar::controller::fakes
