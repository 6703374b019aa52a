#include "gateway/prefix_index.h"

#include <algorithm>

#include <xxhash.h>

namespace loadstar::gateway {

std::vector<uint64_t> hash_prefix_blocks(std::string_view text, size_t block_bytes,
                                         size_t max_blocks, std::string_view key) {
  std::vector<uint64_t> out;
  if (block_bytes == 0) return out;
  const size_t n = std::min(text.size() / block_bytes, max_blocks);
  out.reserve(n);
  uint64_t parent = 0x6c6f616473746172ull;  // "loadstar"
  // A key (a LoRA adapter) starts its own chain: the same text hashes apart.
  if (!key.empty()) parent = XXH3_64bits_withSeed(key.data(), key.size(), parent);
  for (size_t i = 0; i < n; ++i) {
    parent = XXH3_64bits_withSeed(text.data() + i * block_bytes, block_bytes, parent);
    out.push_back(parent);
  }
  return out;
}

PrefixIndex::PrefixIndex(PrefixIndexOptions options) : options_(options) {
  options_.default_endpoint_blocks = std::max<size_t>(1, options_.default_endpoint_blocks);
}

void PrefixIndex::match(std::span<const uint64_t> blocks, std::span<const uint64_t> candidates,
                        std::span<uint32_t> matched) const {
  std::fill(matched.begin(), matched.end(), 0);
  if (blocks.empty() || candidates.empty()) return;
  std::lock_guard lock(mu_);
  // alive[k]: candidate k has held every block so far.
  std::vector<char> alive(candidates.size(), 1);
  size_t still = candidates.size();
  for (size_t i = 0; i < blocks.size() && still > 0; ++i) {
    auto it = blocks_.find(blocks[i]);
    if (it == blocks_.end()) break;
    const auto& holders = it->second;
    for (size_t k = 0; k < candidates.size(); ++k) {
      if (!alive[k]) continue;
      const bool held = std::any_of(holders.begin(), holders.end(),
                                    [&](const Holder& h) { return h.endpoint == candidates[k]; });
      if (held) {
        matched[k] = static_cast<uint32_t>(i + 1);
      } else {
        alive[k] = 0;
        --still;
      }
    }
  }
}

void PrefixIndex::evict_back(uint64_t endpoint, EndpointLru& lru) {
  const uint64_t hash = lru.order.back();
  auto it = blocks_.find(hash);
  if (it != blocks_.end()) {
    auto& holders = it->second;
    holders.erase(std::find_if(holders.begin(), holders.end(),
                               [&](const Holder& h) { return h.endpoint == endpoint; }));
    if (holders.empty()) blocks_.erase(it);
  }
  lru.order.pop_back();
  --pairs_;
}

void PrefixIndex::record(std::span<const uint64_t> blocks, uint64_t endpoint,
                         size_t capacity_blocks) {
  if (blocks.empty()) return;
  std::lock_guard lock(mu_);
  EndpointLru& lru = endpoints_[endpoint];
  lru.capacity = capacity_blocks > 0 ? capacity_blocks : options_.default_endpoint_blocks;
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) {  // tail first: the head ends freshest
    auto& holders = blocks_[*b];
    auto mine = std::find_if(holders.begin(), holders.end(),
                             [&](const Holder& h) { return h.endpoint == endpoint; });
    if (mine != holders.end()) {
      lru.order.splice(lru.order.begin(), lru.order, mine->position);
    } else {
      lru.order.push_front(*b);
      holders.push_back({endpoint, lru.order.begin()});
      ++pairs_;
    }
  }
  while (lru.order.size() > lru.capacity) evict_back(endpoint, lru);
}

void PrefixIndex::forget(uint64_t endpoint) {
  std::lock_guard lock(mu_);
  auto it = endpoints_.find(endpoint);
  if (it == endpoints_.end()) return;
  while (!it->second.order.empty()) evict_back(endpoint, it->second);
  endpoints_.erase(it);
}

size_t PrefixIndex::size() const {
  std::lock_guard lock(mu_);
  return pairs_;
}

}  // namespace loadstar::gateway
