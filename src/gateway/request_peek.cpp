#include "gateway/request_peek.h"

#include <simdjson.h>
#include <nlohmann/json.hpp>

namespace loadstar::gateway {

Result<RequestPeek> peek_request(std::string_view body) {
  simdjson::padded_string padded(body);
  simdjson::ondemand::parser parser;
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
      std::string_view model;
      if (field.value().get_string().get(model))
        return Error{ErrorCode::kInvalidArgument, "model: must be a string"};
      peek.model = std::string(model);
      have_model = true;
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
  simdjson::padded_string padded(json);
  simdjson::ondemand::parser parser;
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

std::string upstream_body(std::string_view body, const RequestPeek& peek) {
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
  if (doc.is_discarded()) return std::string(body);
  doc["stream_options"]["include_usage"] = true;
  return doc.dump();
}

}  // namespace loadstar::gateway
