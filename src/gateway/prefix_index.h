// Which endpoint has recently served which prompt prefix, so that a request
// can go where its prefix is likely still in the engine's KV cache.
//
// A prompt is cut into blocks of `block_bytes` bytes; block i's hash chains
// the hashes of blocks 0..i (as vLLM chains token blocks), so equal hashes
// mean equal prefixes. For each block hash the index remembers the few
// endpoints that were last sent it. Memory is bounded: the index holds at most
// `capacity` block hashes and forgets the least recently used first. It is
// sharded by the first block's hash (requests sharing any prefix share their
// first block, so they land in one shard), each shard with its own lock.
//
// Endpoints are named by an id that is never reused (Endpoint::id): a
// replica that restarts comes back with a new id and an empty cache, so it
// cannot inherit its predecessor's entries; entries for endpoints that are
// gone simply age out.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace loadstar::gateway {

struct PrefixIndexOptions {
  size_t block_bytes = 128;
  size_t max_blocks = 512;        // blocks hashed per prompt (longer prompts: the rest is ignored)
  size_t capacity = 1u << 20;     // block hashes remembered, all shards together
  size_t endpoints_per_block = 4;  // endpoints remembered per block hash
  size_t shards = 16;
};

// The chained hashes of the full blocks of `text` (at most `max_blocks`).
std::vector<uint64_t> hash_prefix_blocks(std::string_view text, size_t block_bytes,
                                         size_t max_blocks);

class PrefixIndex {
 public:
  explicit PrefixIndex(PrefixIndexOptions options = {});
  ~PrefixIndex();
  PrefixIndex(const PrefixIndex&) = delete;
  PrefixIndex& operator=(const PrefixIndex&) = delete;

  const PrefixIndexOptions& options() const { return options_; }

  // For each endpoint id in `candidates`, how many leading blocks of `blocks`
  // it was last known to hold; written to `matched` (same size).
  void match(std::span<const uint64_t> blocks, std::span<const uint64_t> candidates,
             std::span<uint32_t> matched);
  // Records that `endpoint` was sent a prompt with these blocks.
  void record(std::span<const uint64_t> blocks, uint64_t endpoint);

  size_t size() const;  // block hashes held, all shards

 private:
  struct Shard;
  Shard& shard_for(std::span<const uint64_t> blocks) const;
  PrefixIndexOptions options_;
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace loadstar::gateway
