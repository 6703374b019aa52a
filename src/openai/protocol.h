// The OpenAI-compatible API as vLLM serves it: request parsing with errors
// that name the field, and the one mapping from Loadstar errors to HTTP
// status codes and OpenAI's error JSON. Shared by the engine simulator and
// the gateway.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "tokenizer/tokenizer.h"

namespace loadstar::openai {

enum class Endpoint { kChatCompletions, kCompletions, kEmbeddings };

struct ApiError {
  int status = 500;
  std::string message;
  std::string param;  // the offending request field, when there is one
};

// ErrorCode -> HTTP status: invalid argument and out of range 400, not found
// 404, resource exhausted 503 (a full queue), unavailable 503, others 500.
ApiError to_api_error(const Error& error, std::string param = {});
// {"error":{"message":..,"type":"BadRequestError","param":..,"code":400}},
// the shape of OpenAI and of vLLM since 0.10; SDKs read error.message.
std::string error_body(const ApiError& error);
// The same for a bare status and message (no param); fits
// http::ServerOptions::error_body.
std::string error_body_for(int status, std::string_view message);
const char* error_type(int status);

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string model;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::optional<uint32_t> max_tokens;
  uint32_t min_tokens = 0;
  bool ignore_eos = false;
  std::optional<uint64_t> seed;
  std::vector<tokenizer::ChatMessage> messages;  // chat
  // completions: the prompt; embeddings: each input, in order. Given as text
  // or as token ids.
  struct Prompt {
    std::string text;
    std::vector<tokenizer::TokenId> ids;
    bool is_tokens = false;
  };
  std::vector<Prompt> prompts;
  bool base64 = false;  // embeddings: encoding_format
  std::optional<uint32_t> dimensions;
};

// Parses a request body. Errors are kInvalidArgument and name the field
// ("messages[1].content: ..."). Fields this server does not use are ignored,
// as vLLM does, so SDK defaults never fail a request.
Result<CompletionRequest> parse_request(Endpoint endpoint, std::string_view body);

// The prompt's token ids: chat messages through the chat template, or the
// prompt text / token ids. For embeddings, input `index`.
void prompt_tokens(const CompletionRequest& request, size_t index,
                   std::vector<tokenizer::TokenId>& out);
// How many prompts the request carries (1 except for embeddings).
size_t prompt_count(const CompletionRequest& request);

}  // namespace loadstar::openai
