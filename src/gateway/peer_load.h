// What other gateways (sharing a Redis) report of their load on each
// replica, summed into the Endpoint atomics the picker reads
// (remote_in_flight, remote_pending_prefill), so that the picker weighs the
// whole front door's load whatever the number of gateways; and this
// gateway's own load, to report. Endpoints are known by replica name and
// address (a restarted replica at a new address is another). Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gateway/routing_table.h"
#include "gateway/shared_messages.h"

namespace loadstar::gateway {

class PeerLoad {
 public:
  // The endpoints of a newly published table.
  void set_endpoints(const RoutingTable& table);
  // The endpoint of `replica` at `address`; null when not (or no longer) known.
  std::shared_ptr<Endpoint> find(const std::string& replica, const std::string& address) const;
  // Another gateway's report, received at `now_ms`. It counts every pick
  // that gateway made before it, so the picks counted since its last
  // report are dropped.
  void apply(const DecodedLoad& load, int64_t now_ms);
  // Another gateway's pick: one more request in flight there, `prefill`
  // more bytes awaiting prefill, until that gateway's next report (at most
  // ~5 ms later) says so itself. Without it, gateways deciding within one
  // report interval all see the same stale load and herd onto one replica.
  void apply_pick(const std::string& instance, const SharedPick& pick, int64_t now_ms);
  // This gateway's load to report; gateways that have not reported for a
  // second stop counting (they are gone, or cut off).
  std::vector<SharedLoad> own(int64_t now_ms);
  // Requests other gateways last reported in flight, over all endpoints.
  int64_t peer_in_flight() const;

 private:
  void sum_locked(int64_t now_ms);

  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Endpoint>> by_replica_;
  // By gateway instance: when it last said anything, its last report, and
  // its picks since.
  struct Report {
    int64_t at_ms = 0;
    std::vector<SharedLoad> load;
    std::vector<SharedLoad> picks_since;
  };
  std::unordered_map<std::string, Report> reports_;
};

}  // namespace loadstar::gateway
