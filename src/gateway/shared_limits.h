// Tenant limits that hold across gateway replicas: the buckets and the
// concurrency of each tenant live in Redis, so N gateways admit together
// what one would (as Envoy's rate-limit service and LiteLLM do). Each
// admission is one Lua script run atomically by Redis, on Redis's clock.
//
// Calls go through one connection on a thread of its own; a gateway worker
// awaits the answer without blocking its other requests. When Redis does not
// answer (within the timeout), admit() says so and the gateway falls back to
// its per-replica limits, loudly (a warning, `loadstar_gateway_shared_limits_up 0`),
// and reconnects at most once a second.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/awaitable.hpp>

#include "common/result.h"
#include "gateway/redis_address.h"
#include "gateway/tenants.h"

namespace loadstar::gateway {

class SharedLimits {
 public:
  static std::unique_ptr<SharedLimits> create(RedisAddress address, double timeout_s = 0.1);
  ~SharedLimits();

  // Admits (reserving `estimated_cost` and a concurrency slot under
  // `request_id`) or refuses; nullopt when Redis did not answer.
  boost::asio::awaitable<std::optional<TenantLimiter::Decision>> admit(std::string tenant,
                                                                       TenantLimits limits,
                                                                       double estimated_cost,
                                                                       std::string request_id);
  // Ends an admitted request: frees its slot, charges `actual_cost` for the
  // estimate. Not awaited.
  void finish(std::string tenant, TenantLimits limits, double estimated_cost, double actual_cost,
              std::string request_id);

  bool up() const { return up_.load(); }
  uint64_t errors() const { return errors_.load(); }

 public:
  struct Impl;  // the connection and its thread (shared_limits.cpp)

 private:
  explicit SharedLimits(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::atomic<bool> up_{false};
  std::atomic<uint64_t> errors_{0};
};

}  // namespace loadstar::gateway
