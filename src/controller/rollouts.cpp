#include "controller/rollouts.h"

#include <algorithm>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

namespace loadstar::controller {

using nlohmann::json;
using Outcome = Rollouts::Canary::Outcome;

namespace {

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::kRunning:
      return "running";
    case Outcome::kPaused:
      return "paused";
    case Outcome::kPromoted:
      return "promoted";
    case Outcome::kAborted:
      return "aborted";
  }
  return "running";
}

std::optional<Outcome> outcome_named(const std::string& name) {
  for (Outcome o : {Outcome::kRunning, Outcome::kPaused, Outcome::kPromoted, Outcome::kAborted})
    if (name == outcome_name(o)) return o;
  return std::nullopt;
}

bool runs(const RolloutView& v, const std::shared_ptr<const Revision>& rev) {
  return v.revision && rev && v.revision->hash == rev->hash;
}

// "step 2/3 (25%)"
std::string step_name(const api::CanarySpec& spec, size_t step) {
  return fmt::format("step {}/{} ({}%)", step + 1, spec.steps.size(),
                     spec.steps[std::min(step, spec.steps.size() - 1)].weight);
}

}  // namespace

void Rollouts::event(const std::string& service, bool warning, const char* reason,
                     std::string text) {
  spdlog::info("service {}: {}", service, text);
  if (warning)
    events_.warning(service, reason, std::move(text));
  else
    events_.normal(service, reason, std::move(text));
}

void Rollouts::record(const std::string& service, const Canary& c) {
  history_.set_state(
      service, c.hash,
      json({{"canary", outcome_name(c.outcome)}, {"step", c.step}, {"reason", c.reason}}).dump());
}

Rollouts::Canary& Rollouts::canary_of(const std::string& service, Service& s,
                                      const std::shared_ptr<const Revision>& current,
                                      const std::shared_ptr<const Revision>& stable) {
  if (s.canary && s.canary->hash == current->hash) {
    if (stable) s.canary->stable = stable;
    return *s.canary;
  }
  s.canary.emplace();
  s.canary->hash = current->hash;
  s.canary->stable = stable;
  // Where a previous controller left it.
  const json state = json::parse(history_.state(service, current->hash), nullptr, false);
  if (state.is_object()) {
    s.canary->outcome =
        outcome_named(state.value("canary", std::string())).value_or(Outcome::kRunning);
    s.canary->step = state.value("step", size_t{0});
    s.canary->reason = state.value("reason", std::string());
  }
  return *s.canary;
}

RolloutActions Rollouts::plan(const api::InferenceService& svc,
                              const std::shared_ptr<const Revision>& current, uint32_t desired,
                              std::vector<RolloutView> active, Clock::time_point now) {
  const std::string& name = svc.metadata.name;
  Service& s = services_[name];
  // The stable revision: the older one most running replicas have (the
  // newest among equals).
  std::map<std::string, std::pair<size_t, std::shared_ptr<const Revision>>> old;
  for (const RolloutView& v : active)
    if (v.launched_ever && v.revision && !runs(v, current)) {
      auto& [n, rev] = old[v.revision->hash];
      ++n;
      rev = v.revision;
    }
  std::shared_ptr<const Revision> stable;
  size_t most = 0;
  for (const auto& [hash, entry] : old)
    if (entry.first > most || (entry.first == most && entry.second->number > stable->number)) {
      most = entry.first;
      stable = entry.second;
    }
  const auto& spec = svc.spec.rollout.canary;
  // A canary runs beside a stable revision that still serves more: once
  // the current one has as many replicas (an edit back to the stable spec,
  // say), what is left of the other is rolled away, not judged against.
  const auto current_n = static_cast<size_t>(std::count_if(
      active.begin(), active.end(), [&](auto& v) { return v.launched_ever && runs(v, current); }));
  if (stable && most < current_n) stable.reset();
  // Scaled to zero midway: the canary goes on from its stable revision.
  if (spec && !stable && s.canary && s.canary->hash == current->hash &&
      s.canary->outcome != Outcome::kPromoted)
    stable = s.canary->stable;
  if (spec && stable && !spec->steps.empty()) {
    Canary& c = canary_of(name, s, current, stable);
    if (c.outcome != Outcome::kPromoted)
      return plan_canary(svc, s, c, current, desired, std::move(active), now);
  } else if (!stable || !spec) {
    s.canary.reset();
  }
  return plan_plain(svc, s, current, desired, active, now);
}

