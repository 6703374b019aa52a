// Endpoint picking: filters, then weighted scorers, as in the Gateway API
// Inference Extension's endpoint picker. A pure core: the gateway gathers a
// view of each candidate (its own in-flight count, the engine's scraped
// queue and KV-cache use, prefix and session matches) and this decides.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"

namespace loadstar::gateway {

enum class PickerKind {
  kScored,        // filters then weighted scorers (the default)
  kLeastRequest,  // fewest in-flight requests, ties round-robin
  kRoundRobin,
};

// Each scorer gives a candidate 0..1; the picked candidate has the highest
// weighted sum. A weight of 0 turns a scorer off.
struct ScorerWeights {
  // 1 - (prompt bytes waiting for their first token there + this prompt's
  // bytes it does not hold) / the most of any candidate: the time to first
  // token as prefill work, cache hits and queue in one unit.
  double prefill = 4;
  double prefix_cache = 1;  // share of the prompt's leading blocks it was last sent
  double in_flight = 1;     // 1 - its in-flight requests / the most any candidate has
  double queue = 1;         // 1 - engine's waiting requests / the most any candidate has
  double kv_cache = 1;      // 1 - engine's KV-cache use (0..1)
  double session = 10;      // 1 if the request's session was last sent there
  // A LoRA adapter's request: 1 if the endpoint runs the adapter now (or has
  // requests for it waiting), 0.8 if it has room for one more adapter and
  // served this one lately (its host cache likely holds it), 0.6 with room
  // only, 0.2 if full but served it lately, 0 otherwise (it would wait for
  // an adapter to drain).
  double lora = 4;
  bool operator==(const ScorerWeights&) const = default;
};

struct PickerConfig {
  PickerKind kind = PickerKind::kScored;
  ScorerWeights weights;
  // Filter: candidates whose engine reports KV-cache use at or above this
  // are skipped while any other is below it.
  double kv_cache_full = 0.98;
  // Requests carrying this header stick to the endpoint that served the
  // session before (empty: no session affinity).
  std::string session_header = "x-session-id";
  bool operator==(const PickerConfig&) const = default;
};

Result<PickerKind> parse_picker_kind(std::string_view name);
std::string_view picker_kind_name(PickerKind kind);

// What the picker knows of one candidate.
struct CandidateView {
  int64_t in_flight = 0;            // counted by the gateway
  double pending_prefill = 0;       // prompt bytes sent there still waiting for a first token
  double uncached = 0;              // bytes of this prompt it is not known to hold
  bool has_engine_metrics = false;  // the fields below come from a recent scrape
  double waiting = 0;
  double kv_usage = 0;
  uint32_t prefix_blocks = 0;  // leading prompt blocks it was last sent
  bool session_match = false;
  // A LoRA adapter's request only (see ScorerWeights::lora).
  bool adapter_request = false;
  bool adapter_active = false;
  bool adapter_room = false;
  bool adapter_recent = false;
};

// ScorerWeights::lora's score of one candidate.
double adapter_affinity(const CandidateView& c);

struct PickDecision {
  size_t index = 0;  // into the candidates
  double score = 0;
};

// `prompt_blocks`: the request's number of prompt blocks (0: no prefix
// scoring); `turn` rotates ties. Candidates must be non-empty.
PickDecision pick(const PickerConfig& config, std::span<const CandidateView> candidates,
                  size_t prompt_blocks, uint64_t turn);

}  // namespace loadstar::gateway
