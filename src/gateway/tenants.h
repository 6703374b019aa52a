// Tenants: who may call, and how much. A pure core with the clock passed in
// (seconds on any monotonic scale).
//
// Limits are token buckets refilled continuously: a limit of N per minute
// holds at most N and refills N/60 a second, so a quiet tenant may burst up
// to a minute's worth. A request is admitted while its tenant has requests
// left and a positive token balance; its estimated cost is reserved then, and
// when it ends its true cost (from the engine's usage) replaces the estimate.
// So admission can overshoot a token limit by at most the estimate of the
// one request admitted last, never more, however many arrive at once.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "api/cost_expression.h"
#include "common/result.h"

namespace loadstar::gateway {

using api::CostExpression;

struct TenantLimits {
  std::optional<double> requests_per_minute;
  std::optional<double> tokens_per_minute;  // in cost units
  std::optional<uint32_t> max_concurrent;
  std::vector<std::string> models;  // the model names it may call; empty: all
  // Flow control on saturated services (see waiting_room.h).
  int32_t priority = 0;
  bool sheddable = false;
};

// What the x-ratelimit-* headers say (OpenAI's names): limit, remaining, and
// seconds until the bucket is full again; for requests and for tokens.
struct RateLimitState {
  std::optional<double> limit_requests, remaining_requests, reset_requests_s;
  std::optional<double> limit_tokens, remaining_tokens, reset_tokens_s;
};

class TenantLimiter {
 public:
  TenantLimiter(std::string name, TenantLimits limits, CostExpression cost);
  const std::string& name() const { return name_; }
  // Changes limits in place; what was used stays charged.
  void configure(TenantLimits limits, CostExpression cost);
  double cost(double input_tokens, double output_tokens) const;
  TenantLimits limits() const;
  // Whether its keys may call `model` (a name as clients send it).
  bool may_call(std::string_view model) const;

  struct Decision {
    bool admitted = false;
    std::string reason;  // when refused: which limit
    double retry_after_s = 0;
    RateLimitState state;
  };
  // Admits (and reserves `estimated_cost`) or refuses.
  Decision admit(double now_s, double estimated_cost);
  // Ends an admitted request: releases its concurrency slot and charges
  // `actual_cost` in place of its estimate.
  void finish(double now_s, double estimated_cost, double actual_cost);
  RateLimitState state(double now_s);
  uint32_t in_flight() const;

 private:
  struct Bucket {
    double capacity = 0, level = 0, updated_s = 0;
    void refill(double now_s);
    double rate() const { return capacity / 60; }
    double reset_s() const { return capacity > level ? (capacity - level) / rate() : 0; }
  };
  RateLimitState state_locked() const;

  const std::string name_;
  mutable std::mutex mu_;
  TenantLimits limits_;
  CostExpression cost_;
  Bucket requests_, tokens_;
  uint32_t in_flight_ = 0;
};

// API keys to tenants. Keys are held only as SHA-256 digests.
class TenantDirectory {
 public:
  struct Key {
    std::string sha256;  // hex
    std::string name;    // the key's label (for logs and metrics; never the key)
    bool revoked = false;
  };
  void add(std::shared_ptr<TenantLimiter> tenant, const std::vector<Key>& keys);
  bool empty() const { return tenants_.empty(); }

  struct Lookup {
    TenantLimiter* tenant = nullptr;  // null: unknown or revoked
    bool revoked = false;
    std::string key_name;
  };
  // `authorization`: the Authorization header ("Bearer KEY").
  Lookup find(std::string_view authorization) const;

 private:
  struct Entry {
    std::shared_ptr<TenantLimiter> tenant;
    std::string key_name;
    bool revoked;
  };
  std::unordered_map<std::string, Entry> by_digest_;
  std::vector<std::shared_ptr<TenantLimiter>> tenants_;
};

// The API key of an Authorization header ("Bearer KEY"), or empty.
std::string_view bearer_token(std::string_view authorization);

// Whole seconds for Retry-After (at least 1) and OpenAI-style durations for
// x-ratelimit-reset-* ("1s", "6m0s", "120ms").
int64_t retry_after_seconds(double seconds);
std::string reset_duration(double seconds);

}  // namespace loadstar::gateway
