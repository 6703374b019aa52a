// One way to open a Redis connection for the gateway's shared state (tenant
// limits, picks and load): connect within a timeout, authenticate when the
// address has a password, set the timeout on replies. hiredis stays out of
// the header.
#pragma once

#include <sys/time.h>

#include "common/result.h"
#include "gateway/redis_address.h"

struct redisContext;

namespace loadstar::gateway {

// A connected context the caller owns (redisFree), or why not: "is
// unreachable (...)" or "refused the password". Never names the password.
Result<redisContext*> connect_redis(const RedisAddress& address, timeval timeout);

}  // namespace loadstar::gateway
