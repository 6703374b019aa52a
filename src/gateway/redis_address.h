// Where the shared tenant limits live: redis://[:PASSWORD@]HOST[:PORT][/DB].
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace loadstar::gateway {

struct RedisAddress {
  std::string host = "127.0.0.1";
  uint16_t port = 6379;
  std::string password;  // AUTH when set; never logged
};

// Errors name the part that is wrong and never echo a password.
Result<RedisAddress> parse_redis_url(std::string_view url);

}  // namespace loadstar::gateway
