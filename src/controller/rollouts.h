// Each service's rollout, pass by pass: which replicas to start at which
// revision, which to drain, and how the gateways split traffic while a
// canary runs. A plain rollout is plan_rollout's rolling update (rollout.h);
// with spec.rollout.canary the new revision first runs beside the stable
// one on a share of the traffic, step by step, judged by judge_step
// (canary.h) on the gateways' view of both; a failed step rolls back at
// once, the last one passed promotes (the rolling update then replaces the
// rest). A canary's progress is kept with its revision in the history, so a
// new controller goes on (or stays rolled back) where the last one was.
//
// The controller owns the replicas; this owns what it decided about them
// and the status line of each service's rollout, and says each step in the
// controller's events.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "api/resources.h"
#include "controller/canary.h"
#include "controller/clock.h"
#include "controller/events.h"
#include "controller/revisions.h"
#include "controller/rollout.h"

namespace loadstar::controller {

// A replica of the service that is not draining, as the rollout sees it.
struct RolloutView {
  std::string name;
  uint32_t index = 0;
  std::shared_ptr<const Revision> revision;
  bool launched_ever = false;  // never launched: nothing of its revision runs yet
  bool ready = false;
  bool staged = false;
  bool new_weights_here = false;     // the current revision's weights are on its node
  bool unplaced = false;             // the scheduler found it no place (last pass)
  uint64_t node_gpu_free_milli = 0;  // GPU free on its node (RolloutReplica's)
  std::string message;               // why it is not ready yet
};

struct RolloutActions {
  std::vector<std::shared_ptr<const Revision>> create;  // one per new replica: its revision
  std::vector<std::string> drain;
  // The replicas whose revision must change before they are launched
  // (never launched: they start at the revision their group runs).
  std::map<std::string, std::shared_ptr<const Revision>> retarget;
  // Replica -> the share of the service's requests its group gets (the
  // canary's replicas, while both groups serve); every other replica 0.
  std::map<std::string, uint32_t> canary_weights;
};

class Rollouts {
 public:
  Rollouts(RevisionHistory& history, EventLog& events) : history_(history), events_(events) {}

  // One pass for `svc`, whose current revision is `current`, at `desired`
  // replicas; `active` are its replicas not draining.
  RolloutActions plan(const api::InferenceService& svc,
                      const std::shared_ptr<const Revision>& current, uint32_t desired,
                      std::vector<RolloutView> active, Clock::time_point now);
  // What the gateways saw of a replica of `service` running `hash` since
  // the last pass (a canary's analysis reads it).
  void observe(const std::string& service, const std::string& hash, const ReplicaLoad& load);
  // pause, resume, promote or abort a service's canary by hand.
  Result<std::string> control(const std::string& service, const std::string& action,
                              Clock::time_point now);

  // Replicas of older revisions remain (a rolling update or a canary runs).
  bool rolling(const std::string& service) const;
  // The current revision's canary was rolled back.
  bool aborted(const std::string& service) const;
  std::string message(const std::string& service) const;
  // Forgets the services not in `services`.
  void retain(const std::map<std::string, api::InferenceService>& services);

  // A canary run of one revision (its outcome is kept with the revision).
  struct Canary {
    std::string hash;  // the canary revision
    std::shared_ptr<const Revision> stable;
    enum class Outcome { kRunning, kPaused, kPromoted, kAborted } outcome = Outcome::kRunning;
    size_t step = 0;
    std::optional<Clock::time_point> step_began;  // once the step's canary replicas were ready
    CanarySample canary, stable_sample;
    std::string reason;  // the last verdict, or why it ended
  };

 private:
  struct Service {
    bool rolling = false;
    Clock::time_point since;
    std::string message;
    std::optional<Canary> canary;
  };
  void event(const std::string& service, bool warning, const char* reason, std::string text);
  // The canary run of `current`, as recorded with it when there is one.
  Canary& canary_of(const std::string& service, Service& s,
                    const std::shared_ptr<const Revision>& current,
                    const std::shared_ptr<const Revision>& stable);
  void record(const std::string& service, const Canary& c);
  RolloutActions plan_plain(const api::InferenceService& svc, Service& s,
                            const std::shared_ptr<const Revision>& current, uint32_t desired,
                            const std::vector<RolloutView>& active, Clock::time_point now);
  RolloutActions plan_canary(const api::InferenceService& svc, Service& s, Canary& c,
                             const std::shared_ptr<const Revision>& current, uint32_t desired,
                             std::vector<RolloutView> active, Clock::time_point now);

  RevisionHistory& history_;
  EventLog& events_;
  std::map<std::string, Service> services_;
};

}  // namespace loadstar::controller
