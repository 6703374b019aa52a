#include "gateway/request_peek.h"

#include "gateway/json_scratch.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "common/strings.h"

namespace loadstar::gateway {

namespace {

// Appends a string, or the text parts of a content array, or token ids as
// "1,2,3,". Returns false on malformed JSON.
bool append_text(simdjson::ondemand::value value, std::string& out) {
  simdjson::ondemand::json_type type;
  if (value.type().get(type)) return false;
  if (type == simdjson::ondemand::json_type::string) {
    std::string_view text;
    if (value.get_string().get(text)) return false;
    out.append(text);
    return true;
  }
  if (type == simdjson::ondemand::json_type::array) {
    simdjson::ondemand::array array;
    if (value.get_array().get(array)) return false;
    bool first = true;
    for (auto element : array) {
      simdjson::ondemand::value v;
      if (element.get(v)) return false;
      simdjson::ondemand::json_type et;
      if (v.type().get(et)) return false;
      if (et == simdjson::ondemand::json_type::object) {  // a content part
        simdjson::ondemand::object part;
        if (v.get_object().get(part)) return false;
        std::string_view text;
        if (!part["text"].get_string().get(text)) out.append(text);
        continue;
      }
      if (!first && et == simdjson::ondemand::json_type::string) out.push_back('\x1e');
      first = false;
      if (!append_text(v, out)) return false;
    }
    return true;
  }
  if (type == simdjson::ondemand::json_type::object) return false;
  out.append(value.raw_json_token());  // a number (a token id), true, null
  out.push_back(',');
  return true;
}

bool append_messages(simdjson::ondemand::value value, std::string& out) {
  simdjson::ondemand::array messages;
  if (value.get_array().get(messages)) return false;
  for (auto element : messages) {
    simdjson::ondemand::object message;
    if (element.get_object().get(message)) return false;
    std::string role, content;
    for (auto field : message) {
      std::string_view key;
      if (field.unescaped_key().get(key)) return false;
      if (key == "role") {
        std::string_view r;
        if (!field.value().get_string().get(r)) role = r;
      } else if (key == "content") {
        simdjson::ondemand::value v;
        if (field.value().get(v) || !append_text(v, content)) return false;
      }
    }
    out.append(role);
    out.push_back('\n');
    out.append(content);
    out.push_back('\x1e');
  }
  return true;
}

}  // namespace

Result<RequestPeek> peek_request(std::string_view body) {
  JsonScratch& json = json_scratch();
  simdjson::padded_string_view padded = json.view(body);
  simdjson::ondemand::parser& parser = json.parser;
  simdjson::ondemand::document doc;
  simdjson::ondemand::object object;
  if (parser.iterate(padded).get(doc) || doc.get_object().get(object))
    return Error{ErrorCode::kInvalidArgument, "the request body is not a valid JSON object"};
  RequestPeek peek;
  bool have_model = false;
  for (auto field : object) {
    std::string_view key;
    if (field.unescaped_key().get(key))
      return Error{ErrorCode::kInvalidArgument, "the request body is not valid JSON"};
    if (key == "model") {
      simdjson::ondemand::value value;
      std::string_view model;
      if (field.value().get(value))
        return Error{ErrorCode::kInvalidArgument, "the request body is not valid JSON"};
      const std::string_view raw = value.raw_json_token();
      if (value.get_string().get(model))
        return Error{ErrorCode::kInvalidArgument, "model: must be a string"};
      peek.model = std::string(model);
      peek.model_offset = static_cast<size_t>(raw.data() - padded.data());
      peek.model_length = raw.find_last_of('"') + 1;
      have_model = true;
    } else if (key == "messages") {
      simdjson::ondemand::value value;
      if (field.value().get(value) || !append_messages(value, peek.prompt))
        return Error{ErrorCode::kInvalidArgument,
                     "messages: must be a list of {role, content} objects"};
    } else if (key == "prompt" || key == "input") {
      simdjson::ondemand::value value;
      if (field.value().get(value) || !append_text(value, peek.prompt))
        return Error{ErrorCode::kInvalidArgument, "the request body is not valid JSON"};
    } else if (key == "max_tokens" || key == "max_completion_tokens") {
      uint64_t n = 0;
      if (!field.value().get_uint64().get(n)) peek.max_tokens = n;
    } else if (key == "stream") {
      bool stream = false;
      if (!field.value().get_bool().get(stream)) peek.stream = stream;
    } else if (key == "stream_options") {
      simdjson::ondemand::object options;
      if (!field.value().get_object().get(options)) {
        peek.has_stream_options = true;
        bool include = false;
        if (!options["include_usage"].get_bool().get(include)) peek.include_usage = include;
      }
    }
  }
  if (!have_model || peek.model.empty())
    return Error{ErrorCode::kInvalidArgument, "model: a model name is required"};
  return peek;
}

std::optional<Usage> peek_usage(std::string_view json) {
  JsonScratch& scratch = json_scratch();
  simdjson::padded_string_view padded = scratch.view(json);
  simdjson::ondemand::parser& parser = scratch.parser;
  simdjson::ondemand::document doc;
  simdjson::ondemand::object usage;
  if (parser.iterate(padded).get(doc) || doc["usage"].get_object().get(usage)) return std::nullopt;
  Usage out;
  for (auto field : usage) {
    std::string_view key;
    uint64_t value = 0;
    if (field.unescaped_key().get(key)) return std::nullopt;
    if (key == "prompt_tokens" && !field.value().get_uint64().get(value))
      out.prompt_tokens = value;
    else if (key == "completion_tokens" && !field.value().get_uint64().get(value))
      out.completion_tokens = value;
  }
  return out;
}

std::string upstream_body(std::string_view original, const RequestPeek& peek,
                          std::string_view model) {
  std::string renamed;
  std::string_view body = original;
  if (!model.empty() && model != peek.model) {
    renamed.reserve(body.size() + model.size());
    renamed.append(body.substr(0, peek.model_offset));
    renamed.push_back('"');
    append_json_escaped(renamed, model);
    renamed.push_back('"');
    renamed.append(body.substr(peek.model_offset + peek.model_length));
    body = renamed;
  }
  if (!peek.stream || peek.include_usage) return std::string(body);
  if (!peek.has_stream_options) {
    // Splice the option in after the opening brace; the object has at least
    // "model", so a comma always follows.
    const size_t brace = body.find('{');
    std::string out;
    out.reserve(body.size() + 48);
    out.append(body.substr(0, brace + 1));
    out.append(R"("stream_options":{"include_usage":true},)");
    out.append(body.substr(brace + 1));
    return out;
  }
  nlohmann::json doc = nlohmann::json::parse(body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return std::string(body);
  // A duplicate "stream_options" key: the last one wins here, and it may
  // not be an object.
  nlohmann::json& options = doc["stream_options"];
  if (!options.is_object()) options = nlohmann::json::object();
  options["include_usage"] = true;
  return doc.dump();
}

std::string upstream_body_selecting_adapter(std::string_view body, const RequestPeek& peek,
                                            std::string_view model, int adapter_index) {
  nlohmann::json doc = nlohmann::json::parse(body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return upstream_body(body, peek, model);
  if (!model.empty()) doc["model"] = model;
  doc.erase("lora");
  if (adapter_index >= 0)
    doc["lora"] = nlohmann::json::array({{{"id", adapter_index}, {"scale", 1.0}}});
  if (peek.stream && !peek.include_usage) {
    nlohmann::json& options = doc["stream_options"];
    if (!options.is_object()) options = nlohmann::json::object();
    options["include_usage"] = true;
  }
  return doc.dump();
}

}  // namespace loadstar::gateway
