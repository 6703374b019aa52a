// Routing that survives more gateways. Each gateway's prefix index learns
// from the picks it makes; with N gateway replicas behind a load balancer
// each sees 1/N of the prompts, and prefix affinity weakens as the front
// door scales out. With a Redis (--redis), every gateway publishes its picks
// (which replica was sent which prompt blocks, and session) on one pub/sub
// channel and records the others' into its own index, so each index holds
// what all of them sent, whatever their number.
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

namespace loadstar::gateway {

inline constexpr const char* kPrefixChannel = "loadstar:prefixes";

// One pick as it travels: the replica's name and address (a restarted
// replica at a new address is another engine), the session hash (0: none)
// and the prompt's block hashes.
struct SharedPick {
  std::string replica;
  std::string address;
  uint64_t session = 0;
  std::vector<uint64_t> blocks;
};
// The message and its parse (nullopt: not one, e.g. another version's).
std::string encode_pick(std::string_view instance, const SharedPick& pick);
struct DecodedPick {
  std::string instance;
  SharedPick pick;
};
std::optional<DecodedPick> decode_pick(std::string_view message);

class SharedPrefixes {
 public:
  using Apply = std::function<void(const SharedPick&)>;
  // `apply` runs on the receiving thread for every other gateway's pick.
  static std::unique_ptr<SharedPrefixes> create(RedisAddress address, std::string instance,
                                                Apply apply);
  ~SharedPrefixes();

  // Queues a pick for every other gateway (never blocks; past 4,096 queued
  // picks the oldest are dropped and counted).
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
