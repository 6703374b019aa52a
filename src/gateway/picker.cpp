#include "gateway/picker.h"

#include <algorithm>

namespace loadstar::gateway {

Result<PickerKind> parse_picker_kind(std::string_view name) {
  if (name == "scored") return PickerKind::kScored;
  if (name == "least-request") return PickerKind::kLeastRequest;
  if (name == "round-robin") return PickerKind::kRoundRobin;
  return make_error(ErrorCode::kInvalidArgument,
                    "'{}' is not one of scored, least-request, round-robin", name);
}

std::string_view picker_kind_name(PickerKind kind) {
  switch (kind) {
    case PickerKind::kScored:
      return "scored";
    case PickerKind::kLeastRequest:
      return "least-request";
    case PickerKind::kRoundRobin:
      return "round-robin";
  }
  return "scored";
}

double adapter_affinity(const CandidateView& c) {
  if (!c.adapter_request || c.adapter_active) return 1;
  if (c.adapter_room) return c.adapter_recent ? 0.8 : 0.6;
  return c.adapter_recent ? 0.2 : 0;
}

PickDecision pick(const PickerConfig& config, std::span<const CandidateView> candidates,
                  size_t prompt_blocks, uint64_t turn) {
  const size_t n = candidates.size();
  if (n == 0) return {};
  if (config.kind == PickerKind::kRoundRobin) return {turn % n, 0};
  // Visiting candidates from `turn` spreads ties evenly.
  auto at = [&](size_t k) { return (turn + k) % n; };
  if (config.kind == PickerKind::kLeastRequest) {
    size_t best = at(0);
    for (size_t k = 1; k < n; ++k)
      if (candidates[at(k)].in_flight < candidates[best].in_flight) best = at(k);
    return {best, 0};
  }

  // Filter: KV cache nearly full, unless everyone's is.
  std::vector<char> keep(n, 1);
  bool any_room = false;
  for (const auto& c : candidates)
    any_room |= !(c.has_engine_metrics && c.kv_usage >= config.kv_cache_full);
  if (any_room)
    for (size_t i = 0; i < n; ++i)
      keep[i] =
          !(candidates[i].has_engine_metrics && candidates[i].kv_usage >= config.kv_cache_full);

  double max_in_flight = 0, max_waiting = 0, max_prefill = 0;
  double sum_waiting = 0, sum_kv = 0;
  size_t scraped = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!keep[i]) continue;
    const CandidateView& c = candidates[i];
    max_prefill = std::max(max_prefill, c.pending_prefill + c.uncached);
    max_in_flight = std::max(max_in_flight, static_cast<double>(c.in_flight));
    if (c.has_engine_metrics) {
      max_waiting = std::max(max_waiting, c.waiting);
      sum_waiting += c.waiting;
      sum_kv += std::clamp(c.kv_usage, 0.0, 1.0);
      ++scraped;
    }
  }
  // A candidate not scraped yet (a replica that just became ready) is
  // scored as the average scraped one, neither favoured nor penalised.
  const double mean_waiting = scraped ? sum_waiting / static_cast<double>(scraped) : 0;
  const double mean_kv = scraped ? sum_kv / static_cast<double>(scraped) : 0;
  const ScorerWeights& w = config.weights;
  PickDecision best{n, 0};
  for (size_t k = 0; k < n; ++k) {
    const size_t i = at(k);
    if (!keep[i]) continue;
    const CandidateView& c = candidates[i];
    double score = 0;
    score += w.prefill * (max_prefill > 0 ? 1 - (c.pending_prefill + c.uncached) / max_prefill : 1);
    if (prompt_blocks > 0)
      score += w.prefix_cache * static_cast<double>(c.prefix_blocks) /
               static_cast<double>(prompt_blocks);
    score += w.in_flight *
             (max_in_flight > 0 ? 1 - static_cast<double>(c.in_flight) / max_in_flight : 1);
    const double waiting = c.has_engine_metrics ? c.waiting : mean_waiting;
    score += w.queue * (max_waiting > 0 ? 1 - waiting / max_waiting : 1);
    score += w.kv_cache * (1 - (c.has_engine_metrics ? std::clamp(c.kv_usage, 0.0, 1.0) : mean_kv));
    if (c.session_match) score += w.session;
    score += w.lora * adapter_affinity(c);
    if (best.index == n || score > best.score) best = {i, score};
  }
  return best;
}

}  // namespace loadstar::gateway
