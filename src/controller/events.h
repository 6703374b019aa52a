// The controller's events: what it decided or saw happen to a service (a
// scaling decision, a rollout's step, a rollback, a preemption, a failed
// start), each with its time, object, type, reason and message, as
// Kubernetes Events are. The last kMax stay in memory for the admin API
// (`loadstar events`, `loadstar describe`); every one goes to the store,
// which keeps it where its users look (Kubernetes Events, or a bounded log
// on disk that a restarted `loadstar up` reads back). The same event again
// (object, reason and message) raises its count instead of adding one.
#pragma once

#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "controller/clock.h"
#include "store/store.h"

namespace loadstar::controller {

class EventLog {
 public:
  static constexpr size_t kMax = 1000;
  EventLog(store::ResourceStore& store, const Clock& clock);

  void normal(std::string_view service, std::string reason, std::string message) {
    record(service, "Normal", std::move(reason), std::move(message));
  }
  void warning(std::string_view service, std::string reason, std::string message) {
    record(service, "Warning", std::move(reason), std::move(message));
  }
  // An event of another kind of object (a Job).
  void record(std::string_view kind, std::string_view name, const char* type, std::string reason,
              std::string message);
  // A service's events (all: empty), oldest first.
  std::vector<store::Event> of(std::string_view service) const;

 private:
  void record(std::string_view service, const char* type, std::string reason, std::string message) {
    record("InferenceService", service, type, std::move(reason), std::move(message));
  }
  store::ResourceStore& store_;
  const Clock& clock_;
  std::deque<store::Event> recent_;
};

}  // namespace loadstar::controller
