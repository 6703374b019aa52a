#include "agent/eviction.h"

#include <algorithm>

#include "common/units.h"

namespace loadstar::agent {

Result<std::vector<std::string>> choose_victims(const std::vector<CacheEntry>& entries,
                                                uint64_t used, uint64_t need, uint64_t capacity,
                                                const std::string& for_model) {
  if (capacity == 0 || used + need <= capacity) return std::vector<std::string>{};
  std::vector<const CacheEntry*> candidates;
  uint64_t held = 0;
  for (const auto& e : entries) {
    if (e.in_use || e.pinned)
      held += e.bytes;
    else
      candidates.push_back(&e);
  }
  std::sort(candidates.begin(), candidates.end(), [](const CacheEntry* a, const CacheEntry* b) {
    return a->last_used_ms != b->last_used_ms ? a->last_used_ms < b->last_used_ms
                                              : a->name < b->name;
  });
  std::vector<std::string> victims;
  uint64_t freed = 0;
  for (const CacheEntry* e : candidates) {
    if (used - freed + need <= capacity) break;
    victims.push_back(e->name);
    freed += e->bytes;
  }
  if (used - freed + need > capacity)
    return make_error(ErrorCode::kResourceExhausted,
                      "model '{}' needs {} but the cache holds {} of which {} are in use or "
                      "pinned (capacity {})",
                      for_model, format_bytes(need), format_bytes(used), format_bytes(held),
                      format_bytes(capacity));
  return victims;
}

}  // namespace loadstar::agent
