// libFuzzer: the OpenAI request parser (engine side) and the gateway's
// simdjson peek never crash on any body, and agree on the model name of
// every body both accept; renaming the model (a route) gives a body whose
// model is the new name. engine-sim's KV-transfer parsers (a request's
// kv_transfer_params, --kv-transfer-config, the side channel's read and
// reply) never crash either, and accepted params name a prefill whole.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "enginesim/kv_transfer.h"
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
  namespace es = loadstar::enginesim;
  if (auto params = es::parse_kv_transfer_params(body);
      params.ok() && *params && (*params)->do_remote_prefill &&
      ((*params)->remote_port == 0 || (*params)->remote_host.empty()))
    std::abort();
  (void)es::parse_kv_transfer_config(body, 131072);
  (void)es::parse_kv_read_request(body);
  if (auto reply = es::parse_kv_read_reply(body); reply.ok()) (void)es::kv_read_reply_json(*reply);
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
