#include "tokenizer/tokenizer.h"

#include <xxhash.h>

namespace loadstar::tokenizer {
namespace {

constexpr const char* kPunctuation[] = {".",  ",", "!", "?", ";", ":", "\n", "'",
                                        "\"", "(", ")", "-", "+", "#", "*",  "/"};
static_assert(std::size(kPunctuation) == kFirstWord - kFirstPunctuation);

constexpr const char kConsonants[] = "bcdfghjklmnprstvwxyz";  // 20
constexpr const char kVowels[] = "aeiou";                     // 5

// Word for an output-vocabulary slot: the slot is scrambled by a bijection on
// [0, 10^6) and written in base 100, each digit a consonant-vowel syllable,
// so every slot gets a distinct lower-case word of 2 to 6 letters.
std::string word_for_slot(uint32_t slot) {
  constexpr uint64_t kSpace = 1000000;
  uint64_t x = (static_cast<uint64_t>(slot) * 7919 + 104729) % kSpace;  // 7919 is prime to 10^6
  std::string word = " ";
  char syllables[3][2];
  int count = 0;
  do {
    uint64_t digit = x % 100;
    syllables[count][0] = kConsonants[digit / 5];
    syllables[count][1] = kVowels[digit % 5];
    ++count;
    x /= 100;
  } while (x > 0);
  for (int i = count - 1; i >= 0; --i) word.append(syllables[i], 2);
  return word;
}

}  // namespace

size_t Tokenizer::StringHash::operator()(std::string_view s) const {
  return XXH3_64bits(s.data(), s.size());
}

const Tokenizer& Tokenizer::get() {
  static const Tokenizer instance;
  return instance;
}

Tokenizer::Tokenizer() {
  vocab_.resize(kVocabSize);
  for (TokenId id = kFirstPunctuation; id < kFirstWord; ++id)
    vocab_[id] = kPunctuation[id - kFirstPunctuation];
  for (TokenId id = kFirstWord; id < kVocabSize; ++id) vocab_[id] = word_for_slot(id - kFirstWord);
  ids_.reserve(kVocabSize);
  for (TokenId id = kFirstPunctuation; id < kVocabSize; ++id) ids_.emplace(vocab_[id], id);
}

TokenId Tokenizer::id_of_piece(std::string_view piece) const {
  if (auto it = ids_.find(piece); it != ids_.end()) return it->second;
  return kFirstWord +
         static_cast<TokenId>(XXH3_64bits(piece.data(), piece.size()) % (kVocabSize - kFirstWord));
}

void Tokenizer::encode(std::string_view text, std::vector<TokenId>& out) const {
  for_each_piece(text, [&](std::string_view piece) { out.push_back(id_of_piece(piece)); });
}

size_t Tokenizer::count(std::string_view text) const {
  size_t n = 0;
  for_each_piece(text, [&](std::string_view) { ++n; });
  return n;
}

std::string_view Tokenizer::text_of(TokenId id) const {
  if (id >= kVocabSize) return {};
  return vocab_[id];
}

void apply_chat_template(std::span<const ChatMessage> messages, std::vector<TokenId>& out) {
  const Tokenizer& tok = Tokenizer::get();
  const TokenId newline = kFirstPunctuation + 6;
  for (const ChatMessage& m : messages) {
    out.push_back(kImStart);
    tok.encode(m.role, out);
    out.push_back(newline);
    tok.encode(m.content, out);
    out.push_back(kImEnd);
    out.push_back(newline);
  }
  out.push_back(kImStart);
  tok.encode("assistant", out);
  out.push_back(newline);
}

}  // namespace loadstar::tokenizer