RolloutActions Rollouts::plan_plain(const api::InferenceService& svc, Service& s,
                                    const std::shared_ptr<const Revision>& current,
                                    uint32_t desired, const std::vector<RolloutView>& active,
                                    Clock::time_point now) {
  const std::string& name = svc.metadata.name;
  RolloutActions actions;
  std::vector<RolloutReplica> state;
  for (const RolloutView& v : active) {
    // One never launched runs nothing of another revision.
    if (!v.launched_ever && !runs(v, current)) actions.retarget[v.name] = current;
    const bool fresh = !v.launched_ever || runs(v, current);
    state.push_back({v.name, v.index, fresh, v.ready, v.staged, !fresh && v.new_weights_here,
                     v.unplaced, v.node_gpu_free_milli});
    actions.canary_weights[v.name] = 0;
  }
  const RolloutPlan plan = plan_rollout(desired, svc.spec.rollout, std::move(state));
  actions.create.assign(plan.create, current);
  actions.drain = plan.drain;

  if (plan.rolling && !s.rolling) {
    s.since = now;
    event(name, false, "RolloutStarted",
          fmt::format("rollout to revision {} ({}) began", current->number, current->hash));
  } else if (!plan.rolling && s.rolling) {
    event(name, false, "RolledOut",
          fmt::format("revision {} rolled out in {:.0f}s", current->number,
                      seconds_between(s.since, now)));
  }
  s.rolling = plan.rolling;
  s.message.clear();
  if (!plan.rolling) return actions;
  uint32_t updated = 0, updated_ready = 0, remaining = 0;
  std::string waiting;
  for (const RolloutView& v : active) {
    if (std::find(plan.drain.begin(), plan.drain.end(), v.name) != plan.drain.end()) continue;
    if (v.launched_ever && !runs(v, current)) {
      ++remaining;
      continue;
    }
    ++updated;
    if (v.ready)
      ++updated_ready;
    else if (waiting.empty() && !v.message.empty())
      waiting = fmt::format("; {}: {}", v.name, v.message);
  }
  s.message = fmt::format("rolling out revision {}: {} of {} updated, {} ready; {} old{}",
                          current->number, updated, desired, updated_ready, remaining, waiting);
  return actions;
}

RolloutActions Rollouts::plan_canary(const api::InferenceService& svc, Service& s, Canary& c,
                                     const std::shared_ptr<const Revision>& current,
                                     uint32_t desired, std::vector<RolloutView> active,
                                     Clock::time_point now) {
  const std::string& name = svc.metadata.name;
  const api::CanarySpec& spec = *svc.spec.rollout.canary;
  c.step = std::min(c.step, spec.steps.size() - 1);
  if (!s.rolling) {
    s.since = now;
    if (c.outcome == Outcome::kRunning && c.step == 0 && !c.step_began)
      event(name, false, "CanaryStarted",
            fmt::format("canary of revision {} ({}) began against revision {}: {} steps",
                        current->number, current->hash, c.stable->number, spec.steps.size()));
    s.rolling = true;
  }
  std::vector<RolloutView> canary, stable;
  for (RolloutView& v : active) (runs(v, current) ? canary : stable).push_back(std::move(v));
  const uint32_t weight = spec.steps[c.step].weight;
  uint32_t target = c.outcome == Outcome::kAborted ? 0 : canary_replicas(desired, weight);
  const auto canary_ready = static_cast<uint32_t>(
      std::count_if(canary.begin(), canary.end(), [](auto& v) { return v.ready; }));

  // The analysis, once the step's canary replicas all serve.
  if (c.outcome == Outcome::kRunning) {
    if (!c.step_began && target > 0 && canary_ready >= target) {
      c.step_began = now;
      c.canary = {};
      c.stable_sample = {};
    }
    if (c.step_began) {
      const CanaryVerdict verdict =
          judge_step(spec.analysis, c.canary, c.stable_sample, seconds_between(*c.step_began, now),
                     spec.steps[c.step].pause_s);
      c.reason = verdict.reason;
      if (verdict.kind == CanaryVerdict::kFail) {
        c.outcome = Outcome::kAborted;
        target = 0;
        event(name, true, "CanaryRolledBack",
              fmt::format("canary of revision {} rolled back at {}: {}", current->number,
                          step_name(spec, c.step), verdict.reason));
        record(name, c);
      } else if (verdict.kind == CanaryVerdict::kPass) {
        event(name, false, "CanaryStepPassed",
              fmt::format("canary of revision {}: {} passed: {}", current->number,
                          step_name(spec, c.step), verdict.reason));
        c.step_began.reset();
        if (c.step + 1 == spec.steps.size()) {
          c.outcome = Outcome::kPromoted;
          event(name, false, "CanaryPromoted",
                fmt::format("canary of revision {} promoted after {} steps", current->number,
                            spec.steps.size()));
          record(name, c);
          s.rolling = false;  // the rolling update that follows says so anew
          std::vector<RolloutView> all = std::move(canary);
          all.insert(all.end(), stable.begin(), stable.end());
          return plan_plain(svc, s, current, desired, all, now);
        }
        ++c.step;
        record(name, c);
        target = canary_replicas(desired, spec.steps[c.step].weight);
      }
    } else {
      c.reason = fmt::format("waiting for the canary's {} replica{} to be ready", target,
                             target == 1 ? "" : "s");
      for (const RolloutView& v : canary)
        if (!v.ready && !v.message.empty()) {
          c.reason += fmt::format("; {}: {}", v.name, v.message);
          break;
        }
    }
  }

  RolloutActions actions;
  // The canary group at its size: ready ones kept, lowest indexes first.
  std::sort(canary.begin(), canary.end(), [](const RolloutView& a, const RolloutView& b) {
    if (a.ready != b.ready) return a.ready;
    return a.index < b.index;
  });
  for (size_t i = target; i < canary.size(); ++i) actions.drain.push_back(canary[i].name);
  if (canary.size() < target) actions.create.assign(target - canary.size(), current);
  // The stable group at the desired count, as a rolling update towards the
  // stable revision (replicas of any other revision go).
  std::vector<RolloutReplica> state;
  for (const RolloutView& v : stable) {
    if (!v.launched_ever && !runs(v, c.stable)) actions.retarget[v.name] = c.stable;
    const bool at_stable = !v.launched_ever || runs(v, c.stable);
    state.push_back(
        {v.name, v.index, at_stable, v.ready, v.staged, false, false, v.node_gpu_free_milli});
  }
  const RolloutPlan plan = plan_rollout(desired, svc.spec.rollout, std::move(state));
  for (uint32_t i = 0; i < plan.create; ++i) actions.create.push_back(c.stable);
  actions.drain.insert(actions.drain.end(), plan.drain.begin(), plan.drain.end());

  // The split: while both groups serve, the canary's replicas get the
  // step's share together.
  const bool stable_serves =
      std::any_of(stable.begin(), stable.end(), [](auto& v) { return v.ready; });
  const bool splitting = c.outcome != Outcome::kAborted && canary_ready > 0 && stable_serves;
  for (const RolloutView& v : canary)
    actions.canary_weights[v.name] = splitting ? spec.steps[c.step].weight : 0;
  for (const RolloutView& v : stable) actions.canary_weights[v.name] = 0;

  const std::string revision = fmt::format("canary of revision {}", current->number);
  switch (c.outcome) {
    case Outcome::kRunning:
      s.message = fmt::format("{}, {}: {}", revision, step_name(spec, c.step), c.reason);
      break;
    case Outcome::kPaused:
      s.message = fmt::format("{} paused at {} (loadstar rollout resume|promote|abort)", revision,
                              step_name(spec, c.step));
      break;
    case Outcome::kAborted:
      s.message = fmt::format(
          "{} rolled back at {}: {}; revision {} serves (change the spec, or loadstar rollout "
          "undo)",
          revision, step_name(spec, c.step), c.reason, c.stable->number);
      s.rolling = false;
      break;
    case Outcome::kPromoted:
      break;
  }
  return actions;
}

