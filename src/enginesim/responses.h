// OpenAI response bodies as vLLM writes them: whole JSON for a finished
// request, and the SSE events of a stream. Stream events are assembled from
// pre-built prefixes, so a token costs one small append, not a JSON document.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine_core.h"
#include "openai/protocol.h"

namespace loadstar::enginesim {

struct Usage {
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  uint32_t cached_tokens = 0;
};

class ResponseEncoder {
 public:
  ResponseEncoder(openai::Endpoint endpoint, std::string id, std::string model, int64_t created,
                  bool include_usage);

  // Non-streaming: the whole response.
  std::string complete(std::string_view text, engine::FinishReason finish,
                       const Usage& usage) const;

  // Streaming, each returns whole "data: ...\n\n" events.
  std::string first_event() const;  // chat: the assistant role; completions: nothing
  void append_delta(std::string& out, std::string_view text, engine::FinishReason finish) const;
  std::string usage_event(const Usage& usage) const;
  static std::string error_event(const openai::ApiError& error);
  static constexpr std::string_view kDone = "data: [DONE]\n\n";

 private:
  std::string usage_json(const Usage& usage) const;

  openai::Endpoint endpoint_;
  std::string id_;
  std::string model_;
  int64_t created_;
  bool include_usage_;
  std::string chunk_prefix_;  // up to the text of the delta
};

// Deterministic embedding of a token sequence: the normalised sum of a fixed
// pseudo-random vector per token, so texts sharing words are close.
std::vector<float> embed_tokens(const std::vector<tokenizer::TokenId>& tokens, uint32_t dimensions);

std::string embeddings_response(const std::string& model,
                                const std::vector<std::vector<float>>& vectors, bool base64,
                                uint32_t prompt_tokens);

}  // namespace loadstar::enginesim
