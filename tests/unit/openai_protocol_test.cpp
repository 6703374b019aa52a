#include <gtest/gtest.h>

#include "openai/protocol.h"

namespace loadstar::openai {
namespace {

TEST(OpenAiProtocol, ParsesChatWithPartsAndOptions) {
  auto r = parse_request(Endpoint::kChatCompletions, R"({"model":"m","stream":true,
    "stream_options":{"include_usage":true},"max_completion_tokens":7,"seed":3,"user":"ignored",
    "messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]})");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_EQ(r->max_tokens, 7u);
  EXPECT_EQ(r->seed, 3u);
  ASSERT_EQ(r->messages.size(), 2u);
  EXPECT_EQ(r->messages[1].content, "a\nb");
}

TEST(OpenAiProtocol, ErrorsNameTheField) {
  struct Case {
    Endpoint endpoint;
    const char* body;
    const char* expect;
  };
  const Case cases[] = {
      {Endpoint::kChatCompletions, "{", "not valid JSON"},
      {Endpoint::kChatCompletions, R"({"messages":[]})", "model:"},
      {Endpoint::kChatCompletions, R"({"model":"m","messages":[]})", "messages:"},
      {Endpoint::kChatCompletions, R"({"model":"m","messages":[{"role":"wizard","content":"x"}]})",
       "messages[0].role"},
      {Endpoint::kChatCompletions,
       R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]})",
       "messages[0].content[0]: type 'image_url'"},
      {Endpoint::kChatCompletions,
       R"({"model":"m","max_tokens":-4,"messages":[{"role":"user","content":"x"}]})",
       "max_tokens:"},
      {Endpoint::kChatCompletions,
       R"({"model":"m","n":2,"messages":[{"role":"user","content":"x"}]})", "n:"},
      {Endpoint::kCompletions, R"({"model":"m","prompt":[1,-2]})", "prompt: token ids"},
      {Endpoint::kEmbeddings, R"({"model":"m","input":{}})", "input:"},
  };
  for (const Case& c : cases) {
    auto r = parse_request(c.endpoint, c.body);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message.find(c.expect), std::string::npos) << r.error().message;
  }
}

TEST(OpenAiProtocol, ErrorBodyHasOpenAiShape) {
  ApiError e{404, "The model `x` does not exist.", "model"};
  EXPECT_EQ(
      error_body(e),
      R"({"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}})");
  EXPECT_EQ(to_api_error(Error{ErrorCode::kResourceExhausted, "full"}).status, 503);
  EXPECT_EQ(to_api_error(Error{ErrorCode::kOutOfRange, "long"}).status, 400);
}

}  // namespace
}  // namespace loadstar::openai
