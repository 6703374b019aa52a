// Routing that survives more gateways. Each gateway's prefix index learns
// from the picks it makes, and its load view counts the requests it sent;
// with N gateway replicas behind a load balancer each sees 1/N of both, and
// affinity and balance weaken as the front door scales out. With a Redis
// (--redis), every gateway publishes on one pub/sub channel its picks (which
// replica was sent which prompt blocks, and session) and, every 50 ms, its
// requests in flight and prompt bytes awaiting prefill per replica; each
// records the others' picks into its own index and adds their load to its
// own, so the picker's view does not depend on the number of gateways.
//
// Off the request path: publish() only queues; one thread sends batches
// (pipelined PUBLISHes), another receives. While Redis is down each gateway
// keeps its own picks (as without Redis) and reconnects once a second.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/redis_address.h"
#include "gateway/shared_messages.h"

namespace loadstar::gateway {

inline constexpr const char* kPrefixChannel = "loadstar:prefixes";

class SharedPrefixes {
 public:
  struct Hooks {
    // Run on the receiving thread for every other gateway's pick and load.
    std::function<void(const DecodedPick&)> pick;
    std::function<void(const DecodedLoad&)> load;
    // This gateway's load now, read on the sending thread every 50 ms.
    std::function<std::vector<SharedLoad>()> snapshot;
  };
  static std::unique_ptr<SharedPrefixes> create(RedisAddress address, std::string instance,
                                                Hooks hooks);
  ~SharedPrefixes();

  // Queues a pick for every other gateway (never blocks; past 4,096 queued
  // picks the oldest are dropped and counted). Counters count picks.
  void publish(SharedPick pick);

  bool up() const { return up_.load(); }
  uint64_t published() const { return published_.load(); }
  uint64_t received() const { return received_.load(); }
  uint64_t dropped() const { return dropped_.load(); }

  struct Impl;  // the two connections and their threads (shared_prefixes.cpp)

 private:
  explicit SharedPrefixes(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::atomic<bool> up_{false};
  std::atomic<uint64_t> published_{0}, received_{0}, dropped_{0};
  friend struct Impl;
};

}  // namespace loadstar::gateway
