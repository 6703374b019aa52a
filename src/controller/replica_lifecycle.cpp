// One replica's lifecycle, as the controller's pass drives it: launched
// where it was placed (its revision, model version, adapters and group),
// observed through its runtime (staged, started, ready, exited with its
// own last words, restarted with backoff), drained out of routing and
// stopped. The pass itself (what should exist, where, how many) is
// controller.cpp's.
#include <algorithm>
#include <chrono>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "controller/controller.h"
#include "controller/replica.h"

namespace loadstar::controller {

void Controller::mark(Replica& r, ColdStartEvent event, Clock::time_point at) {
  if (r.cold_start.mark(event, at)) cold_starts_.record(r.cold_start);
}

void Controller::launch(Replica& r) {
  if (!services_.count(r.service)) return;
  // A replica runs its own revision; one never started, or whose revision
  // the history no longer has, the current one.
  if (!r.revision || r.revision->number == 0) {
    auto current = current_.find(r.service);
    if (current == current_.end()) return;  // its model's source is being resolved
    r.revision = current->second;
  }
  const Revision& rev = *r.revision;
  if (!rev.model) {
    r.state = ReplicaState::kPending;
    r.message = fmt::format("Model '{}' does not exist", rev.service.spec.model);
    return;
  }
  const Placed* where = placement_.where(r.name);
  if (!where) return;
  EngineLaunch launch;
  launch.replica = r.name;
  launch.index = r.index;
  launch.service = &rev.service;
  launch.model = &*rev.model;
  launch.revision = rev.hash;
  launch.model_version = rev.model_version;
  // Adapters loaded at start must all be there; on demand, the gateway
  // loads each where it is asked for (routing_if_changed gives it the paths).
  if (rev.service.spec.lora && !rev.service.spec.lora->on_demand)
    for (const std::string& name : rev.service.spec.lora->adapters) {
      auto adapter = store_.get("Model", name);
      const api::Model* m = adapter ? std::get_if<api::Model>(&*adapter) : nullptr;
      if (!m || m->spec.adapter_of != rev.service.spec.model) {
        r.state = ReplicaState::kPending;
        r.message = m ? fmt::format("Model '{}' is not an adapter of '{}' (spec.adapterOf)", name,
                                    rev.service.spec.model)
                      : fmt::format("adapter Model '{}' does not exist", name);
        return;
      }
      launch.adapters.push_back(*m);
    }
  launch.node = where->node;
  launch.devices = where->devices;
  launch.shares = where->shares;
  const std::vector<Placed>& members = placement_.members(r.name);
  for (size_t i = 1; i < members.size(); ++i)
    launch.members.push_back({members[i].node, members[i].devices, members[i].shares});
  if (auto node = store_.get("Node", where->node))
    if (const auto* n = std::get_if<api::Node>(&*node); n && !n->spec.gpus.empty())
      launch.device_replicas = n->spec.gpus.front().replicas;
  Status started = runtime_.launch(launch);
  if (!started.ok() && started.error().code == ErrorCode::kUnavailable) {
    r.state = ReplicaState::kPending;
    r.message = started.error().message;
    return;
  }
  if (!started.ok()) {
    r.state = ReplicaState::kFailed;
    r.message = started.error().message;
    r.next_restart = clock_.now() + std::chrono::seconds(1);
    return;
  }
  r.launched = true;
  r.ever_launched = true;
  r.stop_sent = false;
  r.state = ReplicaState::kStarting;
  r.port = 0;
  r.launched_at = clock_.now();
  r.start_s.reset();
  r.message = "starting";
  observe(r);  // a local engine is staged and started by now
}

void Controller::observe(Replica& r) {
  if (!r.launched) return;
  const EngineStatus st = runtime_.status(r.name);
  r.pid = st.pid;
  if (!st.cards.empty()) cards_[r.name] = st.cards;
  const auto now = clock_.now();
  if (!st.exists) {
    r.launched = false;
    r.pid = 0;
    if (r.state == ReplicaState::kTerminating) return;
    const double backoff =
        std::min(options_.restart_backoff_max_s,
                 options_.restart_backoff_s * static_cast<double>(1u << std::min(r.restarts, 10u)));
    r.message = fmt::format("{}; restarting in {:.0f}s", st.message, backoff);
    spdlog::warn("replica {}: {}", r.name, r.message);
    const char* reason = r.state == ReplicaState::kReady ? "EngineExited" : "StartFailed";
    events_.warning(r.service, reason, fmt::format("replica {}: {}", r.name, st.message));
    ++replica_failures_[{r.service, reason}];
    r.host.clear();
    r.port = 0;
    r.state = ReplicaState::kFailed;
    r.next_restart = now + std::chrono::milliseconds(static_cast<int64_t>(backoff * 1000));
    ++r.restarts;
    r.cold_start.restart(now);
    mark(r, kPlaced, now);  // it keeps its place
    return;
  }
  if (r.state != ReplicaState::kStarting && r.state != ReplicaState::kReady) return;
  if (st.staged) mark(r, kStaged, now);
  if (st.started) mark(r, kStarted, now);
  if (r.state == ReplicaState::kStarting) {
    if (st.ready) {
      r.state = ReplicaState::kReady;
      r.ready_pass = passes_ + 1;  // this pass's number, counted at its end
      r.host = st.host;
      r.port = st.port;
      r.kv_events = st.kv_events;
      r.start_s = seconds_between(r.launched_at, now);
      mark(r, kReady, now);
      r.message.clear();
      spdlog::info("replica {}: ready at {}:{} after {:.2f}s", r.name, st.host, st.port,
                   *r.start_s);
      return;
    }
    r.message = st.message;
    if (seconds_between(r.launched_at, now) > options_.start_timeout_s) {
      r.message = "did not become healthy in time";
      events_.warning(r.service, "StartTimedOut",
                      fmt::format("replica {}: not healthy after {:.0f}s; last: {}", r.name,
                                  options_.start_timeout_s, st.message));
      runtime_.stop(r.name);
    }
  } else if (!st.ready) {
    // A ready engine that stopped answering leaves the routing table.
    r.state = ReplicaState::kStarting;
    r.message = st.message.empty() ? "not ready" : st.message;
  }
}

void Controller::begin_termination(Replica& r) {
  if (r.state == ReplicaState::kTerminating) return;
  if (r.state == ReplicaState::kReady) r.drain_pass = passes_ + 1;  // counted at the pass's end
  r.state = ReplicaState::kTerminating;
  r.drain_started = clock_.now();
  r.message = "draining";
  spdlog::info("replica {}: draining", r.name);
  if (r.launched) runtime_.unroute(r.name);
}

bool Controller::drain(Replica& r, Clock::time_point now) {
  // Unpublished at the end of the pass that began the drain; stopped once
  // the grace has passed and its requests are done.
  const double draining_s = seconds_between(r.drain_started, now);
  const bool drained = draining_s >= options_.unroute_grace_s &&
                       (r.in_flight == 0 || draining_s > options_.drain_timeout_s);
  if (drained && r.launched && !r.stop_sent) {
    runtime_.stop(r.name);
    r.stop_sent = true;
  }
  if (r.launched && r.stop_sent && !runtime_.status(r.name).exists) r.launched = false;
  return !r.launched;
}

void Controller::stop_engine(Replica& r, std::string why) {
  if (r.launched) runtime_.stop(r.name);  // a new launch waits until it has ended
  r.launched = false;
  r.stop_sent = false;
  r.pid = 0;
  r.host.clear();
  r.port = 0;
  if (r.state != ReplicaState::kTerminating) {
    r.state = ReplicaState::kPending;
    r.cold_start.restart(clock_.now());
  }
  r.message = std::move(why);
}

}  // namespace loadstar::controller
