// Which endpoint has recently served which prompt prefix, so that a request
// can go where its prefix is likely still in the engine's KV cache.
//
// A prompt is cut into blocks of `block_bytes` bytes; block i's hash chains
// the hashes of blocks 0..i (as vLLM chains token blocks), so equal hashes
// mean equal prefixes. Each endpoint has its own least-recently-used list of
// the blocks it was sent, as long as its engine's KV cache holds (as llm-d's
// prefix scorer keeps an LRU per server): the index forgets what the engine
// must have evicted, rather than routing to a replica for a prefix it no
// longer has. Within a prompt the tail is touched before the head, so under
// pressure an endpoint loses a prompt's tail first and what remains still
// matches (vLLM frees KV blocks the same way). Memory is bounded by the sum
// of the endpoints' capacities; forget() drops an endpoint that is gone.
//
// Endpoints are named by ids never reused (Endpoint::id): a replica that
// restarts comes back with a new id and an empty cache, and inherits nothing.
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace loadstar::gateway {

struct PrefixIndexOptions {
  size_t block_bytes = 128;
  size_t max_blocks = 1024;  // blocks hashed per prompt (the rest is ignored)
  // Blocks remembered per endpoint when its capacity is not known.
  size_t default_endpoint_blocks = 1u << 17;
};

// The chained hashes of the full blocks of `text` (at most `max_blocks`).
std::vector<uint64_t> hash_prefix_blocks(std::string_view text, size_t block_bytes,
                                         size_t max_blocks, std::string_view key = {});

class PrefixIndex {
 public:
  explicit PrefixIndex(PrefixIndexOptions options = {});
  PrefixIndex(const PrefixIndex&) = delete;
  PrefixIndex& operator=(const PrefixIndex&) = delete;

  const PrefixIndexOptions& options() const { return options_; }

  // For each endpoint id in `candidates`, how many leading blocks of `blocks`
  // it is believed to hold; written to `matched` (same size).
  void match(std::span<const uint64_t> blocks, std::span<const uint64_t> candidates,
             std::span<uint32_t> matched) const;
  // Records that `endpoint` was sent a prompt with these blocks; it keeps at
  // most `capacity_blocks` (0: the default).
  void record(std::span<const uint64_t> blocks, uint64_t endpoint, size_t capacity_blocks = 0);
  // Drops everything known about `endpoint`.
  void forget(uint64_t endpoint);

  size_t size() const;  // (block, endpoint) pairs held

 private:
  struct EndpointLru {
    std::list<uint64_t> order;  // block hashes, most recent first
    size_t capacity = 0;
  };
  struct Holder {
    uint64_t endpoint;
    std::list<uint64_t>::iterator position;  // in that endpoint's order
  };
  void evict_back(uint64_t endpoint, EndpointLru& lru);

  PrefixIndexOptions options_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::vector<Holder>> blocks_;
  std::unordered_map<uint64_t, EndpointLru> endpoints_;
  size_t pairs_ = 0;
};

}  // namespace loadstar::gateway
