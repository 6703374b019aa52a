#include "gateway/shared_limits.h"

#include <hiredis/hiredis.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "gateway/redis_connect.h"

namespace loadstar::gateway {

namespace asio = boost::asio;

namespace {

// KEYS: requests bucket, tokens bucket, in-flight set.
// ARGV: rpm (0: none), tpm (0: none), max concurrent (0: none), estimate,
//       request id, in-flight lease seconds.
// Buckets hold `level` and `at` (Redis's clock, seconds); a bucket of N per
// minute refills N/60 a second up to N, as the local limiter's. In-flight
// requests are a sorted set scored by lease end, so a gateway that dies
// leaks nothing past the lease. Returns {admitted, reason, retry_after,
// requests left, tokens left}.
constexpr const char* kAdmit = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, maxc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local est = tonumber(ARGV[4])
local function level(key, cap)
  if cap <= 0 then return nil end
  local v = redis.call('HMGET', key, 'level', 'at')
  local lv, at = tonumber(v[1]), tonumber(v[2])
  if lv == nil then return cap end
  return math.min(cap, lv + (now - at) * cap / 60)
end
local r, k = level(KEYS[1], rpm), level(KEYS[2], tpm)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local c = redis.call('ZCARD', KEYS[3])
local reason, retry = '', 0
if maxc > 0 and c >= maxc then
  reason, retry = 'concurrent requests (' .. maxc .. ' allowed)', 1
elseif r ~= nil and r < 1 then
  reason, retry = 'requests per minute (' .. rpm .. ')', (1 - r) * 60 / rpm
elseif k ~= nil and k <= 0 then
  reason, retry = 'tokens per minute (' .. tpm .. ')', (1e-9 - k) * 60 / tpm
else
  if r ~= nil then r = r - 1 end
  if k ~= nil then k = k - est end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[5])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
end
if r ~= nil then redis.call('HSET', KEYS[1], 'level', r, 'at', now); redis.call('EXPIRE', KEYS[1], 120) end
if k ~= nil then redis.call('HSET', KEYS[2], 'level', k, 'at', now); redis.call('EXPIRE', KEYS[2], 120) end
return {reason == '' and 1 or 0, reason, tostring(retry), tostring(r or -1), tostring(k or -1)}
)lua";

// KEYS: tokens bucket, in-flight set. ARGV: tpm, estimate - actual, request id.
constexpr const char* kFinish = R"lua(
redis.call('ZREM', KEYS[2], ARGV[3])
local tpm = tonumber(ARGV[1])
if tpm > 0 then
  local v = redis.call('HMGET', KEYS[1], 'level', 'at')
  if v[1] then
    local lv = math.min(tpm, tonumber(v[1]) + tonumber(ARGV[2]))
    redis.call('HSET', KEYS[1], 'level', lv)
  end
end
return 1
)lua";

constexpr double kLeaseSeconds = 900;  // longer than any request the gateway lets run

std::string key(const std::string& tenant, const char* what) {
  return fmt::format("loadstar:tenant:{}:{}", tenant, what);
}

}  // namespace

struct SharedLimits::Impl {
  RedisAddress address;
  timeval timeout{};
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::thread thread;
  redisContext* redis = nullptr;
  std::chrono::steady_clock::time_point last_attempt{};
  std::chrono::steady_clock::time_point last_warning{};
  SharedLimits* owner = nullptr;

  ~Impl() {
    work.reset();
    io.stop();
    if (thread.joinable()) thread.join();
    if (redis) redisFree(redis);
  }

