#include "openai/protocol.h"

#include <nlohmann/json.hpp>

#include "common/strings.h"

namespace loadstar::openai {

using nlohmann::json;
using tokenizer::TokenId;

const char* error_type(int status) {
  switch (status) {
    case 400:
      return "BadRequestError";
    case 401:
      return "AuthenticationError";
    case 403:
      return "PermissionDeniedError";
    case 404:
      return "NotFoundError";
    case 405:
      return "MethodNotAllowedError";
    case 413:
      return "RequestTooLargeError";
    case 429:
      return "RateLimitError";
    case 502:
      return "BadGatewayError";
    case 503:
      return "ServiceUnavailableError";
    case 504:
      return "GatewayTimeoutError";
    default:
      return status >= 500 ? "InternalServerError" : "BadRequestError";
  }
}

ApiError to_api_error(const Error& error, std::string param) {
  ApiError api;
  api.message = error.message;
  api.param = std::move(param);
  switch (error.code) {
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kOutOfRange:
      api.status = 400;
      break;
    case ErrorCode::kNotFound:
      api.status = 404;
      break;
    case ErrorCode::kConflict:
      api.status = 409;
      break;
    case ErrorCode::kResourceExhausted:
    case ErrorCode::kUnavailable:
      api.status = 503;
      break;
    default:
      api.status = 500;
  }
  return api;
}

std::string error_body(const ApiError& error) {
  std::string out = R"({"error":{"message":")";
  append_json_escaped(out, error.message);
  out += R"(","type":")";
  out += error_type(error.status);
  out += R"(","param":)";
  if (error.param.empty()) {
    out += "null";
  } else {
    out += '"';
    append_json_escaped(out, error.param);
    out += '"';
  }
  out += R"(,"code":)";
  out += std::to_string(error.status);
  out += "}}";
  return out;
}

std::string error_body_for(int status, std::string_view message) {
  return error_body(ApiError{status, std::string(message), {}});
}

namespace {

Error bad(std::string message) {
  return Error{ErrorCode::kInvalidArgument, std::move(message)};
}

// Optional non-negative integer field; a JSON null counts as absent.
Result<std::optional<uint64_t>> optional_uint(const json& doc, const char* key, uint64_t max) {
  auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) return std::optional<uint64_t>();
  if (!it->is_number_integer() || (it->is_number_integer() && it->get<int64_t>() < 0) ||
      it->get<uint64_t>() > max)
    return bad(fmt::format("{}: must be an integer between 0 and {}", key, max));
  return std::optional<uint64_t>(it->get<uint64_t>());
}

Result<bool> optional_bool(const json& doc, const char* key) {
  auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) return false;
  if (!it->is_boolean()) return bad(fmt::format("{}: must be true or false", key));
  return it->get<bool>();
}

Result<std::vector<TokenId>> token_array(const json& arr, std::string_view where) {
  std::vector<TokenId> ids;
  ids.reserve(arr.size());
  for (const auto& v : arr) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= tokenizer::kVocabSize)
      return bad(
          fmt::format("{}: token ids must be integers in [0, {})", where, tokenizer::kVocabSize));
    ids.push_back(v.get<TokenId>());
  }
  return ids;
}

Result<std::string> message_content(const json& content, size_t index) {
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    return bad(fmt::format("messages[{}].content: must be a string or an array of parts", index));
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const json& part = content[j];
    auto type = part.is_object() ? part.find("type") : part.end();
    if (!part.is_object() || type == part.end() || !type->is_string())
      return bad(
          fmt::format("messages[{}].content[{}]: must be an object with a 'type'", index, j));
    if (*type != "text")
      return bad(fmt::format("messages[{}].content[{}]: type '{}' is not supported by this model",
                             index, j, type->get<std::string>()));
    auto t = part.find("text");
    if (t == part.end() || !t->is_string())
      return bad(fmt::format("messages[{}].content[{}].text: must be a string", index, j));
    if (!text.empty()) text += '\n';
    text += t->get<std::string>();
  }
  return text;
}

}  // namespace

