#include "gateway/engine_tokens.h"

#include "gateway/json_scratch.h"

#include <algorithm>
#include <utility>

#include "common/strings.h"

namespace loadstar::gateway {

namespace {

// The fields of a chat completion that vLLM's TokenizeChatRequest also
// takes, all of which change the rendered prompt.
constexpr std::string_view kChatFields[] = {"messages",
                                            "tools",
                                            "chat_template",
                                            "chat_template_kwargs",
                                            "add_generation_prompt",
                                            "continue_final_message",
                                            "add_special_tokens",
                                            "mm_processor_kwargs"};

namespace od = simdjson::ondemand;

// The ids from `it` to `end`: nullopt unless every element is one (an
// unsigned integer that fits 32 bits).
std::optional<std::vector<uint32_t>> ids_from(od::array_iterator it, od::array_iterator end) {
  std::vector<uint32_t> ids;
  for (; it != end; ++it) {
    uint64_t id;
    if ((*it).get_uint64().get(id) || id > UINT32_MAX) return std::nullopt;
    ids.push_back(static_cast<uint32_t>(id));
  }
  return ids;
}

// A value's JSON text as the client wrote it: what the engine is asked is
// the client's own text, not a re-serialization of it (prompts are long).
// Scalars are checked as they are copied (a string's escapes, a literal's
// spelling); arrays and objects are copied as delimited, their insides
// unchecked: a malformed one costs one /tokenize the engine refuses, as
// the request itself will be.
simdjson::error_code raw_text(od::value value, std::string_view& out) {
  od::json_type type;
  if (auto error = value.type().get(type)) return error;
  if (type == od::json_type::array) {
    od::array a;
    if (auto error = value.get_array().get(a)) return error;
    return a.raw_json().get(out);
  }
  if (type == od::json_type::object) {
    od::object o;
    if (auto error = value.get_object().get(o)) return error;
    return o.raw_json().get(out);
  }
  out = value.raw_json_token();
  while (!out.empty() &&
         (out.back() == ' ' || out.back() == '\t' || out.back() == '\n' || out.back() == '\r'))
    out.remove_suffix(1);
  switch (type) {
    case od::json_type::string: {
      std::string_view unescaped;
      return value.get_string().get(unescaped);
    }
    case od::json_type::number: {
      double number;
      return value.get_double().get(number);
    }
    case od::json_type::boolean: {
      bool flag;
      return value.get_bool().get(flag);
    }
    case od::json_type::null: {
      bool null = false;
      if (auto error = value.is_null().get(null)) return error;
      return null ? simdjson::SUCCESS : simdjson::N_ATOM_ERROR;
    }
    default:
      return simdjson::INCORRECT_TYPE;
  }
}

// A completion's prompt: a string, a list whose first element (a string or
// an id list) is the one routed by, or an id list. Either `text` (its JSON
// text) or `ids` is set; neither: nothing to ask.
simdjson::error_code read_prompt(od::value prompt, std::string_view& text,
                                 std::optional<std::vector<uint32_t>>& ids) {
  od::json_type type;
  if (auto error = prompt.type().get(type)) return error;
  if (type == od::json_type::string) return raw_text(prompt, text);
  if (type != od::json_type::array) return simdjson::SUCCESS;
  od::array list;
  if (auto error = prompt.get_array().get(list)) return error;
  od::array_iterator it;
  if (auto error = list.begin().get(it)) return error;
  if (it == list.end()) {
    ids.emplace();
    return simdjson::SUCCESS;
  }
  od::value first;
  if (auto error = (*it).get(first)) return error;
  od::json_type first_type;
  if (auto error = first.type().get(first_type)) return error;
  if (first_type == od::json_type::string) return raw_text(first, text);
  if (first_type == od::json_type::array) {
    od::array inner;
    od::array_iterator begin;
    if (auto error = first.get_array().get(inner)) return error;
    if (auto error = inner.begin().get(begin)) return error;
    ids = ids_from(begin, inner.end());
    return simdjson::SUCCESS;
  }
  ids = ids_from(it, list.end());
  return simdjson::SUCCESS;
}

}  // namespace

TokenizeAsk tokenize_ask(std::string_view client_body, bool chat, std::string_view model) {
  TokenizeAsk ask;
  JsonScratch& json = json_scratch();
  simdjson::padded_string_view padded = json.view(client_body);
  od::document doc;
  od::object object;
  if (json.parser.iterate(padded).get(doc) || doc.get_object().get(object)) return ask;
  // The fields passed on, as the client wrote them (a repeated key: the last).
  std::vector<std::pair<std::string_view, std::string_view>> fields;
  std::optional<std::vector<uint32_t>> ids;
  for (auto field : object) {
    std::string_view key;
    od::value value;
    if (field.unescaped_key().get(key) || field.value().get(value)) return ask;
    std::string_view text;
    if (chat) {
      auto known = std::find(std::begin(kChatFields), std::end(kChatFields), key);
      if (known == std::end(kChatFields)) continue;
      key = *known;  // the name outlives the parser's key buffer
      if (raw_text(value, text)) return ask;
    } else if (key == "prompt") {
      key = "prompt";
      ids.reset();
      if (read_prompt(value, text, ids)) return ask;
      if (text.empty()) {  // ids, or not a prompt the engine could tokenize
        std::erase_if(fields, [](const auto& f) { return f.first == "prompt"; });
        continue;
      }
    } else if (key == "add_special_tokens") {
      key = "add_special_tokens";
      if (raw_text(value, text)) return ask;
    } else {
      continue;
    }
    std::erase_if(fields, [&](const auto& f) { return f.first == key; });
    fields.emplace_back(key, text);
  }
  if (ids) {
    ask.ids = std::move(ids);
    return ask;
  }
  const std::string_view needed = chat ? "messages" : "prompt";
  if (std::none_of(fields.begin(), fields.end(), [&](const auto& f) { return f.first == needed; }))
    return ask;
  size_t size = model.size() + 16;
  for (const auto& [key, text] : fields) size += key.size() + text.size() + 4;
  ask.body.reserve(size);
  ask.body = "{\"model\":\"";
  append_json_escaped(ask.body, model);
  ask.body += '"';
  for (const auto& [key, text] : fields) {
    ask.body += ",\"";
    ask.body += key;  // one of the names above: nothing to escape
    ask.body += "\":";
    ask.body += text;
  }
  ask.body += '}';
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
