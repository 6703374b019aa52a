// The few fields of an OpenAI request body the gateway routes by, read with
// simdjson's on-demand parser (no document tree); the rest of the body goes
// to the engine untouched, and the engine validates it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::gateway {

struct RequestPeek {
  std::string model;
  // Where the model's JSON string (quotes included) sits in the body, so a
  // route can send the request on under another name.
  size_t model_offset = 0;
  size_t model_length = 0;
  bool stream = false;
  bool has_stream_options = false;
  bool include_usage = false;          // stream_options.include_usage
  std::optional<uint64_t> max_tokens;  // max_tokens or max_completion_tokens
  // The prompt as text, for prefix hashing and token estimates: chat
  // messages as "role\ncontent\x1e" each (text parts of a content array
  // concatenated); a completion's prompt (or embedding's input) as given,
  // several separated by "\x1e"; token ids as "1,2,3,".
  std::string prompt;
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

// The body to send upstream: with `model` in place of the client's model
// name when it is given and differs (a route renaming the model for its
// backend); for a stream whose client did not ask for usage, with
// stream_options.include_usage = true (the gateway needs the engine's token
// counts); otherwise the body unchanged.
std::string upstream_body(std::string_view body, const RequestPeek& peek,
                          std::string_view model = {});

// For an engine that selects LoRA adapters per request by index (llama.cpp's
// "lora": [{"id", "scale"}]): upstream_body's changes, the client's own
// "lora" dropped (a client names an adapter by its model name, which its
// tenant may or may not be allowed), and for `adapter_index` >= 0 that
// adapter alone at scale 1. The body must be a JSON object (peeked).
std::string upstream_body_selecting_adapter(std::string_view body, const RequestPeek& peek,
                                            std::string_view model, int adapter_index);

}  // namespace loadstar::gateway
