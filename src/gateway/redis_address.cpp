#include "gateway/redis_address.h"

namespace loadstar::gateway {

Result<RedisAddress> parse_redis_url(std::string_view url) {
  if (!url.starts_with("redis://"))
    return make_error(ErrorCode::kInvalidArgument, "--redis: not redis://HOST[:PORT]");
  std::string_view rest = url.substr(8);
  RedisAddress a;
  if (const size_t at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view auth = rest.substr(0, at);
    if (auth.starts_with(':')) auth.remove_prefix(1);
    a.password = std::string(auth);
    rest = rest.substr(at + 1);
  }
  if (const size_t slash = rest.find('/'); slash != std::string_view::npos)
    rest = rest.substr(0, slash);
  if (const size_t colon = rest.rfind(':'); colon != std::string_view::npos) {
    int port = 0;
    for (char c : rest.substr(colon + 1)) {
      if (c < '0' || c > '9' || port > 65535) {
        port = -1;
        break;
      }
      port = port * 10 + (c - '0');
    }
    if (port <= 0 || port > 65535)
      return make_error(ErrorCode::kInvalidArgument, "--redis: the port is not 1..65535");
    a.port = static_cast<uint16_t>(port);
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) return make_error(ErrorCode::kInvalidArgument, "--redis: no host");
  a.host = std::string(rest);
  return a;
}

}  // namespace loadstar::gateway
