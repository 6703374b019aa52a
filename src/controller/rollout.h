// Rollouts: how a service's replicas move from one revision to the next.
//
// A revision is what shapes a replica: the model (its spec as it was, and
// the version of the bytes its source named then) and the engine, its arguments and the resources
// each replica asks for. The replica count, autoscaling, routing and the queue do not: changing
// them restarts nothing. Every replica records the revision it started from and keeps it (a restart
// relaunches the same revision), so a service never drifts into serving mixed versions unless a
// rollout says so.
//
// plan_rollout is the rolling update of a Deployment, as a pure function of
// one pass: at most maxSurge replicas above the desired count, at most
// maxUnavailable of it not ready, old replicas drained (unrouted, then
// stopped once their requests are done) only when a replacement is ready or
// may be missed. One rule of ours on top: a ready old replica is drained
// only once the new revision's weights are staged (on a new replica, or on
// that replica's node), so a rollout never trades a serving replica for a
// download. And one that keeps rollouts moving where GPUs are scarce: when a
// new replica finds no place (the surge has no room), one replica may be
// unavailable even with maxUnavailable 0, so an old one makes room for it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <span>

#include "api/resources.h"

namespace loadstar::controller {

// What shapes a service's replicas: 10 hex digits of SHA-256 over the
// service's replica-shaping fields, the model's spec and the version its
// source resolved to (model_versions.h; empty: a source without versions),
// and the specs of the LoRA adapters its replicas load at start.
std::string revision_hash(const api::InferenceService& svc, const api::Model* model,
                          const std::string& model_version = "",
                          std::span<const api::Model> adapters = {});

struct RolloutReplica {
  std::string name;
  uint32_t index = 0;
  bool current = false;  // runs the service's current revision
  bool ready = false;
  bool staged = false;  // its weights are in place (current replicas)
  // Old replicas: the current revision's weights are staged on its node.
  bool new_weights_here = false;
  // Current replicas: the scheduler found no place for it (no room to surge).
  bool unplaced = false;
  // GPU capacity free on its node (milli): among ready replicas, scale-down
  // drains the one on the emptiest node first, so nodes empty out for work
  // that needs whole nodes (a training gang) instead of every node keeping
  // a replica.
  uint64_t node_gpu_free_milli = 0;
};

struct RolloutPlan {
  uint32_t create = 0;             // new replicas, at the current revision
  std::vector<std::string> drain;  // replicas to drain
  bool rolling = false;            // old replicas remain
};

// One pass: `active` are the service's replicas not already draining.
RolloutPlan plan_rollout(uint32_t desired, const api::RolloutSpec& spec,
                         std::vector<RolloutReplica> active);

}  // namespace loadstar::controller