Result<CompletionRequest> parse_request(Endpoint endpoint, std::string_view body) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return bad("the request body is not valid JSON");
  if (!doc.is_object()) return bad("the request body must be a JSON object");
  CompletionRequest req;
  req.endpoint = endpoint;
  auto model = doc.find("model");
  if (model == doc.end() || !model->is_string() || model->get<std::string>().empty())
    return bad("model: a model name is required");
  req.model = model->get<std::string>();

  if (endpoint == Endpoint::kEmbeddings) {
    auto input = doc.find("input");
    if (input == doc.end()) return bad("input: required");
    if (input->is_string()) {
      req.prompts.push_back({input->get<std::string>(), {}, false});
    } else if (input->is_array() && !input->empty()) {
      if ((*input)[0].is_number_integer()) {
        LS_ASSIGN_OR_RETURN(auto ids, token_array(*input, "input"));
        req.prompts.push_back({{}, std::move(ids), true});
      } else {
        for (size_t i = 0; i < input->size(); ++i) {
          const json& item = (*input)[i];
          if (item.is_string()) {
            req.prompts.push_back({item.get<std::string>(), {}, false});
          } else if (item.is_array() && !item.empty()) {
            LS_ASSIGN_OR_RETURN(auto ids, token_array(item, fmt::format("input[{}]", i)));
            req.prompts.push_back({{}, std::move(ids), true});
          } else {
            return bad(fmt::format("input[{}]: must be a string or an array of token ids", i));
          }
        }
      }
    } else {
      return bad("input: must be a string, an array of strings or an array of token ids");
    }
    for (const auto& p : req.prompts)
      if (!p.is_tokens && p.text.empty()) return bad("input: must not contain empty strings");
    if (auto fmt_it = doc.find("encoding_format"); fmt_it != doc.end() && !fmt_it->is_null()) {
      if (*fmt_it == "base64")
        req.base64 = true;
      else if (*fmt_it != "float")
        return bad("encoding_format: must be 'float' or 'base64'");
    }
    LS_ASSIGN_OR_RETURN(auto dims, optional_uint(doc, "dimensions", 65536));
    if (dims) {
      if (*dims == 0) return bad("dimensions: must be positive");
      req.dimensions = static_cast<uint32_t>(*dims);
    }
    return req;
  }

  LS_ASSIGN_OR_RETURN(req.stream, optional_bool(doc, "stream"));
  if (auto so = doc.find("stream_options"); so != doc.end() && !so->is_null()) {
    if (!so->is_object()) return bad("stream_options: must be an object");
    LS_ASSIGN_OR_RETURN(req.include_usage, optional_bool(*so, "include_usage"));
    if (!req.stream) return bad("stream_options: only allowed when stream is true");
  }
  // max_completion_tokens is the newer name for max_tokens.
  LS_ASSIGN_OR_RETURN(auto max_completion, optional_uint(doc, "max_completion_tokens", UINT32_MAX));
  LS_ASSIGN_OR_RETURN(auto max_tokens, optional_uint(doc, "max_tokens", UINT32_MAX));
  if (max_completion) max_tokens = max_completion;
  if (max_tokens) {
    if (*max_tokens == 0) return bad("max_tokens: must be at least 1");
    req.max_tokens = static_cast<uint32_t>(*max_tokens);
  }
  LS_ASSIGN_OR_RETURN(auto min_tokens, optional_uint(doc, "min_tokens", UINT32_MAX));
  req.min_tokens = static_cast<uint32_t>(min_tokens.value_or(0));
  if (req.max_tokens && req.min_tokens > *req.max_tokens)
    return bad("min_tokens: must not exceed max_tokens");
  LS_ASSIGN_OR_RETURN(req.ignore_eos, optional_bool(doc, "ignore_eos"));
  if (auto seed = doc.find("seed"); seed != doc.end() && !seed->is_null()) {
    if (!seed->is_number_integer()) return bad("seed: must be an integer");
    req.seed = static_cast<uint64_t>(seed->get<int64_t>());
  }
  LS_ASSIGN_OR_RETURN(auto n, optional_uint(doc, "n", 128));
  if (n && *n != 1) return bad("n: only n=1 is supported");
  if (auto t = doc.find("temperature"); t != doc.end() && !t->is_null()) {
    if (!t->is_number() || t->get<double>() < 0 || t->get<double>() > 2)
      return bad("temperature: must be a number between 0 and 2");
  }

  if (endpoint == Endpoint::kChatCompletions) {
    auto messages = doc.find("messages");
    if (messages == doc.end() || !messages->is_array() || messages->empty())
      return bad("messages: must be a non-empty array");
    for (size_t i = 0; i < messages->size(); ++i) {
      const json& m = (*messages)[i];
      if (!m.is_object()) return bad(fmt::format("messages[{}]: must be an object", i));
      auto role = m.find("role");
      if (role == m.end() || !role->is_string())
        return bad(fmt::format("messages[{}].role: required", i));
      const std::string r = role->get<std::string>();
      if (r != "system" && r != "user" && r != "assistant" && r != "tool" && r != "developer")
        return bad(
            fmt::format("messages[{}].role: '{}' is not one of system, user, assistant, tool, "
                        "developer",
                        i, r));
      auto content = m.find("content");
      LS_ASSIGN_OR_RETURN(std::string text,
                          message_content(content == m.end() ? json() : *content, i));
      req.messages.push_back({r, std::move(text)});
    }
  } else {
    auto prompt = doc.find("prompt");
    if (prompt == doc.end()) return bad("prompt: required");
    if (prompt->is_string()) {
      req.prompts.push_back({prompt->get<std::string>(), {}, false});
    } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number_integer()) {
      LS_ASSIGN_OR_RETURN(auto ids, token_array(*prompt, "prompt"));
      req.prompts.push_back({{}, std::move(ids), true});
    } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
      req.prompts.push_back({(*prompt)[0].get<std::string>(), {}, false});
    } else {
      return bad(
          "prompt: must be a string or an array of token ids (batched prompts are not supported)");
    }
    if (!req.prompts[0].is_tokens && req.prompts[0].text.empty())
      return bad("prompt: must not be empty");
  }
  return req;
}

size_t prompt_count(const CompletionRequest& request) {
  if (request.endpoint == Endpoint::kChatCompletions) return 1;
  return request.prompts.size();
}

void prompt_tokens(const CompletionRequest& request, size_t index, std::vector<TokenId>& out) {
  if (request.endpoint == Endpoint::kChatCompletions) {
    tokenizer::apply_chat_template(request.messages, out);
    return;
  }
  const auto& prompt = request.prompts[index];
  if (prompt.is_tokens)
    out.insert(out.end(), prompt.ids.begin(), prompt.ids.end());
  else
    tokenizer::Tokenizer::get().encode(prompt.text, out);
}

}  // namespace loadstar::openai
