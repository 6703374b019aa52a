#include "gateway/engine_tokens.h"

#include "gateway/json_scratch.h"

#include <nlohmann/json.hpp>

namespace loadstar::gateway {

namespace {

// The fields of a chat completion that vLLM's TokenizeChatRequest also
// takes, all of which change the rendered prompt.
constexpr const char* kChatFields[] = {"messages",
                                       "tools",
                                       "chat_template",
                                       "chat_template_kwargs",
                                       "add_generation_prompt",
                                       "continue_final_message",
                                       "add_special_tokens",
                                       "mm_processor_kwargs"};

std::optional<std::vector<uint32_t>> ids_of(const nlohmann::json& array) {
  std::vector<uint32_t> ids;
  ids.reserve(array.size());
  for (const auto& id : array) {
    if (!id.is_number_unsigned() || id.get<uint64_t>() > UINT32_MAX) return std::nullopt;
    ids.push_back(id.get<uint32_t>());
  }
  return ids;
}

}  // namespace

TokenizeAsk tokenize_ask(std::string_view client_body, bool chat, std::string_view model) {
  TokenizeAsk ask;
  const nlohmann::json doc = nlohmann::json::parse(client_body, nullptr, false);
  if (!doc.is_object()) return ask;
  nlohmann::json out = {{"model", model}};
  if (chat) {
    if (!doc.contains("messages")) return ask;
    for (const char* field : kChatFields)
      if (auto it = doc.find(field); it != doc.end()) out[field] = *it;
  } else {
    auto prompt = doc.find("prompt");
    if (prompt == doc.end()) return ask;
    const nlohmann::json* first = &*prompt;
    // A list of prompts (strings or id lists) is routed by its first.
    if (first->is_array() && !first->empty() &&
        (first->front().is_string() || first->front().is_array()))
      first = &first->front();
    if (first->is_array()) {
      ask.ids = ids_of(*first);
      return ask;  // ids, or none when they are not ids (the engine refuses those)
    }
    if (!first->is_string()) return ask;
    out["prompt"] = *first;
    if (auto it = doc.find("add_special_tokens"); it != doc.end()) out["add_special_tokens"] = *it;
  }
  ask.body = out.dump();
  return ask;
}

Result<std::vector<uint32_t>> parse_tokenize_response(std::string_view body) {
  JsonScratch& json = json_scratch();
  simdjson::padded_string_view padded = json.view(body);
  simdjson::ondemand::parser& parser = json.parser;
  simdjson::ondemand::document doc;
  simdjson::ondemand::array tokens;
  if (parser.iterate(padded).get(doc) || doc["tokens"].get_array().get(tokens))
    return make_error(ErrorCode::kInvalidArgument, "a /tokenize answer without a \"tokens\" array");
  std::vector<uint32_t> ids;
  for (auto element : tokens) {
    uint64_t id;
    if (element.get_uint64().get(id) || id > UINT32_MAX)
      return make_error(ErrorCode::kInvalidArgument, "a /tokenize answer's tokens must be ids");
    ids.push_back(static_cast<uint32_t>(id));
  }
  return ids;
}

}  // namespace loadstar::gateway