  void warn(const std::string& what) {
    ++owner->errors_;
    owner->up_ = false;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_warning > std::chrono::seconds(10)) {
      last_warning = now;
      spdlog::warn(
          "shared tenant limits: Redis at {}:{} {}; limits are per gateway replica until it is "
          "back",
          address.host, address.port, what);
    }
  }

  // The connection, (re)made at most once a second; null when down.
  redisContext* connection() {
    if (redis) return redis;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_attempt < std::chrono::seconds(1)) return nullptr;
    last_attempt = now;
    auto c = connect_redis(address, timeout);
    if (!c.ok()) {
      warn(c.error().message);
      return nullptr;
    }
    redis = *c;
    if (!owner->up_.exchange(true))
      spdlog::info("shared tenant limits: Redis at {}:{} is up", address.host, address.port);
    return redis;
  }

  // Runs a command; null (and the connection dropped) on failure.
  redisReply* command(int argc, const char** argv, const size_t* lens) {
    redisContext* c = connection();
    if (!c) return nullptr;
    auto* reply = static_cast<redisReply*>(redisCommandArgv(c, argc, argv, lens));
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
      warn(reply ? fmt::format("answered an error ({})", reply->str)
                 : fmt::format("failed ({})", c->errstr));
      if (reply) freeReplyObject(reply);
      redisFree(redis);
      redis = nullptr;
      return nullptr;
    }
    return reply;
  }

  std::optional<TenantLimiter::Decision> admit(const std::string& tenant,
                                               const TenantLimits& limits, double estimate,
                                               const std::string& id) {
    const std::string keys[3] = {key(tenant, "requests"), key(tenant, "tokens"),
                                 key(tenant, "inflight")};
    const std::string args[6] = {fmt::format("{}", limits.requests_per_minute.value_or(0)),
                                 fmt::format("{}", limits.tokens_per_minute.value_or(0)),
                                 fmt::format("{}", limits.max_concurrent.value_or(0)),
                                 fmt::format("{}", estimate),
                                 id,
                                 fmt::format("{}", kLeaseSeconds)};
    // EVAL script 3 KEY KEY KEY ARG x 6
    const char* argv[12] = {"EVAL", kAdmit, "3"};
    size_t lens[12] = {4, std::strlen(kAdmit), 1};
    for (int i = 0; i < 3; ++i) argv[3 + i] = keys[i].c_str(), lens[3 + i] = keys[i].size();
    for (int i = 0; i < 6; ++i) argv[6 + i] = args[i].c_str(), lens[6 + i] = args[i].size();
    redisReply* reply = command(12, argv, lens);
    if (!reply) return std::nullopt;
    std::optional<TenantLimiter::Decision> out;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 5) {
      TenantLimiter::Decision d;
      d.admitted = reply->element[0]->integer == 1;
      d.reason = std::string(reply->element[1]->str, reply->element[1]->len);
      d.retry_after_s = std::atof(reply->element[2]->str);
      const double requests_left = std::atof(reply->element[3]->str);
      const double tokens_left = std::atof(reply->element[4]->str);
      if (limits.requests_per_minute) {
        d.state.limit_requests = *limits.requests_per_minute;
        d.state.remaining_requests = std::max(0.0, std::floor(requests_left));
        d.state.reset_requests_s =
            (*limits.requests_per_minute - requests_left) * 60 / *limits.requests_per_minute;
      }
      if (limits.tokens_per_minute) {
        d.state.limit_tokens = *limits.tokens_per_minute;
        d.state.remaining_tokens = std::max(0.0, std::floor(tokens_left));
        d.state.reset_tokens_s =
            std::max(0.0, *limits.tokens_per_minute - tokens_left) * 60 / *limits.tokens_per_minute;
      }
      out = d;
    } else {
      warn("answered the admission script with something unexpected");
    }
    freeReplyObject(reply);
    return out;
  }

  void finish(const std::string& tenant, const TenantLimits& limits, double refund,
              const std::string& id) {
    const std::string keys[2] = {key(tenant, "tokens"), key(tenant, "inflight")};
    const std::string args[3] = {fmt::format("{}", limits.tokens_per_minute.value_or(0)),
                                 fmt::format("{}", refund), id};
    // EVAL script 2 KEY KEY ARG x 3
    const char* argv[8] = {"EVAL", kFinish, "2"};
    size_t lens[8] = {4, std::strlen(kFinish), 1};
    for (int i = 0; i < 2; ++i) argv[3 + i] = keys[i].c_str(), lens[3 + i] = keys[i].size();
    for (int i = 0; i < 3; ++i) argv[5 + i] = args[i].c_str(), lens[5 + i] = args[i].size();
    if (redisReply* reply = command(8, argv, lens)) freeReplyObject(reply);
  }
};

SharedLimits::SharedLimits(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SharedLimits::~SharedLimits() = default;

std::unique_ptr<SharedLimits> SharedLimits::create(RedisAddress address, double timeout_s) {
  auto impl = std::make_unique<Impl>();
  impl->address = std::move(address);
  impl->timeout.tv_sec = static_cast<time_t>(timeout_s);
  impl->timeout.tv_usec = static_cast<suseconds_t>((timeout_s - std::floor(timeout_s)) * 1e6);
  Impl* raw = impl.get();
  auto limits = std::unique_ptr<SharedLimits>(new SharedLimits(std::move(impl)));
  raw->owner = limits.get();
  raw->thread = std::thread([raw] {
    asio::post(raw->io, [raw] { raw->connection(); });
    raw->io.run();
  });
  return limits;
}

namespace {

// On the Redis thread. GCC 12 destroys some temporaries of a co_await
// expression twice: arguments here are by value and awaitables named.
asio::awaitable<std::optional<TenantLimiter::Decision>> admit_on_redis_thread(
    SharedLimits::Impl* impl, std::string tenant, TenantLimits limits, double estimated_cost,
    std::string request_id) {
  co_return impl->admit(tenant, limits, estimated_cost, request_id);
}

}  // namespace

asio::awaitable<std::optional<TenantLimiter::Decision>> SharedLimits::admit(
    std::string tenant, TenantLimits limits, double estimated_cost, std::string request_id) {
  Impl* impl = impl_.get();
  // The blocking call runs on the Redis thread; this coroutine resumes on
  // its own executor when it is done.
  auto on_thread = admit_on_redis_thread(impl, std::move(tenant), std::move(limits), estimated_cost,
                                         std::move(request_id));
  auto pending = asio::co_spawn(impl->io, std::move(on_thread), asio::use_awaitable);
  std::optional<TenantLimiter::Decision> decision = co_await std::move(pending);
  co_return decision;
}

void SharedLimits::finish(std::string tenant, TenantLimits limits, double estimated_cost,
                          double actual_cost, std::string request_id) {
  Impl* impl = impl_.get();
  asio::post(impl->io, [impl, tenant = std::move(tenant), limits = std::move(limits),
                        refund = estimated_cost - actual_cost,
                        id = std::move(request_id)] { impl->finish(tenant, limits, refund, id); });
}

}  // namespace loadstar::gateway
