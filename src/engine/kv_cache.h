// The KV cache of one engine, after vLLM's V1 KVCacheManager: a fixed pool of
// blocks of `block_size` tokens, a prefix cache of full blocks keyed by chained
// hashes, and LRU eviction of blocks that no request holds.
//
// Invariants: a block is either held (ref_count > 0) or in the free queue;
// a cached block stays findable through its hash while it sits in the free
// queue, until it is taken for new data (evicted). Freed blocks join the tail
// of the free queue, the head is taken first, so the least recently used
// cached block is evicted first.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace loadstar::engine {

using BlockId = uint32_t;
using BlockHash = uint64_t;
using tokenizer::TokenId;

// hash(parent, tokens of one full block); the first block's parent is 0.
BlockHash hash_block(BlockHash parent, std::span<const TokenId> tokens);

class BlockPool {
 public:
  BlockPool(uint32_t num_blocks, bool enable_caching);

  uint32_t num_blocks() const { return static_cast<uint32_t>(blocks_.size()); }
  uint32_t num_free() const { return num_free_; }
  // Fraction of blocks held by requests, 0..1 (vLLM's kv_cache_usage_perc).
  double usage() const { return 1.0 - static_cast<double>(num_free_) / blocks_.size(); }

  // The cached block holding `hash`, if any.
  std::optional<BlockId> lookup(BlockHash hash) const;
  // Takes `count` blocks from the head of the free queue (evicting their
  // cached contents; the evicted hashes are appended to `evicted` when it is
  // given). The caller has checked num_free() >= count.
  void allocate(uint32_t count, std::vector<BlockId>& out,
                std::vector<BlockHash>* evicted = nullptr);
  // Adds a holder to a block found by lookup(); takes it off the free queue.
  void touch(BlockId id);
  bool is_free(BlockId id) const { return blocks_[id].ref_count == 0; }
  // Drops one holder of each block; blocks nobody holds join the free queue's
  // tail in the given order.
  void release(std::span<const BlockId> ids);
  // Registers a full block under `hash` so later requests can find it. A hash
  // already cached in another block keeps that block.
  void cache(BlockId id, BlockHash hash);

 private:
  static constexpr BlockId kNone = UINT32_MAX;
  struct Block {
    uint32_t ref_count = 0;
    BlockId prev = kNone;  // free-queue links, valid while ref_count == 0
    BlockId next = kNone;
    bool cached = false;
    BlockHash hash = 0;
  };
  void push_free_tail(BlockId id);
  void unlink_free(BlockId id);

  std::vector<Block> blocks_;
  BlockId free_head_ = kNone;
  BlockId free_tail_ = kNone;
  uint32_t num_free_ = 0;
  bool enable_caching_;
  std::unordered_map<BlockHash, BlockId> cached_;
};

}  // namespace loadstar::engine
