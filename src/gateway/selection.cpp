#include "gateway/selection.h"

#include <algorithm>

#include <xxhash.h>

namespace loadstar::gateway {

void backend_candidates(const RoutingTable& table, const RoutingTable::Backend& backend,
                        std::span<const Endpoint* const> tried, bool skip_ejected, int64_t now_ms,
                        std::vector<Endpoint*>& out) {
  out.clear();
  auto usable = [&](const Endpoint* e) {
    if (std::find(tried.begin(), tried.end(), e) != tried.end()) return false;
    return !skip_ejected || e->ejected_until_ms.load(std::memory_order_relaxed) <= now_ms;
  };
  if (backend.external) {
    if (usable(backend.external.get())) out.push_back(backend.external.get());
    return;
  }
  auto it = table.services.find(backend.service);
  if (it == table.services.end()) return;
  for (const auto& e : it->second.ready)
    if (usable(e.get())) out.push_back(e.get());
}

bool has_ready_backend(const RoutingTable& table, const std::string& model) {
  if (auto r = table.routes.find(model); r != table.routes.end()) {
    bool ready = false;
    for (const auto& b : r->second.backends) {
      if (b.external) ready = true;
      if (auto it = table.services.find(b.service); it != table.services.end())
        ready |= !it->second.ready.empty();
    }
    return ready;
  }
  if (auto it = table.services.find(model); it != table.services.end())
    return !it->second.ready.empty();
  return true;  // gone
}

BackendSelector::BackendSelector(std::string model) {
  direct_.service = std::move(model);
}

void BackendSelector::resolve(std::shared_ptr<const RoutingTable> table) {
  table_ = std::move(table);
  backends_.clear();
  if (auto r = table_->routes.find(direct_.service); r != table_->routes.end()) {
    for (const auto& b : r->second.backends) backends_.push_back(&b);
  } else if (table_->services.count(direct_.service)) {
    backends_.push_back(&direct_);
  }
}

const RoutingTable::Backend* BackendSelector::choose_backend(int64_t now_ms, std::mt19937_64& rng) {
  // The first pass skips ejected endpoints; the second takes them, when
  // nothing else is left anywhere.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t g = 0; g < backends_.size();) {
      size_t g_end = g;
      uint64_t total = 0;
      drawable_.clear();
      while (g_end < backends_.size() && backends_[g_end]->priority == backends_[g]->priority) {
        backend_candidates(*table_, *backends_[g_end], tried_, pass == 0, now_ms, candidates_);
        if (!candidates_.empty() && backends_[g_end]->weight > 0) {
          total += backends_[g_end]->weight;
          drawable_.push_back({backends_[g_end], total});
        }
        ++g_end;
      }
      if (total > 0) {
        const uint64_t draw = rng() % total;
        for (const auto& [b, upto] : drawable_)
          if (draw < upto) return b;
      }
      g = g_end;
    }
  }
  return nullptr;
}

std::span<Endpoint* const> BackendSelector::endpoints(const RoutingTable::Backend& backend,
                                                      int64_t now_ms) {
  backend_candidates(*table_, backend, tried_, true, now_ms, candidates_);
  if (candidates_.empty()) backend_candidates(*table_, backend, tried_, false, now_ms, candidates_);
  return candidates_;
}

BackendSelector::HoldTarget BackendSelector::hold_target() const {
  HoldTarget target;
  for (const auto* b : backends_)
    if (!b->external)
      if (auto it = table_->services.find(b->service);
          it != table_->services.end() && it->second.may_get_replicas) {
        target.services.push_back(b->service);
        if (!target.service) target.service = &it->second;
      }
  return target;
}

std::span<Endpoint* const> canary_split(const RoutingTable::Service& svc,
                                        std::span<Endpoint* const> candidates, double draw,
                                        std::vector<Endpoint*>& out) {
  if (svc.canary.empty() || svc.canary_weight == 0) return candidates;
  const bool to_canary = draw * 100 < svc.canary_weight;
  out.clear();
  for (Endpoint* e : candidates)
    if ((std::find(svc.canary.begin(), svc.canary.end(), e) != svc.canary.end()) == to_canary)
      out.push_back(e);
  if (out.empty() || out.size() == candidates.size()) return candidates;
  return out;
}

