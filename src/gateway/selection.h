// Where each attempt of a request goes: a backend (the lowest priority group
// with a usable endpoint, a backend in it drawn by weight), then one of its
// endpoints (the picker, with prefix-cache and session affinity); and outlier
// detection, which takes failing endpoints out of the draw for a while.
// A pure core: the time is a parameter and the draw uses the caller's
// generator, so tests replay it exactly.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/kv_block_index.h"
#include "gateway/picker.h"
#include "gateway/prefix_index.h"
#include "gateway/routing_table.h"

namespace loadstar::gateway {

// The endpoints of `backend` in `table` an attempt may go to: not in `tried`
// and, with `skip_ejected`, not ejected at `now_ms`. Written to `out`.
void backend_candidates(const RoutingTable& table, const RoutingTable::Backend& backend,
                        std::span<const Endpoint* const> tried, bool skip_ejected, int64_t now_ms,
                        std::vector<Endpoint*>& out);

// Whether `table` has anything to send `model` to, or no longer knows the
// model (the caller then answers 404): what a held request waits for.
bool has_ready_backend(const RoutingTable& table, const std::string& model);

// A canary rollout's traffic split: the candidates of the group this
// request goes to (`draw` uniform in [0, 1): below the canary weight, the
// canary), written to `out`; all of `candidates` when the service has no
// canary or one group has no candidate left (a retry after the canary
// failed goes to the stable replicas).
std::span<Endpoint* const> canary_split(const RoutingTable::Service& svc,
                                        std::span<Endpoint* const> candidates, double draw,
                                        std::vector<Endpoint*>& out);

// One request's choice of backends across its attempts: the model's backends
// in the table it was resolved against (kept alive here) and the endpoints
// tried so far. Per request, on one thread; it points into itself, so it
// neither copies nor moves.
class BackendSelector {
 public:
  explicit BackendSelector(std::string model);
  BackendSelector(const BackendSelector&) = delete;
  BackendSelector& operator=(const BackendSelector&) = delete;

  // Looks the model up in `table`: a Route's backends, ordered by priority,
  // or the service of that name; none when the model is unknown. Called
  // again after a hold (a new table came); the endpoints tried are kept.
  void resolve(std::shared_ptr<const RoutingTable> table);
  const RoutingTable& table() const { return *table_; }
  std::span<const RoutingTable::Backend* const> backends() const { return backends_; }
  // The priority of the first group: an attempt anywhere else is a fallback.
  uint32_t first_priority() const { return backends_.empty() ? 0 : backends_.front()->priority; }

  // The backend of the next attempt: the lowest priority group with an
  // endpoint not tried yet, a backend in it drawn by weight (one draw from
  // `rng`). Ejected endpoints count only when no group has any other. Null
  // when nothing is left.
  const RoutingTable::Backend* choose_backend(int64_t now_ms, std::mt19937_64& rng);
  // `backend`'s endpoints not tried yet; the ejected ones only when all of
  // them are. Valid until the next call.
  std::span<Endpoint* const> endpoints(const RoutingTable::Backend& backend, int64_t now_ms);
  void mark_tried(const Endpoint* endpoint) { tried_.push_back(endpoint); }
  std::span<const Endpoint* const> tried() const { return tried_; }

  // What a request with nothing to send to may wait for: its backends'
  // services that may get a replica (scaling from zero, or starting), and the
  // first of them, whose hold limits apply (null: none may, do not wait).
  struct HoldTarget {
    std::vector<std::string> services;
    const RoutingTable::Service* service = nullptr;
  };
  HoldTarget hold_target() const;

