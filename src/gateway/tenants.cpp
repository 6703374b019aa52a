#include "gateway/tenants.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include <fmt/format.h>

#include "common/digest.h"

namespace loadstar::gateway {

// ---------------------------------------------------------------- limiter

void TenantLimiter::Bucket::refill(double now_s) {
  if (capacity <= 0) return;
  if (now_s > updated_s) level = std::min(capacity, level + (now_s - updated_s) * rate());
  updated_s = std::max(updated_s, now_s);
}

TenantLimiter::TenantLimiter(std::string name, TenantLimits limits, CostExpression cost)
    : name_(std::move(name)) {
  configure(limits, std::move(cost));
}

TenantLimits TenantLimiter::limits() const {
  std::lock_guard lock(mu_);
  return limits_;
}

bool TenantLimiter::may_call(std::string_view model) const {
  std::lock_guard lock(mu_);
  return limits_.models.empty() ||
         std::find(limits_.models.begin(), limits_.models.end(), model) != limits_.models.end();
}

void TenantLimiter::configure(TenantLimits limits, CostExpression cost) {
  std::lock_guard lock(mu_);
  auto resize = [](Bucket& b, std::optional<double> limit) {
    const double capacity = limit.value_or(0);
    if (b.capacity == 0) {
      b.level = capacity;  // a new bucket starts full
    } else {
      b.level = std::min(capacity, b.level - (b.capacity - capacity));  // keep what was used
    }
    b.capacity = capacity;
  };
  resize(requests_, limits.requests_per_minute);
  resize(tokens_, limits.tokens_per_minute);
  limits_ = limits;
  cost_ = std::move(cost);
}

double TenantLimiter::cost(double input_tokens, double output_tokens) const {
  std::lock_guard lock(mu_);
  return cost_.evaluate(input_tokens, output_tokens);
}

RateLimitState TenantLimiter::state_locked() const {
  RateLimitState s;
  if (limits_.requests_per_minute) {
    s.limit_requests = requests_.capacity;
    s.remaining_requests = std::max(0.0, std::floor(requests_.level));
    s.reset_requests_s = requests_.reset_s();
  }
  if (limits_.tokens_per_minute) {
    s.limit_tokens = tokens_.capacity;
    s.remaining_tokens = std::max(0.0, std::floor(tokens_.level));
    s.reset_tokens_s = tokens_.reset_s();
  }
  return s;
}

TenantLimiter::Decision TenantLimiter::admit(double now_s, double estimated_cost) {
  std::lock_guard lock(mu_);
  requests_.refill(now_s);
  tokens_.refill(now_s);
  Decision d;
  if (limits_.max_concurrent && in_flight_ >= *limits_.max_concurrent) {
    d.reason = fmt::format("concurrent requests ({} allowed)", *limits_.max_concurrent);
    d.retry_after_s = 1;
  } else if (limits_.requests_per_minute && requests_.level < 1) {
    d.reason = fmt::format("requests per minute ({})", *limits_.requests_per_minute);
    d.retry_after_s = (1 - requests_.level) / requests_.rate();
  } else if (limits_.tokens_per_minute && tokens_.level <= 0) {
    d.reason = fmt::format("tokens per minute ({})", *limits_.tokens_per_minute);
    d.retry_after_s = (1e-9 - tokens_.level) / tokens_.rate();
  } else {
    d.admitted = true;
    ++in_flight_;
    if (limits_.requests_per_minute) requests_.level -= 1;
    if (limits_.tokens_per_minute) tokens_.level -= estimated_cost;
  }
  d.state = state_locked();
  return d;
}

void TenantLimiter::finish(double now_s, double estimated_cost, double actual_cost) {
  std::lock_guard lock(mu_);
  if (in_flight_ > 0) --in_flight_;
  tokens_.refill(now_s);
  if (limits_.tokens_per_minute)
    tokens_.level = std::min(tokens_.capacity, tokens_.level + estimated_cost - actual_cost);
}

RateLimitState TenantLimiter::state(double now_s) {
  std::lock_guard lock(mu_);
  requests_.refill(now_s);
  tokens_.refill(now_s);
  return state_locked();
}

uint32_t TenantLimiter::in_flight() const {
  std::lock_guard lock(mu_);
  return in_flight_;
}

// ---------------------------------------------------------------- keys

void TenantDirectory::add(std::shared_ptr<TenantLimiter> tenant, const std::vector<Key>& keys) {
  for (const Key& k : keys) by_digest_[k.sha256] = Entry{tenant, k.name, k.revoked};
  tenants_.push_back(std::move(tenant));
}

std::string_view bearer_token(std::string_view authorization) {
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.size() <= kBearer.size()) return {};
  for (size_t i = 0; i < kBearer.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) !=
        std::tolower(static_cast<unsigned char>(kBearer[i])))
      return {};
  std::string_view token = authorization.substr(kBearer.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  return token;
}

TenantDirectory::Lookup TenantDirectory::find(std::string_view authorization) const {
  const std::string_view key = bearer_token(authorization);
  if (key.empty()) return {};
  auto it = by_digest_.find(sha256_hex(key));
  if (it == by_digest_.end()) return {};
  if (it->second.revoked) return {nullptr, true, it->second.key_name};
  return {it->second.tenant.get(), false, it->second.key_name};
}

int64_t retry_after_seconds(double seconds) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(seconds)));
}

std::string reset_duration(double seconds) {
  if (seconds < 1) return fmt::format("{}ms", static_cast<int64_t>(std::ceil(seconds * 1000)));
  const auto whole = static_cast<int64_t>(std::ceil(seconds));
  if (whole < 60) return fmt::format("{}s", whole);
  return fmt::format("{}m{}s", whole / 60, whole % 60);
}

}  // namespace loadstar::gateway
