#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"

namespace loadstar::tokenizer {
namespace {

TEST(Tokenizer, CountMatchesEncode) {
  const auto& tok = Tokenizer::get();
  for (std::string_view text :
       {"", "Hello, world!", "  indented\n\nnumbers 1234567 and ünïcödé 漢字",
        "internationalization is a long word"}) {
    std::vector<TokenId> ids;
    tok.encode(text, ids);
    EXPECT_EQ(ids.size(), tok.count(text)) << text;
  }
}

TEST(Tokenizer, PiecesFollowBpeShape) {
  std::vector<std::string> pieces;
  for_each_piece("Hi there, 123456 internationalization\n",
                 [&](std::string_view p) { pieces.emplace_back(p); });
  const std::vector<std::string> expected = {"Hi",      " there", ",",      " ",  "123", "456",
                                             " intern", "ationa", "lizati", "on", "\n"};
  EXPECT_EQ(pieces, expected);
}

TEST(Tokenizer, EnglishIsAboutFourCharactersPerToken) {
  const std::string text =
      "The quick brown fox jumps over the lazy dog. Routers and autoscalers are only as good as "
      "the "
      "engine they were tuned on, so the simulator must behave like a real server under load.";
  const double ratio = static_cast<double>(text.size()) / Tokenizer::get().count(text);
  EXPECT_GT(ratio, 3.5);
  EXPECT_LT(ratio, 6.0);
}

TEST(Tokenizer, GeneratedTextReencodesToTheSameIds) {
  const auto& tok = Tokenizer::get();
  std::vector<TokenId> generated;
  for (TokenId id = kFirstPunctuation; id < kVocabSize; id += 97) generated.push_back(id);
  std::string text;
  for (TokenId id : generated) text += tok.text_of(id);
  std::vector<TokenId> ids;
  tok.encode(text, ids);
  EXPECT_EQ(ids, generated);
}

TEST(Tokenizer, ChatTemplateFramesEachMessage) {
  std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hi"}};
  std::vector<TokenId> ids;
  apply_chat_template(messages, ids);
  EXPECT_EQ(ids.front(), kImStart);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kImStart), 3);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kImEnd), 2);
  // A longer conversation starts with the same tokens: prefix caching works across turns.
  std::vector<ChatMessage> longer = messages;
  longer.push_back({"assistant", " Hello."});
  std::vector<TokenId> longer_ids;
  apply_chat_template(longer, longer_ids);
  EXPECT_TRUE(std::equal(ids.begin(), ids.end() - 3, longer_ids.begin()));
}

}  // namespace
}  // namespace loadstar::tokenizer
