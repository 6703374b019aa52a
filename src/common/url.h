// URLs as the node agent's sources and peers use them: scheme://host[:port]/path?query.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace loadstar {

struct Url {
  std::string scheme;  // lower case: http, https, s3, hf, file
  std::string host;    // without brackets for IPv6 literals
  uint16_t port = 0;   // the scheme's default when the URL names none
  std::string target;  // path and query, always starting with '/'

  // scheme://host[:port] (the port only when not the default).
  std::string origin() const;
};

// Parses an absolute URL. Credentials in the authority (user:pass@) are
// rejected: they would end up in logs.
Result<Url> parse_url(std::string_view text);

// Resolves a Location header against the URL it came from.
Result<Url> resolve_location(const Url& base, std::string_view location);

// RFC 3986 percent-encoding of everything but unreserved characters; '/' is
// kept when `keep_slash` (for paths).
std::string uri_encode(std::string_view text, bool keep_slash);

}  // namespace loadstar
