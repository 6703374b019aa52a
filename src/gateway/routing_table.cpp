#include "gateway/routing_table.h"

#include <algorithm>

namespace loadstar::gateway {

Endpoint* pick_least_outstanding(const std::vector<std::shared_ptr<Endpoint>>& ready,
                                 const std::vector<const Endpoint*>& tried, uint64_t turn) {
  Endpoint* best = nullptr;
  int64_t best_load = 0;
  const size_t n = ready.size();
  for (size_t k = 0; k < n; ++k) {
    Endpoint* e = ready[(turn + k) % n].get();
    if (std::find(tried.begin(), tried.end(), e) != tried.end()) continue;
    const int64_t load = e->in_flight.load(std::memory_order_relaxed);
    if (!best || load < best_load) {
      best = e;
      best_load = load;
    }
  }
  return best;
}

}  // namespace loadstar::gateway
