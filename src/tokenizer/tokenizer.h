// A deterministic stand-in for an LLM tokenizer, shared by the engine
// simulator (which charges compute per token) and the gateway (which counts
// tokens for budgets and hashes prompt blocks for routing): both count the same.
//
// Pre-tokenization follows the shape of GPT-style BPE: a word with its leading
// space is one piece, long words are cut every 6 letters, numbers every 3
// digits, each punctuation mark, newline and non-ASCII code point is a piece.
// English text comes out at about 4 to 5 characters a token, as with real BPE.
// Each piece maps to an id: words of the output vocabulary to their own id (so
// that text the simulator generated re-encodes to the very same ids, and a
// conversation's next turn hits the prefix cache as it would on vLLM), every
// other piece to a hash of its bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace loadstar::tokenizer {

using TokenId = uint32_t;

inline constexpr TokenId kVocabSize = 32000;
inline constexpr TokenId kEos = 2;
inline constexpr TokenId kImStart = 3;  // <|im_start|>
inline constexpr TokenId kImEnd = 4;    // <|im_end|>
inline constexpr TokenId kFirstPunctuation = 16;
inline constexpr TokenId kFirstWord = 32;

class Tokenizer {
 public:
  // The one shared instance; built on first use (about a millisecond).
  static const Tokenizer& get();

  // Appends the ids of `text` to `out`.
  void encode(std::string_view text, std::vector<TokenId>& out) const;
  // Number of tokens of `text`, without materialising them.
  size_t count(std::string_view text) const;
  // The text of an id in the output vocabulary; special tokens render empty.
  std::string_view text_of(TokenId id) const;

 private:
  Tokenizer();
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const;
  };
  TokenId id_of_piece(std::string_view piece) const;

  std::vector<std::string> vocab_;  // index: token id
  std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>> ids_;
};

// Calls `emit(piece)` for each pre-tokenized piece of `text`, in order.
template <typename Emit>
void for_each_piece(std::string_view text, Emit&& emit);

struct ChatMessage {
  std::string role;
  std::string content;
};

// ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then
// "<|im_start|>assistant\n" to prompt the reply.
void apply_chat_template(std::span<const ChatMessage> messages, std::vector<TokenId>& out);

// ---------------------------------------------------------------------------

namespace detail {
inline bool is_letter(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
inline bool is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}
inline size_t utf8_length(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xe) return 3;
  if ((c >> 3) == 0x1e) return 4;
  return 1;  // a stray continuation byte is a piece of its own
}
inline constexpr size_t kMaxLettersPerPiece = 6;
inline constexpr size_t kMaxDigitsPerPiece = 3;
inline constexpr size_t kMaxSpacesPerPiece = 4;
}  // namespace detail

template <typename Emit>
void for_each_piece(std::string_view text, Emit&& emit) {
  using namespace detail;
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    auto c = static_cast<unsigned char>(text[i]);
    size_t start = i;
    if (c == ' ' && i + 1 < n && is_letter(static_cast<unsigned char>(text[i + 1]))) {
      ++i;  // the space belongs to the word that follows
      size_t letters = 0;
      while (i < n && letters < kMaxLettersPerPiece &&
             is_letter(static_cast<unsigned char>(text[i]))) {
        ++i;
        ++letters;
      }
    } else if (is_letter(c)) {
      size_t letters = 0;
      while (i < n && letters < kMaxLettersPerPiece &&
             is_letter(static_cast<unsigned char>(text[i]))) {
        ++i;
        ++letters;
      }
    } else if (is_digit(c)) {
      while (i < n && i - start < kMaxDigitsPerPiece &&
             is_digit(static_cast<unsigned char>(text[i])))
        ++i;
    } else if (c == ' ' || c == '\t') {
      while (i < n && i - start < kMaxSpacesPerPiece && (text[i] == ' ' || text[i] == '\t')) {
        // Leave a space that leads a word to that word.
        if (text[i] == ' ' && i > start && i + 1 < n &&
            is_letter(static_cast<unsigned char>(text[i + 1])))
          break;
        ++i;
      }
    } else {
      i += utf8_length(c);
      if (i > n) i = n;
    }
    emit(text.substr(start, i - start));
  }
}

}  // namespace loadstar::tokenizer