 private:
  std::shared_ptr<const RoutingTable> table_;
  RoutingTable::Backend direct_;  // the model as a service of that name
  std::vector<const RoutingTable::Backend*> backends_;
  std::vector<const Endpoint*> tried_;
  // Scratch, reused across attempts.
  std::vector<Endpoint*> candidates_;
  std::vector<std::pair<const RoutingTable::Backend*, uint64_t>> drawable_;  // cumulative weights
};

// Outlier detection: an endpoint failing `consecutive_failures` times in a
// row is ejected for base_ejection_s times the number of its ejections, at
// most kMaxEjectionFactor times.
struct OutlierPolicy {
  uint32_t consecutive_failures = 5;
  double base_ejection_s = 10;
};
inline constexpr uint32_t kMaxEjectionFactor = 10;

struct Ejection {
  uint32_t failures = 0;  // in a row, that ejected it
  double seconds = 0;     // how long it is ejected for
};

// Records how an attempt at `endpoint` ended (`failed`: connect error,
// timeout or 5xx). Returns the ejection when this failure ejects it, from
// `now_ms`. Safe from any thread (the endpoint's counters are atomics).
std::optional<Ejection> record_outcome(Endpoint& endpoint, bool failed, const OutlierPolicy& policy,
                                       int64_t now_ms);

// What the endpoint pick knows of the request.
struct EndpointRequest {
  std::span<const uint64_t> blocks;  // the prompt's prefix-block hashes
  size_t prompt_bytes = 0;
  std::string_view session;  // the value of the service's session header (empty: none)
  int64_t now_ms = 0;
  // A LoRA adapter's request: its name, and the service's spec.lora bounds
  // (where the engine does not report its own).
  std::string_view adapter;
  uint32_t max_loras = 0;
  // The prompt's token ids as the engines compute them, for endpoints whose
  // engines publish KV events (empty: not computed).
  std::span<const uint32_t> tokens;
  // Estimate what the chosen endpoint caches even when it is the only
  // candidate (EndpointPick::prefill; a disaggregated service decides by it).
  bool estimate_cache = false;
};

struct EndpointPick {
  Endpoint* endpoint = nullptr;
  // Prompt bytes the endpoint is not expected to hold: its prefill work,
  // counted in Endpoint::pending_prefill until the first token.
  int64_t prefill = 0;
  uint32_t prefix_blocks_matched = 0;  // leading blocks found on the chosen endpoint
  size_t prefix_blocks_total = 0;      // blocks the scored picker weighed (0: none)
  // What the chooser learnt from this pick (for other gateways to learn
  // too): the prompt's blocks on this endpoint, and its session (0: none).
  bool prefix_recorded = false;
  uint64_t session_recorded = 0;
};

// Picks the endpoint of a backend an attempt goes to, and remembers what it
// sent where: prefix blocks and sessions per endpoint, and the prompt bytes
// per token the engines report (which turns an engine's KV size in tokens
// into prefix blocks). Shared by all workers: the indices lock themselves.
class EndpointChooser {
 public:
  EndpointChooser(PrefixIndexOptions prefix, double scrape_interval_s);

  // Buffers of one worker's picks (and its tie-rotation turn); one per
  // thread, as choose() does not keep them past the call.
  struct Scratch {
    uint64_t turn = 0;
    std::vector<CandidateView> views;
    std::vector<uint64_t> ids;
    std::vector<uint32_t> matched;
    std::vector<uint32_t> session_matched;
    std::vector<uint32_t> kv_matched;
    std::vector<size_t> cached_bytes;
  };

  // `picker`: the service's picker, null for an external backend (its one
  // endpoint). `candidates` must not be empty.
  EndpointPick choose(const PickerConfig* picker, std::span<Endpoint* const> candidates,
                      const EndpointRequest& request, Scratch& scratch);

  // Records a pick another gateway made (SharedPrefixes): `blocks` and the
  // session hash (0: none) went to `endpoint`.
  void record_remote(const Endpoint& endpoint, std::span<const uint64_t> blocks, uint64_t session);
  // Learns from a finished request how many prompt bytes make a token.
  void learn_bytes_per_token(size_t prompt_bytes, uint64_t prompt_tokens);
  double bytes_per_token() const { return bytes_per_token_.load(std::memory_order_relaxed); }
  // Drops what is known of an endpoint that left the routing table.
  void forget(uint64_t endpoint_id);
  // What engines that publish KV events hold (fed by the gateway's
  // subscriber); for their endpoints the picker counts as cached the longer
  // of the prefix the engine reports and the one this gateway's picks
  // predict (a prompt sent a moment ago is not stored yet).
  KvBlockIndex& kv_blocks() { return kv_blocks_; }

 private:
  // How many prefix blocks the endpoint's KV cache holds (0: unknown).
  size_t capacity_blocks(const Endpoint& endpoint) const;

  const PrefixIndexOptions prefix_options_;
  const double scrape_interval_s_;
  PrefixIndex prefixes_;
  PrefixIndex sessions_;
  KvBlockIndex kv_blocks_;
  std::atomic<double> bytes_per_token_{4};
};

}  // namespace loadstar::gateway
