#include "gateway/prefix_index.h"

#include <algorithm>

#include <xxhash.h>

namespace loadstar::gateway {

std::vector<uint64_t> hash_prefix_blocks(std::string_view text, size_t block_bytes,
                                         size_t max_blocks) {
  std::vector<uint64_t> out;
  if (block_bytes == 0) return out;
  const size_t n = std::min(text.size() / block_bytes, max_blocks);
  out.reserve(n);
  uint64_t parent = 0x6c6f616473746172ull;  // "loadstar"
  for (size_t i = 0; i < n; ++i) {
    parent = XXH3_64bits_withSeed(text.data() + i * block_bytes, block_bytes, parent);
    out.push_back(parent);
  }
  return out;
}

struct PrefixIndex::Shard {
  struct Entry {
    std::list<uint64_t>::iterator lru;  // position in `order`
    std::vector<uint64_t> endpoints;    // most recent last
  };
  mutable std::mutex mu;
  std::unordered_map<uint64_t, Entry> entries;
  std::list<uint64_t> order;  // block hashes, most recently used first
  size_t capacity = 0;
};

PrefixIndex::PrefixIndex(PrefixIndexOptions options) : options_(options) {
  options_.shards = std::max<size_t>(1, options_.shards);
  options_.endpoints_per_block = std::max<size_t>(1, options_.endpoints_per_block);
  for (size_t i = 0; i < options_.shards; ++i) {
    shards_.push_back(std::make_unique<Shard>());
    shards_.back()->capacity = std::max<size_t>(1, options_.capacity / options_.shards);
  }
}

PrefixIndex::~PrefixIndex() = default;

PrefixIndex::Shard& PrefixIndex::shard_for(std::span<const uint64_t> blocks) const {
  return *shards_[blocks.empty() ? 0 : blocks[0] % shards_.size()];
}

void PrefixIndex::match(std::span<const uint64_t> blocks, std::span<const uint64_t> candidates,
                        std::span<uint32_t> matched) {
  std::fill(matched.begin(), matched.end(), 0);
  if (blocks.empty() || candidates.empty()) return;
  Shard& shard = shard_for(blocks);
  std::lock_guard lock(shard.mu);
  // alive[k]: candidate k has held every block so far.
  std::vector<char> alive(candidates.size(), 1);
  size_t still = candidates.size();
  std::vector<std::list<uint64_t>::iterator> used;
  for (size_t i = 0; i < blocks.size() && still > 0; ++i) {
    auto it = shard.entries.find(blocks[i]);
    if (it == shard.entries.end()) break;
    used.push_back(it->second.lru);
    const auto& holders = it->second.endpoints;
    for (size_t k = 0; k < candidates.size(); ++k) {
      if (!alive[k]) continue;
      if (std::find(holders.begin(), holders.end(), candidates[k]) != holders.end()) {
        matched[k] = static_cast<uint32_t>(i + 1);
      } else {
        alive[k] = 0;
        --still;
      }
    }
  }
  // A lookup counts as use, so hot prefixes stay. Touched tail first, so that
  // under pressure a prefix loses its tail before its head (as vLLM frees
  // KV blocks), and what remains still matches.
  for (auto it = used.rbegin(); it != used.rend(); ++it)
    shard.order.splice(shard.order.begin(), shard.order, *it);
}

void PrefixIndex::record(std::span<const uint64_t> blocks, uint64_t endpoint) {
  if (blocks.empty()) return;
  Shard& shard = shard_for(blocks);
  std::lock_guard lock(shard.mu);
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) {  // tail first, as in match()
    const uint64_t hash = *b;
    auto [it, inserted] = shard.entries.try_emplace(hash);
    Shard::Entry& e = it->second;
    if (inserted) {
      shard.order.push_front(hash);
      e.lru = shard.order.begin();
    } else {
      shard.order.splice(shard.order.begin(), shard.order, e.lru);
    }
    auto pos = std::find(e.endpoints.begin(), e.endpoints.end(), endpoint);
    if (pos != e.endpoints.end()) e.endpoints.erase(pos);
    if (e.endpoints.size() >= options_.endpoints_per_block) e.endpoints.erase(e.endpoints.begin());
    e.endpoints.push_back(endpoint);
  }
  while (shard.entries.size() > shard.capacity) {
    shard.entries.erase(shard.order.back());
    shard.order.pop_back();
  }
}

size_t PrefixIndex::size() const {
  size_t n = 0;
  for (const auto& s : shards_) {
    std::lock_guard lock(s->mu);
    n += s->entries.size();
  }
  return n;
}

}  // namespace loadstar::gateway