std::optional<Ejection> record_outcome(Endpoint& endpoint, bool failed, const OutlierPolicy& policy,
                                       int64_t now_ms) {
  if (!failed) {
    endpoint.consecutive_failures.store(0, std::memory_order_relaxed);
    return std::nullopt;
  }
  const uint32_t n = endpoint.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n < policy.consecutive_failures) return std::nullopt;
  endpoint.consecutive_failures.store(0, std::memory_order_relaxed);
  const uint32_t times =
      std::min<uint32_t>(kMaxEjectionFactor, endpoint.ejections.fetch_add(1) + 1);
  endpoint.ejected_until_ms.store(
      now_ms + static_cast<int64_t>(policy.base_ejection_s * 1000 * times),
      std::memory_order_relaxed);
  return Ejection{n, policy.base_ejection_s * times};
}

EndpointChooser::EndpointChooser(PrefixIndexOptions prefix, double scrape_interval_s)
    : prefix_options_(prefix),
      scrape_interval_s_(scrape_interval_s),
      prefixes_(prefix),
      sessions_(PrefixIndexOptions{
          .block_bytes = 1, .max_blocks = 1, .default_endpoint_blocks = 1u << 16}) {}

size_t EndpointChooser::capacity_blocks(const Endpoint& endpoint) const {
  const double tokens = endpoint.kv_capacity_tokens.load(std::memory_order_relaxed);
  return static_cast<size_t>(tokens * bytes_per_token_.load(std::memory_order_relaxed) /
                             static_cast<double>(prefix_options_.block_bytes));
}

