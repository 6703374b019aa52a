#include "controller/rollout.h"

#include <algorithm>

#include "common/digest.h"

namespace loadstar::controller {

std::string revision_hash(const api::InferenceService& svc, const api::Model* model,
                          const std::string& model_version, std::span<const api::Model> adapters) {
  // The spec with every field that does not shape a replica at its default.
  api::InferenceService shape;
  shape.metadata.name = svc.metadata.name;
  shape.spec.model = svc.spec.model;
  shape.spec.engine = svc.spec.engine;
  shape.spec.cpu = svc.spec.cpu;
  shape.spec.memory_bytes = svc.spec.memory_bytes;
  shape.spec.gpu = svc.spec.gpu;
  shape.spec.lora = svc.spec.lora;  // which adapters each replica loads at start
  // Loaded on demand, the list changes with no replica restarting.
  if (shape.spec.lora && shape.spec.lora->on_demand) shape.spec.lora->adapters.clear();
  std::string text = api::encode_resource(shape);
  if (model) {
    api::Model m;
    m.metadata.name = model->metadata.name;
    m.spec = model->spec;
    text += "---\n" + api::encode_resource(m);
    if (!model_version.empty()) text += "# version " + model_version + "\n";
  }
  // An adapter loaded at start whose source changes is new bytes in every
  // replica, as the model's are.
  if (svc.spec.lora && !svc.spec.lora->on_demand)
    for (const api::Model& adapter : adapters) {
      api::Model a;
      a.metadata.name = adapter.metadata.name;
      a.spec = adapter.spec;
      text += "---\n" + api::encode_resource(a);
    }
  return sha256_hex(text).substr(0, 10);
}

namespace {

int64_t count_if(const std::vector<RolloutReplica>& v, bool (*pred)(const RolloutReplica&)) {
  return std::count_if(v.begin(), v.end(), pred);
}

}  // namespace

RolloutPlan plan_rollout(uint32_t desired, const api::RolloutSpec& spec,
                         std::vector<RolloutReplica> active) {
  RolloutPlan plan;
  std::vector<RolloutReplica> fresh, old;
  for (auto& r : active) (r.current ? fresh : old).push_back(std::move(r));
  // Ready ones are kept first, those on the fullest nodes first, then the
  // lowest indexes: scale-down drains replicas that serve nothing yet
  // before ready ones, then the one on the emptiest node, highest index
  // first.
  std::sort(fresh.begin(), fresh.end(), [](const RolloutReplica& a, const RolloutReplica& b) {
    if (a.ready != b.ready) return a.ready;
    if (a.ready && a.node_gpu_free_milli != b.node_gpu_free_milli)
      return a.node_gpu_free_milli < b.node_gpu_free_milli;
    return a.index < b.index;
  });
  while (fresh.size() > desired) {
    plan.drain.push_back(fresh.back().name);
    fresh.pop_back();
  }
  const int64_t n = desired;
  const int64_t fresh_n = static_cast<int64_t>(fresh.size());
  if (old.empty()) {
    plan.create = static_cast<uint32_t>(n - fresh_n);
    return plan;
  }
  plan.rolling = true;
  int64_t surge = spec.max_surge.of(desired, true);
  int64_t unavailable = spec.max_unavailable.of(desired, false);
  if (surge == 0 && unavailable == 0) unavailable = 1;  // as a Deployment: it must move
  // No room for the surge: replace in place, one at a time.
  const bool no_room = std::any_of(fresh.begin(), fresh.end(), [](auto& r) { return r.unplaced; });
  if (no_room && unavailable == 0) unavailable = 1;
  const int64_t total = fresh_n + static_cast<int64_t>(old.size());
  const int64_t create = std::clamp<int64_t>(n + surge - total, 0, n - fresh_n);
  plan.create = static_cast<uint32_t>(create);

  const int64_t min_available = std::max<int64_t>(0, n - unavailable);
  const int64_t fresh_unready = fresh_n - count_if(fresh, [](auto& r) { return r.ready; }) + create;
  const int64_t ready = count_if(fresh, [](auto& r) { return r.ready; }) +
                        count_if(old, [](auto& r) { return r.ready; });
  // Old replicas that serve nothing go first, as far as the pods not yet
  // available allow (a Deployment's cleanup of unhealthy replicas)...
  int64_t unready_budget = total + create - min_available - fresh_unready;
  // ...then ready ones, down to the minimum available.
  int64_t ready_budget = ready - min_available;
  // The new weights are staged once a new replica has them; while none
  // can start before an old one goes (no surge left, or no room for it),
  // the first goes (its node was asked to stage them: keep_warm).
  const int64_t fresh_placed =
      fresh_n - std::count_if(fresh.begin(), fresh.end(), [](auto& r) { return r.unplaced; });
  const bool fresh_staged =
      std::any_of(fresh.begin(), fresh.end(), [](auto& r) { return r.staged; }) ||
      fresh_placed + create == 0;
  std::sort(old.begin(), old.end(), [](const RolloutReplica& a, const RolloutReplica& b) {
    if (a.ready != b.ready) return !a.ready;
    return a.index > b.index;
  });
  for (const RolloutReplica& r : old) {
    if (!r.ready) {
      if (unready_budget <= 0) continue;
      --unready_budget;
      plan.drain.push_back(r.name);
      continue;
    }
    if (ready_budget <= 0 || unready_budget <= 0) break;
    if (!fresh_staged && !r.new_weights_here) continue;
    --ready_budget;
    --unready_budget;
    plan.drain.push_back(r.name);
  }
  return plan;
}

}  // namespace loadstar::controller
