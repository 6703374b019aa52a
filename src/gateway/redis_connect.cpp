#include "gateway/redis_connect.h"

#include <hiredis/hiredis.h>

#include <fmt/format.h>

namespace loadstar::gateway {

Result<redisContext*> connect_redis(const RedisAddress& address, timeval timeout) {
  redisContext* c = redisConnectWithTimeout(address.host.c_str(), address.port, timeout);
  if (!c || c->err) {
    std::string why = c ? fmt::format("is unreachable ({})", c->errstr) : "is unreachable";
    if (c) redisFree(c);
    return Error{ErrorCode::kUnavailable, std::move(why)};
  }
  redisSetTimeout(c, timeout);
  if (!address.password.empty()) {
    auto* reply = static_cast<redisReply*>(redisCommand(c, "AUTH %s", address.password.c_str()));
    const bool ok = reply && reply->type != REDIS_REPLY_ERROR;
    if (reply) freeReplyObject(reply);
    if (!ok) {
      redisFree(c);
      return Error{ErrorCode::kUnavailable, "refused the password"};
    }
  }
  return c;
}

}  // namespace loadstar::gateway
