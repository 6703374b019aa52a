#include "gateway/peer_load.h"

#include <algorithm>

namespace loadstar::gateway {

void PeerLoad::set_endpoints(const RoutingTable& table) {
  std::unordered_map<std::string, std::shared_ptr<Endpoint>> by_replica;
  for (const auto& [name, svc] : table.services)
    for (const auto& e : svc.ready) by_replica[e->replica] = e;
  std::lock_guard lock(mu_);
  by_replica_ = std::move(by_replica);
}

std::shared_ptr<Endpoint> PeerLoad::find(const std::string& replica,
                                         const std::string& address) const {
  std::lock_guard lock(mu_);
  auto it = by_replica_.find(replica);
  if (it == by_replica_.end() || it->second->key != address) return nullptr;
  return it->second;
}

void PeerLoad::apply(const DecodedLoad& load, int64_t now_ms) {
  std::lock_guard lock(mu_);
  reports_[load.instance] = {now_ms, load.load, {}};
  sum_locked(now_ms);
}

void PeerLoad::apply_pick(const std::string& instance, const SharedPick& pick, int64_t now_ms) {
  std::lock_guard lock(mu_);
  Report& r = reports_[instance];
  r.at_ms = now_ms;
  r.picks_since.push_back({.replica = pick.replica,
                           .address = pick.address,
                           .in_flight = 1,
                           .pending_prefill = std::max<int64_t>(pick.prefill, 0)});
  sum_locked(now_ms);
}

void PeerLoad::sum_locked(int64_t now_ms) {
  std::erase_if(reports_, [now_ms](const auto& kv) { return now_ms - kv.second.at_ms > 1000; });
  std::unordered_map<const Endpoint*, std::pair<int64_t, int64_t>> sums;
  auto add = [&](const SharedLoad& l) {
    auto it = by_replica_.find(l.replica);
    if (it == by_replica_.end() || it->second->key != l.address) return;
    auto& sum = sums[it->second.get()];
    sum.first += std::max<int64_t>(l.in_flight, 0);
    sum.second += std::max<int64_t>(l.pending_prefill, 0);
  };
  for (const auto& [instance, report] : reports_) {
    for (const SharedLoad& l : report.load) add(l);
    for (const SharedLoad& l : report.picks_since) add(l);
  }
  for (const auto& [name, e] : by_replica_) {
    auto it = sums.find(e.get());
    e->remote_in_flight.store(it == sums.end() ? 0 : it->second.first, std::memory_order_relaxed);
    e->remote_pending_prefill.store(it == sums.end() ? 0 : it->second.second,
                                    std::memory_order_relaxed);
  }
}

int64_t PeerLoad::peer_in_flight() const {
  int64_t sum = 0;
  std::lock_guard lock(mu_);
  for (const auto& [name, e] : by_replica_)
    sum += e->remote_in_flight.load(std::memory_order_relaxed);
  return sum;
}

std::vector<SharedLoad> PeerLoad::own(int64_t now_ms) {
  std::vector<SharedLoad> out;
  std::lock_guard lock(mu_);
  sum_locked(now_ms);
  for (const auto& [name, e] : by_replica_)
    out.push_back({.replica = e->replica,
                   .address = e->key,
                   .in_flight = e->in_flight.load(std::memory_order_relaxed),
                   .pending_prefill = e->pending_prefill.load(std::memory_order_relaxed)});
  return out;
}

}  // namespace loadstar::gateway
