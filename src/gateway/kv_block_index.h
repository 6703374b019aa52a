// What each engine's KV cache holds, as the engines themselves say it
// (their KV events, kvevents/kv_events.h), so that every gateway sees the
// same: the picker's view of the caches no longer depends on which gateway
// a prompt went through, nor on guessing what an engine evicted.
//
// Blocks are named by this index's own chained hash of their tokens (the
// parent's name and the block's token ids; the first block's parent is the
// LoRA adapter's name, or nothing), not by the engine's hash, whose
// algorithm (and seed) differs between engines and versions: a prompt the
// gateway tokenizes as the engine does gets the same names. The engine's
// hashes are kept per engine only to follow its parents and removals. A
// stored block whose parent this index never saw (events lost, or sent
// before it subscribed) is skipped, as are its children: the index may miss
// blocks, never invent them.
//
// Thread-safe: one thread applies events, request threads match.
#pragma once

#include <cstdint>
#include <shared_mutex>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvevents/kv_events.h"

namespace loadstar::gateway {

// The chained names of the full blocks of `tokens` (block_size each); the
// first block's parent is the adapter's (empty: the base model).
std::vector<uint64_t> kv_block_names(std::span<const uint32_t> tokens, uint32_t block_size,
                                     std::string_view lora_name);

class KvBlockIndex {
 public:
  // One batch of `endpoint`'s events, in order.
  void apply(uint64_t endpoint, const kvevents::EventBatch& batch);
  // Drops what is known of `endpoint` (it is gone, or its events were lost).
  void forget(uint64_t endpoint);

  // For each candidate, how many leading tokens of `tokens` its engine holds
  // (0 for engines that published nothing); written to `matched_tokens`.
  void match(std::span<const uint32_t> tokens, std::string_view lora_name,
             std::span<const uint64_t> candidates, std::span<uint32_t> matched_tokens) const;

  size_t blocks() const;     // (block, engine) pairs held
  uint64_t orphans() const;  // stored blocks skipped for an unknown parent

 private:
  struct Engine {
    uint32_t block_size = 0;
    std::unordered_map<uint64_t, uint64_t> names;  // engine hash -> our name
    // Our name -> how many of the engine's hashes have it (the same tokens
    // may be cached twice).
    std::unordered_map<uint64_t, uint32_t> counts;
  };
  void hold(uint64_t endpoint, Engine& engine, uint64_t name);
  void release(uint64_t endpoint, Engine& engine, uint64_t name);
  void stored(uint64_t endpoint, Engine& engine, const kvevents::BlockStored& e);
  void removed(uint64_t endpoint, Engine& engine, uint64_t engine_hash);
  void clear(uint64_t endpoint, Engine& engine);

  mutable std::shared_mutex mu_;
  std::unordered_map<uint64_t, Engine> engines_;
  // Our name -> the engines holding it (few: a vector).
  std::unordered_map<uint64_t, std::vector<uint64_t>> holders_;
  size_t pairs_ = 0;
  uint64_t orphans_ = 0;
};

}  // namespace loadstar::gateway
