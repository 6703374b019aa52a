// Which cached models to evict to make room: least recently used first,
// never one in use, pinned or being staged. Pure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"

namespace loadstar::agent {

struct CacheEntry {
  std::string name;
  uint64_t bytes = 0;        // bytes only this model holds (blobs no other model shares)
  int64_t last_used_ms = 0;  // wall clock, ms
  bool in_use = false;
  bool pinned = false;
};

// Victims, least recently used first, whose removal brings `used + need`
// under `capacity`. An error names the model that does not fit and what holds
// the rest of the cache.
Result<std::vector<std::string>> choose_victims(const std::vector<CacheEntry>& entries,
                                                uint64_t used, uint64_t need, uint64_t capacity,
                                                const std::string& for_model);

}  // namespace loadstar::agent
