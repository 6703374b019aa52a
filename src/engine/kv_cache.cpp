#include "engine/kv_cache.h"

#include <xxhash.h>

#include "common/check.h"

namespace loadstar::engine {

BlockHash hash_block(BlockHash parent, std::span<const TokenId> tokens) {
  BlockHash h = XXH3_64bits_withSeed(tokens.data(), tokens.size_bytes(), parent);
  return h == 0 ? 1 : h;  // 0 is reserved for "no parent"
}

BlockPool::BlockPool(uint32_t num_blocks, bool enable_caching)
    : blocks_(num_blocks), enable_caching_(enable_caching) {
  LS_CHECK(num_blocks > 0);
  for (BlockId id = 0; id < num_blocks; ++id) push_free_tail(id);
}

std::optional<BlockId> BlockPool::lookup(BlockHash hash) const {
  if (!enable_caching_) return std::nullopt;
  auto it = cached_.find(hash);
  if (it == cached_.end()) return std::nullopt;
  return it->second;
}

void BlockPool::push_free_tail(BlockId id) {
  Block& b = blocks_[id];
  b.prev = free_tail_;
  b.next = kNone;
  if (free_tail_ != kNone)
    blocks_[free_tail_].next = id;
  else
    free_head_ = id;
  free_tail_ = id;
  ++num_free_;
}

void BlockPool::unlink_free(BlockId id) {
  Block& b = blocks_[id];
  if (b.prev != kNone)
    blocks_[b.prev].next = b.next;
  else
    free_head_ = b.next;
  if (b.next != kNone)
    blocks_[b.next].prev = b.prev;
  else
    free_tail_ = b.prev;
  b.prev = b.next = kNone;
  --num_free_;
}

void BlockPool::allocate(uint32_t count, std::vector<BlockId>& out,
                         std::vector<BlockHash>* evicted) {
  LS_CHECK(count <= num_free_);
  for (uint32_t i = 0; i < count; ++i) {
    BlockId id = free_head_;
    unlink_free(id);
    Block& b = blocks_[id];
    if (b.cached) {  // evict: its contents are about to be overwritten
      auto it = cached_.find(b.hash);
      if (it != cached_.end() && it->second == id) {
        cached_.erase(it);
        if (evicted) evicted->push_back(b.hash);
      }
      b.cached = false;
    }
    b.ref_count = 1;
    out.push_back(id);
  }
}

void BlockPool::touch(BlockId id) {
  Block& b = blocks_[id];
  if (b.ref_count == 0) unlink_free(id);
  ++b.ref_count;
}

void BlockPool::release(std::span<const BlockId> ids) {
  for (BlockId id : ids) {
    Block& b = blocks_[id];
    LS_CHECK(b.ref_count > 0);
    if (--b.ref_count == 0) push_free_tail(id);
  }
}

void BlockPool::cache(BlockId id, BlockHash hash) {
  if (!enable_caching_) return;
  Block& b = blocks_[id];
  if (b.cached) return;
  auto [it, inserted] = cached_.try_emplace(hash, id);
  if (!inserted) return;  // identical contents already cached in another block
  b.cached = true;
  b.hash = hash;
}

}  // namespace loadstar::engine
