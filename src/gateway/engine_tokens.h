// A prompt's token ids as the engine computes them, asked of the engine
// itself through vLLM's POST /tokenize (engine-sim answers it the same
// way). Engines that publish KV events name their cached blocks by token
// ids, so the gateway matches a prompt against them with the engine's own
// ids: its tokenizer and its chat template, exact for any model, without a
// tokenizer or a template renderer in the gateway. Pure: the exchange
// itself is the router's (route.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::gateway {

struct TokenizeAsk {
  // The ids, when the request carries them (a completion's prompt given as
  // token ids): nothing to ask.
  std::optional<std::vector<uint32_t>> ids;
  // Otherwise the body of POST /tokenize; empty when there is no prompt to
  // tokenize (the request is left to the engine to refuse).
  std::string body;
};

// What to ask for a client's request body. `chat`: a chat completion, whose
// messages, tools and template settings are passed on as vLLM's
// TokenizeChatRequest takes them (so the template renders as it will for
// the request); otherwise a completion's first prompt. `model`: the name
// the engine serves (the upstream body's model).
TokenizeAsk tokenize_ask(std::string_view client_body, bool chat, std::string_view model);

// The "tokens" of a /tokenize answer; kInvalidArgument when it is not one.
Result<std::vector<uint32_t>> parse_tokenize_response(std::string_view body);

}  // namespace loadstar::gateway
