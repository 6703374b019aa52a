// A message's head (start line and header fields, RFC 9112 §2-6), parsed
// from the bytes read so far: a request's, by the HTTP server, and a
// response's, by the gateway reading an engine's socket itself. Beast's
// parser allocated every field and its composed reads added three layers of
// handlers per message, together a tenth of the streaming relay's CPU.
// Strict where laxness would let a message be framed two ways (request
// smuggling, RFC 9112 §11.2): CRLF line ends, no folded lines, no
// whitespace before a field's colon, one Content-Length; a request may not
// carry both a Content-Length and a Transfer-Encoding. Pure: no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "http/body_decoder.h"

namespace loadstar::http {

struct Header {
  std::string name;
  std::string value;
};

struct RequestHead {
  std::string method;
  std::string target;
  std::vector<Header> headers;  // as sent, in order
  size_t size = 0;              // bytes of the head, its blank line included
  bool http11 = true;           // HTTP/1.1 (else 1.0)
  // The body: chunked, else content_length bytes (0 without either field).
  bool chunked = false;
  uint64_t content_length = 0;
  // The connection may carry another request after this one.
  bool keep_alive = true;
  // The client waits for a 100 Continue before sending the body.
  bool expect_continue = false;

  // The decoder of the body that follows the head.
  BodyDecoder body_decoder() const;
};

// Parses the request head at the start of `in` (empty lines before it are
// skipped, RFC 9112 §2.2). nullopt: `in` does not hold a whole head yet.
// An error says what is malformed (kCorrupt: answer 400; a line ended by a
// bare LF is refused at once, not left to wait for a CRLF), that the body
// has a transfer coding other than chunked (kInvalidArgument: 501), or
// that the head is over `max_bytes` (kOutOfRange: 431).
Result<std::optional<RequestHead>> parse_request_head(std::string_view in, size_t max_bytes);

// Whether `in`, from `from` on, holds a LF without a CR before it.
bool has_bare_lf(std::string_view in, size_t from = 0);

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
