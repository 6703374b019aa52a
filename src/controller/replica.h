// A replica as the controller keeps it (controller.h tells its lifecycle).
// Private to the controller's own files: controller.cpp drives it,
// controller_api.cpp reports it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "controller/controller.h"

namespace loadstar::controller {

struct Controller::Replica {
  std::string name;
  std::string service;
  uint32_t index = 0;
  ReplicaState state = ReplicaState::kPending;
  bool launched = false;   // the runtime has its engine
  bool stop_sent = false;  // told to stop (Terminating)
  int pid = 0;
  std::string host;  // where its engine serves, while Ready
  uint16_t port = 0;
  std::string kv_events;  // its KV events' endpoint, while Ready (empty: none)
  uint32_t restarts = 0;
  Clock::time_point created;
  Clock::time_point launched_at;
  Clock::time_point next_restart;
  Clock::time_point drain_started;
  std::optional<double> start_s;
  // The pass that found it ready: readers see it Ready once that pass's
  // routing went out to the gateways (Controller::published_pass_).
  uint64_t ready_pass = 0;
  // The pass that began draining it while Ready: readers see it Ready (the
  // gateways still route to it) until that pass's routing went out.
  uint64_t drain_pass = 0;
  std::string message;
  ColdStart cold_start;
  // What it runs: the spec and model it started from (a restart keeps them).
  // Number 0: taken over, its revision known by hash alone (the history lost it).
  std::shared_ptr<const Revision> revision;
  bool ever_launched = false;  // one never launched takes the revision its group runs
  // The gateways' view, as of the last load round.
  int64_t in_flight = 0;
  double prefill_tokens = 0;
  double waiting = 0;
  double kv_usage = 0;
  std::set<std::string> adapters;  // LoRA adapters running or waiting there
};

}  // namespace loadstar::controller
