#include "common/strings.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <random>
#include <vector>

#include <fmt/format.h>

namespace loadstar {

void append_json_escaped(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (u < 0x20) {
          out += "\\u00";
          out += kHex[u >> 4];
          out += kHex[u & 0xf];
        } else {
          out += c;
        }
    }
  }
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string closest(std::string_view word, const std::vector<std::string>& candidates,
                    size_t max_distance) {
  std::string best;
  size_t best_distance = max_distance + 1;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  if (best.empty() && word.size() >= 2)
    for (const std::string& c : candidates)
      if (c.starts_with(word)) return c;
  return best;
}

std::string last_error_line_of(std::string_view output) {
  std::vector<std::string> lines;
  for (std::string_view rest = output; !rest.empty();) {
    const size_t nl = rest.find('\n');
    std::string line(rest.substr(0, nl));
    rest = nl == std::string_view::npos ? "" : rest.substr(nl + 1);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) lines.push_back(std::move(line));
  }
  // What argument parsers say of a bad flag counts too: CLI11's "was not
  // expected" (its last line only says to run --help), argparse's
  // "unrecognized arguments".
  static constexpr std::string_view kWords[] = {
      "error",  "fatal", "exception",    "failed",       "invalid",    "unknown",
      "cannot", "abort", "not expected", "unrecognized", "is required"};
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    std::string lower = *it;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (std::string_view w : kWords)
      if (lower.find(w) != std::string::npos) return utf8_clip(*it, 400);
  }
  return lines.empty() ? "" : utf8_clip(lines.back(), 400);
}

std::string utf8_clip(std::string_view text, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    size_t length = 0;  // of a valid sequence starting here; 0: invalid
    uint32_t min = 0, code = 0;
    if (lead < 0x80) {
      length = 1;
    } else if ((lead & 0xE0) == 0xC0) {
      length = 2, min = 0x80, code = lead & 0x1F;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3, min = 0x800, code = lead & 0x0F;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4, min = 0x10000, code = lead & 0x07;
    }
    if (length > 1) {
      if (i + length > text.size()) length = 0;
      for (size_t k = 1; k < length; ++k) {
        const auto b = static_cast<unsigned char>(text[i + k]);
        if ((b & 0xC0) != 0x80) {
          length = 0;
          break;
        }
        code = (code << 6) | (b & 0x3F);
      }
      // Overlong forms, surrogates and beyond U+10FFFF are not UTF-8.
      if (length && (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)))
        length = 0;
    }
    const size_t take = length ? length : 1;
    if (out.size() + take > max_bytes) break;
    if (length)
      out.append(text.substr(i, length));
    else
      out.push_back('?');
    i += take;
  }
  return out;
}

std::string random_uuid() {
  thread_local std::mt19937_64 rng{(static_cast<uint64_t>(std::random_device{}()) << 32) ^
                                   std::random_device{}()};
  const uint64_t a = rng(), b = rng();
  return fmt::format("{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xffff, a & 0xfff,
                     ((b >> 48) & 0x3fff) | 0x8000, b & 0xffffffffffffULL);
}

bool iequals(std::string_view a, std::string_view b) {
  const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c | 0x20) : c; };
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [&](char x, char y) { return lower(x) == lower(y); });
}

}  // namespace loadstar
