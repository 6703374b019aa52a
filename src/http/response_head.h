// A response's head (status line and header fields, RFC 9112 §4-6), parsed
// from the bytes read so far. The gateway reads an engine's socket itself
// and parses the head with this: Beast's parser allocated every field and
// its composed read added three layers of handlers per response, together
// a tenth of the streaming relay's CPU. Only what a proxy acts on is kept:
// the status, the body's framing, whether the connection stays open, the
// content type. Strict where laxness would let a response be framed two
// ways (RFC 9112 §11.2): CRLF line ends, no folded lines, no whitespace
// before a field's colon, one Content-Length. Pure: no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "http/body_decoder.h"

namespace loadstar::http {

struct ResponseHead {
  enum class Framing {
    kNone,        // no body: 1xx, 204, 304
    kLength,      // Content-Length bytes
    kChunked,     // Transfer-Encoding ending in chunked
    kUntilClose,  // the body ends when the connection does
  };
  int status = 0;
  size_t size = 0;  // bytes of the head, its blank line included
  Framing framing = Framing::kUntilClose;
  uint64_t content_length = 0;  // with kLength
  // The connection may carry another exchange after this one.
  bool keep_alive = false;
  std::string content_type;

  // The decoder of the body that follows the head.
  BodyDecoder body_decoder() const;
};

// Parses the head at the start of `in`. nullopt: `in` does not hold a whole
// head yet (read more). An error says what is malformed, or that the head
// is over `max_bytes` (Beast's default limit, 8 KiB, unless given).
Result<std::optional<ResponseHead>> parse_response_head(std::string_view in,
                                                        size_t max_bytes = 8192);

}  // namespace loadstar::http
