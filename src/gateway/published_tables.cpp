#include "gateway/published_tables.h"

#include <string>
#include <unordered_set>
#include <utility>

namespace loadstar::gateway {

void PublishedTables::prune_retired(int64_t now_ms) {
  std::erase_if(retired_, [now_ms](const Retired& r) {
    return r.endpoint->in_flight.load() == 0 && now_ms - r.at_ms > kRetiredReportMs;
  });
}

std::vector<std::shared_ptr<Endpoint>> PublishedTables::publish(
    std::shared_ptr<const RoutingTable> next, int64_t now_ms) {
  std::unordered_set<uint64_t> live;
  for (const auto& [name, svc] : next->services)
    for (const auto& e : svc.ready) live.insert(e->id);
  std::vector<std::shared_ptr<Endpoint>> gone;
  std::shared_ptr<const RoutingTable> previous;  // released after the lock
  std::lock_guard lock(mu_);
  previous = std::exchange(latest_, std::move(next));
  stamp_ttft_epochs(*previous, *latest_, now_ms);
  std::erase_if(retired_, [&](const Retired& r) { return live.count(r.endpoint->id) > 0; });
  prune_retired(now_ms);
  for (const auto& [name, svc] : previous->services)
    for (const auto& e : svc.ready)
      if (!live.count(e->id)) {
        retired_.push_back({e, now_ms});
        gone.push_back(e);
      }
  return gone;
}

std::vector<std::shared_ptr<Endpoint>> PublishedTables::reported(int64_t now_ms) {
  std::vector<std::shared_ptr<Endpoint>> out;
  std::unordered_set<std::string> names;
  std::lock_guard lock(mu_);
  for (const auto& [name, svc] : latest_->services)
    for (const auto& e : svc.ready)
      if (names.insert(e->replica).second) out.push_back(e);
  prune_retired(now_ms);  // drained ones are forgotten; draining ones still count
  for (auto r = retired_.rbegin(); r != retired_.rend(); ++r)
    if (names.insert(r->endpoint->replica).second) out.push_back(r->endpoint);
  return out;
}

}  // namespace loadstar::gateway