EndpointPick EndpointChooser::choose(const PickerConfig* picker,
                                     std::span<Endpoint* const> candidates,
                                     const EndpointRequest& request, Scratch& scratch) {
  EndpointPick out;
  out.endpoint = candidates.front();
  out.prefill = static_cast<int64_t>(request.prompt_bytes);
  if (!picker) return out;  // an external backend: one endpoint, nothing to learn
  if (candidates.size() == 1 && !request.estimate_cache) {
    prefixes_.record(request.blocks, out.endpoint->id, capacity_blocks(*out.endpoint));
    out.prefix_recorded = !request.blocks.empty();
    return out;
  }
  const size_t n = candidates.size();
  scratch.views.assign(n, {});
  scratch.ids.resize(n);
  scratch.matched.assign(n, 0);
  scratch.session_matched.assign(n, 0);
  const bool scored = picker->kind == PickerKind::kScored;
  const bool by_session = scored && !picker->session_header.empty() &&
                          picker->weights.session > 0 && !request.session.empty();
  const uint64_t session =
      by_session ? XXH3_64bits(request.session.data(), request.session.size()) : 0;
  const std::span<const uint64_t> session_key(&session, by_session ? 1 : 0);
  if (scored) {
    for (size_t i = 0; i < n; ++i) scratch.ids[i] = candidates[i]->id;
    prefixes_.match(request.blocks, scratch.ids, scratch.matched);
  }
  // Prompt bytes each candidate holds: as predicted from picks (whole
  // blocks), or as its engine reports (tokens, in the prompt's bytes per
  // token), whichever is more.
  scratch.cached_bytes.assign(n, 0);
  for (size_t i = 0; i < n; ++i)
    scratch.cached_bytes[i] =
        std::min(request.prompt_bytes, scratch.matched[i] * prefix_options_.block_bytes);
  if (scored && !request.tokens.empty()) {
    scratch.kv_matched.assign(n, 0);
    kv_blocks_.match(request.tokens, request.adapter, scratch.ids, scratch.kv_matched);
    for (size_t i = 0; i < n; ++i) {
      if (candidates[i]->kv_events.empty()) continue;
      const size_t reported = static_cast<size_t>(static_cast<double>(scratch.kv_matched[i]) *
                                                  static_cast<double>(request.prompt_bytes) /
                                                  static_cast<double>(request.tokens.size()));
      scratch.cached_bytes[i] = std::max(scratch.cached_bytes[i], reported);
      scratch.matched[i] = std::max<uint32_t>(
          scratch.matched[i], static_cast<uint32_t>(std::min(
                                  request.blocks.size(), reported / prefix_options_.block_bytes)));
    }
  }
  if (by_session) sessions_.match(session_key, scratch.ids, scratch.session_matched);
  // A scrape older than 5 intervals (and at least a second) counts as none.
  const int64_t fresh_after =
      request.now_ms - static_cast<int64_t>(scrape_interval_s_ * 5000) - 1000;
  for (size_t i = 0; i < n; ++i) {
    const Endpoint& e = *candidates[i];
    CandidateView& v = scratch.views[i];
    v.in_flight = e.in_flight.load(std::memory_order_relaxed) +
                  e.remote_in_flight.load(std::memory_order_relaxed);
    v.pending_prefill =
        static_cast<double>(e.pending_prefill.load(std::memory_order_relaxed) +
                            e.remote_pending_prefill.load(std::memory_order_relaxed));
    v.uncached = static_cast<double>(request.prompt_bytes - scratch.cached_bytes[i]);
    v.has_engine_metrics = e.metrics_at_ms.load(std::memory_order_relaxed) > fresh_after;
    v.waiting = e.waiting.load(std::memory_order_relaxed);
    v.kv_usage = e.kv_usage.load(std::memory_order_relaxed);
    v.prefix_blocks = scratch.matched[i];
    v.session_match = scratch.session_matched[i] > 0;
    if (!request.adapter.empty() && scored) {
      const EndpointAdapters::View a = e.adapters.view(request.adapter, fresh_after);
      const uint32_t max_loras = a.max_loras ? a.max_loras : request.max_loras;
      v.adapter_request = true;
      v.adapter_active = a.active;
      v.adapter_room = max_loras == 0 || a.active_adapters < max_loras;
      v.adapter_recent = a.recent;
    }
  }
  const PickDecision decision = pick(*picker, scratch.views, request.blocks.size(), scratch.turn++);
  out.endpoint = candidates[decision.index];
  out.prefill = static_cast<int64_t>(scratch.views[decision.index].uncached);
  out.prefix_blocks_matched = scratch.matched[decision.index];
  if (scored) {
    out.prefix_blocks_total = request.blocks.size();
    prefixes_.record(request.blocks, out.endpoint->id, capacity_blocks(*out.endpoint));
    out.prefix_recorded = !request.blocks.empty();
    if (by_session) {
      sessions_.record(session_key, out.endpoint->id);
      out.session_recorded = session;
    }
  }
  return out;
}

void EndpointChooser::record_remote(const Endpoint& endpoint, std::span<const uint64_t> blocks,
                                    uint64_t session) {
  if (!blocks.empty()) prefixes_.record(blocks, endpoint.id, capacity_blocks(endpoint));
  if (session != 0) sessions_.record(std::span<const uint64_t>(&session, 1), endpoint.id);
}

void EndpointChooser::learn_bytes_per_token(size_t prompt_bytes, uint64_t prompt_tokens) {
  if (prompt_tokens <= 16 || prompt_bytes <= 64) return;
  const double ratio = static_cast<double>(prompt_bytes) / static_cast<double>(prompt_tokens);
  const double old = bytes_per_token_.load(std::memory_order_relaxed);
  bytes_per_token_.store(0.98 * old + 0.02 * std::clamp(ratio, 1.0, 16.0),
                         std::memory_order_relaxed);
}

void EndpointChooser::forget(uint64_t endpoint_id) {
  prefixes_.forget(endpoint_id);
  kv_blocks_.forget(endpoint_id);
  sessions_.forget(endpoint_id);
}

}  // namespace loadstar::gateway
