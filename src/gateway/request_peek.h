// The few fields of an OpenAI request body the gateway routes by, read with
// simdjson's on-demand parser (no document tree); the rest of the body goes
// to the engine untouched, and the engine validates it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace loadstar::gateway {

struct RequestPeek {
  std::string model;
  bool stream = false;
  bool has_stream_options = false;
  bool include_usage = false;  // stream_options.include_usage
};

// kInvalidArgument naming the field when the body is not a JSON object or
// `model` is missing or not a string.
Result<RequestPeek> peek_request(std::string_view body);

struct Usage {
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
};
// The top-level "usage" object of a response body or SSE event payload, if any.
std::optional<Usage> peek_usage(std::string_view json);

// The body to send upstream: for a stream whose client did not ask for
// usage, the same request with stream_options.include_usage = true (the
// gateway needs the engine's token counts); otherwise the body unchanged.
std::string upstream_body(std::string_view body, const RequestPeek& peek);

}  // namespace loadstar::gateway