void Rollouts::observe(const std::string& service, const std::string& hash,
                       const ReplicaLoad& load) {
  auto it = services_.find(service);
  if (it == services_.end() || !it->second.canary) return;
  Canary& c = *it->second.canary;
  if (c.outcome != Outcome::kRunning || !c.step_began) return;
  if (hash == c.hash)
    c.canary.add(load);
  else if (c.stable && hash == c.stable->hash)
    c.stable_sample.add(load);
}

Result<std::string> Rollouts::control(const std::string& service, const std::string& action,
                                      Clock::time_point now) {
  auto it = services_.find(service);
  Canary* c = it == services_.end() || !it->second.canary ? nullptr : &*it->second.canary;
  if (!c || (c->outcome != Outcome::kRunning && c->outcome != Outcome::kPaused))
    return make_error(ErrorCode::kInvalidArgument, "service {} has no canary in progress", service);
  std::string done;
  if (action == "pause") {
    if (c->outcome == Outcome::kPaused) return std::string("already paused");
    c->outcome = Outcome::kPaused;
    done = "paused";
  } else if (action == "resume") {
    if (c->outcome != Outcome::kPaused)
      return make_error(ErrorCode::kInvalidArgument, "the canary of {} is not paused", service);
    c->outcome = Outcome::kRunning;
    if (c->step_began) c->step_began = now;  // the step is held anew
    done = "resumed";
  } else if (action == "promote") {
    c->outcome = Outcome::kPromoted;
    c->reason = "promoted by hand";
    done = "promoted by hand";
  } else if (action == "abort") {
    c->outcome = Outcome::kAborted;
    c->reason = "aborted by hand";
    done = "aborted by hand: rolling back";
  } else {
    return make_error(ErrorCode::kInvalidArgument,
                      "'{}' is not one of pause, resume, promote, abort", action);
  }
  record(service, *c);
  event(service, action == "abort", "CanaryByHand", fmt::format("canary {}", done));
  return fmt::format("service {}: canary {}", service, done);
}

bool Rollouts::rolling(const std::string& service) const {
  auto it = services_.find(service);
  return it != services_.end() && it->second.rolling;
}

bool Rollouts::aborted(const std::string& service) const {
  auto it = services_.find(service);
  return it != services_.end() && it->second.canary &&
         it->second.canary->outcome == Outcome::kAborted;
}

std::string Rollouts::message(const std::string& service) const {
  auto it = services_.find(service);
  return it == services_.end() ? std::string() : it->second.message;
}

void Rollouts::retain(const std::map<std::string, api::InferenceService>& services) {
  std::erase_if(services_, [&](const auto& kv) { return !services.count(kv.first); });
}

}  // namespace loadstar::controller
