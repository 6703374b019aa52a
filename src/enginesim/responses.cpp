#include "enginesim/responses.h"

#include <cmath>

#include <openssl/evp.h>
#include <nlohmann/json.hpp>

#include "common/strings.h"

namespace loadstar::enginesim {

using engine::FinishReason;
using nlohmann::json;
using openai::Endpoint;

ResponseEncoder::ResponseEncoder(Endpoint endpoint, std::string id, std::string model,
                                 int64_t created, bool include_usage)
    : endpoint_(endpoint),
      id_(std::move(id)),
      model_(std::move(model)),
      created_(created),
      include_usage_(include_usage) {
  const bool chat = endpoint_ == Endpoint::kChatCompletions;
  chunk_prefix_ = R"(data: {"id":")";
  append_json_escaped(chunk_prefix_, id_);
  chunk_prefix_ += chat ? R"(","object":"chat.completion.chunk","created":)"
                        : R"(","object":"text_completion","created":)";
  chunk_prefix_ += std::to_string(created_);
  chunk_prefix_ += R"(,"model":")";
  append_json_escaped(chunk_prefix_, model_);
  chunk_prefix_ += R"(","choices":[{"index":0,)";
}

std::string ResponseEncoder::usage_json(const Usage& usage) const {
  return fmt::format(
      R"({{"prompt_tokens":{},"total_tokens":{},"completion_tokens":{},"prompt_tokens_details":{{"cached_tokens":{}}}}})",
      usage.prompt_tokens, usage.prompt_tokens + usage.completion_tokens, usage.completion_tokens,
      usage.cached_tokens);
}

std::string ResponseEncoder::complete(std::string_view text, FinishReason finish,
                                      const Usage& usage) const {
  const bool chat = endpoint_ == Endpoint::kChatCompletions;
  json choice = {{"index", 0},
                 {"logprobs", nullptr},
                 {"finish_reason", engine::finish_reason_name(finish)},
                 {"stop_reason", nullptr}};
  if (chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}, {"tool_calls", json::array()}};
  else
    choice["text"] = text;
  json doc = {{"id", id_},
              {"object", chat ? "chat.completion" : "text_completion"},
              {"created", created_},
              {"model", model_},
              {"choices", json::array({choice})},
              {"usage", json::parse(usage_json(usage))}};
  return doc.dump();
}

std::string ResponseEncoder::first_event() const {
  if (endpoint_ != Endpoint::kChatCompletions) return {};
  std::string out = chunk_prefix_;
  out += R"("delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}])";
  out += include_usage_ ? R"(,"usage":null})" : "}";
  out += "\n\n";
  return out;
}

void ResponseEncoder::append_delta(std::string& out, std::string_view text,
                                   FinishReason finish) const {
  out += chunk_prefix_;
  if (endpoint_ == Endpoint::kChatCompletions) {
    if (text.empty()) {
      out += R"("delta":{})";
    } else {
      out += R"("delta":{"content":")";
      append_json_escaped(out, text);
      out += R"("})";
    }
  } else {
    out += R"("text":")";
    append_json_escaped(out, text);
    out += '"';
  }
  out += R"(,"logprobs":null,"finish_reason":)";
  if (finish == FinishReason::kNone) {
    out += "null";
  } else {
    out += '"';
    out += engine::finish_reason_name(finish);
    out += '"';
  }
  out += "}]";
  out += include_usage_ ? R"(,"usage":null})" : "}";
  out += "\n\n";
}

std::string ResponseEncoder::usage_event(const Usage& usage) const {
  std::string out =
      chunk_prefix_.substr(0, chunk_prefix_.size() - std::string_view(R"({"index":0,)").size());
  out += R"(],"usage":)";
  out += usage_json(usage);
  out += "}\n\n";
  return out;
}

std::string ResponseEncoder::error_event(const openai::ApiError& error) {
  return "data: " + openai::error_body(error) + "\n\n";
}

std::vector<float> embed_tokens(const std::vector<tokenizer::TokenId>& tokens,
                                uint32_t dimensions) {
  std::vector<double> sum(dimensions, 0.0);
  for (tokenizer::TokenId t : tokens) {
    uint64_t state = (static_cast<uint64_t>(t) + 1) * 0x9e3779b97f4a7c15ULL;
    for (uint32_t k = 0; k < dimensions; ++k) {
      state ^= state >> 12;
      state ^= state << 25;
      state ^= state >> 27;
      const uint64_t r = state * 0x2545f4914f6cdd1dULL;
      sum[k] += static_cast<double>(r >> 11) * 0x1.0p-53 * 2.0 - 1.0;
    }
  }
  double norm = 0;
  for (double v : sum) norm += v * v;
  norm = norm > 0 ? std::sqrt(norm) : 1.0;
  std::vector<float> out(dimensions);
  for (uint32_t k = 0; k < dimensions; ++k) out[k] = static_cast<float>(sum[k] / norm);
  return out;
}

std::string embeddings_response(const std::string& model,
                                const std::vector<std::vector<float>>& vectors, bool base64,
                                uint32_t prompt_tokens) {
  json data = json::array();
  for (size_t i = 0; i < vectors.size(); ++i) {
    json item = {{"index", i}, {"object", "embedding"}};
    if (base64) {
      const auto& v = vectors[i];
      std::string encoded(4 * ((v.size() * sizeof(float) + 2) / 3) + 1, '\0');
      int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(encoded.data()),
                              reinterpret_cast<const unsigned char*>(v.data()),
                              static_cast<int>(v.size() * sizeof(float)));
      encoded.resize(static_cast<size_t>(n));
      item["embedding"] = encoded;
    } else {
      item["embedding"] = vectors[i];
    }
    data.push_back(std::move(item));
  }
  json doc = {{"object", "list"},
              {"data", std::move(data)},
              {"model", model},
              {"usage", {{"prompt_tokens", prompt_tokens}, {"total_tokens", prompt_tokens}}}};
  return doc.dump();
}

}  // namespace loadstar::enginesim
