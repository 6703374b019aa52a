// libFuzzer: the OpenAI request parser (engine side) and the gateway's
// simdjson peek never crash on any body, and agree on the model name of
// every body both accept; renaming the model (a route) gives a body whose
// model is the new name.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "gateway/request_peek.h"
#include "openai/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  auto peek = loadstar::gateway::peek_request(body);
  if (peek.ok()) {
    (void)loadstar::gateway::upstream_body(body, *peek);
    const std::string renamed = loadstar::gateway::upstream_body(body, *peek, "re\"named");
    auto again = loadstar::gateway::peek_request(renamed);
    if (!again.ok() || again->model != "re\"named") std::abort();
    // llama.cpp's adapter selection: the client's "lora" never survives.
    const std::string selected =
        loadstar::gateway::upstream_body_selecting_adapter(body, *peek, "m", 1);
    auto sent = nlohmann::json::parse(selected, nullptr, false);
    if (sent.is_object() && (sent["lora"].size() != 1 || sent["lora"][0]["id"] != 1)) std::abort();
  }
  (void)loadstar::gateway::peek_usage(body);
  for (auto endpoint :
       {loadstar::openai::Endpoint::kChatCompletions, loadstar::openai::Endpoint::kCompletions,
        loadstar::openai::Endpoint::kEmbeddings}) {
    auto request = loadstar::openai::parse_request(endpoint, body);
    if (!request.ok()) continue;
    std::vector<loadstar::tokenizer::TokenId> tokens;
    for (size_t i = 0; i < loadstar::openai::prompt_count(*request); ++i)
      loadstar::openai::prompt_tokens(*request, i, tokens);
    if (peek.ok() && peek->model != request->model) std::abort();
  }
  return 0;
}
