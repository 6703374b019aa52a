#include "gateway/kv_block_index.h"

#include <algorithm>
#include <mutex>

#include <xxhash.h>

namespace loadstar::gateway {

namespace {
uint64_t root_of(std::string_view lora_name) {
  return lora_name.empty() ? 0 : XXH3_64bits(lora_name.data(), lora_name.size());
}
uint64_t chain(uint64_t parent, std::span<const uint32_t> block) {
  const uint64_t h = XXH3_64bits_withSeed(block.data(), block.size_bytes(), parent);
  return h == 0 ? 1 : h;
}
}  // namespace

std::vector<uint64_t> kv_block_names(std::span<const uint32_t> tokens, uint32_t block_size,
                                     std::string_view lora_name) {
  std::vector<uint64_t> out;
  if (block_size == 0) return out;
  out.reserve(tokens.size() / block_size);
  uint64_t parent = root_of(lora_name);
  for (size_t at = 0; at + block_size <= tokens.size(); at += block_size) {
    parent = chain(parent, tokens.subspan(at, block_size));
    out.push_back(parent);
  }
  return out;
}

void KvBlockIndex::apply(uint64_t endpoint, const kvevents::EventBatch& batch) {
  std::unique_lock lock(mu_);
  Engine& engine = engines_[endpoint];
  for (const kvevents::Event& event : batch.events) {
    if (const auto* s = std::get_if<kvevents::BlockStored>(&event)) {
      stored(endpoint, engine, *s);
    } else if (const auto* r = std::get_if<kvevents::BlockRemoved>(&event)) {
      if (!r->medium.empty() && r->medium != "GPU") continue;  // another tier's copy
      for (uint64_t h : r->block_hashes) removed(endpoint, engine, h);
    } else {
      clear(endpoint, engine);
    }
  }
}

void KvBlockIndex::hold(uint64_t endpoint, Engine& engine, uint64_t name) {
  if (engine.counts[name]++ > 0) return;
  holders_[name].push_back(endpoint);
  ++pairs_;
}

void KvBlockIndex::release(uint64_t endpoint, Engine& engine, uint64_t name) {
  auto c = engine.counts.find(name);
  if (c == engine.counts.end() || --c->second > 0) return;
  engine.counts.erase(c);
  auto h = holders_.find(name);
  if (h == holders_.end()) return;
  if (std::erase(h->second, endpoint) > 0) --pairs_;
  if (h->second.empty()) holders_.erase(h);
}

void KvBlockIndex::stored(uint64_t endpoint, Engine& engine, const kvevents::BlockStored& e) {
  // Blocks kept on another medium (CPU offload) are not where prefill reads.
  if (!e.medium.empty() && e.medium != "GPU") return;
  if (engine.block_size != 0 && engine.block_size != e.block_size) clear(endpoint, engine);
  engine.block_size = e.block_size;
  uint64_t parent = root_of(e.lora_name);
  if (e.parent_block_hash) {
    auto it = engine.names.find(*e.parent_block_hash);
    if (it == engine.names.end()) {
      orphans_ += e.block_hashes.size();
      return;
    }
    parent = it->second;
  }
  const std::span<const uint32_t> tokens(e.token_ids);
  for (size_t i = 0; i < e.block_hashes.size(); ++i) {
    const uint64_t name = chain(parent, tokens.subspan(i * e.block_size, e.block_size));
    auto [it, inserted] = engine.names.try_emplace(e.block_hashes[i], name);
    if (inserted) {
      hold(endpoint, engine, name);
    } else if (it->second != name) {  // the engine reused a hash for other tokens
      release(endpoint, engine, it->second);
      it->second = name;
      hold(endpoint, engine, name);
    }
    parent = name;
  }
}

void KvBlockIndex::removed(uint64_t endpoint, Engine& engine, uint64_t engine_hash) {
  auto it = engine.names.find(engine_hash);
  if (it == engine.names.end()) return;
  const uint64_t name = it->second;
  engine.names.erase(it);
  release(endpoint, engine, name);
}

void KvBlockIndex::clear(uint64_t endpoint, Engine& engine) {
  for (const auto& [name, count] : engine.counts) {
    auto h = holders_.find(name);
    if (h == holders_.end()) continue;
    if (std::erase(h->second, endpoint) > 0) --pairs_;
    if (h->second.empty()) holders_.erase(h);
  }
  engine.names.clear();
  engine.counts.clear();
}

void KvBlockIndex::forget(uint64_t endpoint) {
  std::unique_lock lock(mu_);
  auto it = engines_.find(endpoint);
  if (it == engines_.end()) return;
  clear(endpoint, it->second);
  engines_.erase(it);
}

void KvBlockIndex::match(std::span<const uint32_t> tokens, std::string_view lora_name,
                         std::span<const uint64_t> candidates,
                         std::span<uint32_t> matched_tokens) const {
  std::fill(matched_tokens.begin(), matched_tokens.end(), 0);
  std::shared_lock lock(mu_);
  // Engines of one block size share the prompt's names (usually all do).
  std::vector<uint32_t> sizes;
  for (uint64_t id : candidates)
    if (auto it = engines_.find(id);
        it != engines_.end() && it->second.block_size != 0 &&
        std::find(sizes.begin(), sizes.end(), it->second.block_size) == sizes.end())
      sizes.push_back(it->second.block_size);
  for (uint32_t size : sizes) {
    const std::vector<uint64_t> names = kv_block_names(tokens, size, lora_name);
    for (size_t c = 0; c < candidates.size(); ++c) {
      auto e = engines_.find(candidates[c]);
      if (e == engines_.end() || e->second.block_size != size) continue;
      uint32_t blocks = 0;
      for (uint64_t name : names) {
        auto h = holders_.find(name);
        if (h == holders_.end() ||
            std::find(h->second.begin(), h->second.end(), candidates[c]) == h->second.end())
          break;
        ++blocks;
      }
      matched_tokens[c] = blocks * size;
    }
  }
}

size_t KvBlockIndex::blocks() const {
  std::shared_lock lock(mu_);
  return pairs_;
}

uint64_t KvBlockIndex::orphans() const {
  std::shared_lock lock(mu_);
  return orphans_;
}

}  // namespace loadstar::gateway
