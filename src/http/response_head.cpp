#include "http/response_head.h"

#include <algorithm>
#include <array>
#include <charconv>

#include "common/strings.h"

namespace loadstar::http {

namespace {

using Framing = ResponseHead::Framing;

// RFC 9110 §5.6.2: a field name's characters.
constexpr std::array<bool, 256> kTokenChar = [] {
  std::array<bool, 256> table{};
  for (int c = '0'; c <= '9'; ++c) table[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) table[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) table[c] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) table[static_cast<unsigned char>(c)] = true;
  return table;
}();

// A field value's or reason phrase's characters: visible ASCII, space, tab
// and obs-text; never a control character (a bare CR or LF, a NUL).
bool is_text(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c == '\t' || (c >= 0x20 && c != 0x7f);
  });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Calls `f` with each element of a comma-separated list, trimmed; empty
// elements (RFC 9110 §5.6.1 allows them) are skipped.
template <class F>
void for_each_element(std::string_view list, F&& f) {
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string_view element = trim(list.substr(0, comma));
    if (!element.empty()) f(element);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
}

Error malformed(std::string_view what) {
  return make_error(ErrorCode::kCorrupt, "malformed response head: {}", what);
}

}  // namespace

BodyDecoder ResponseHead::body_decoder() const {
  switch (framing) {
    case Framing::kNone:
      return BodyDecoder::length(0);
    case Framing::kLength:
      return BodyDecoder::length(content_length);
    case Framing::kChunked:
      return BodyDecoder::chunked();
    case Framing::kUntilClose:
      break;
  }
  return BodyDecoder::until_close();
}

Result<std::optional<ResponseHead>> parse_response_head(std::string_view in, size_t max_bytes) {
  const size_t end = in.substr(0, max_bytes).find("\r\n\r\n");
  if (end == std::string_view::npos) {
    if (in.size() >= max_bytes)
      return make_error(ErrorCode::kOutOfRange, "response head over the limit of {} bytes",
                        max_bytes);
    return std::optional<ResponseHead>();
  }
  ResponseHead head;
  head.size = end + 4;
  std::string_view rest = in.substr(0, end + 2);  // every line with its CRLF

  // The status line: HTTP/1.x SP 3DIGIT [SP reason] CRLF.
  size_t eol = rest.find("\r\n");
  const std::string_view status_line = rest.substr(0, eol);
  rest.remove_prefix(eol + 2);
  if (status_line.size() < 12 || !status_line.starts_with("HTTP/1.") ||
      (status_line[7] != '0' && status_line[7] != '1') || status_line[8] != ' ')
    return malformed("bad status line");
  const bool http11 = status_line[7] == '1';
  const std::string_view code = status_line.substr(9, 3);
  if (!std::all_of(code.begin(), code.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      code[0] == '0' || (status_line.size() > 12 && status_line[12] != ' ') ||
      !is_text(status_line.substr(12)))
    return malformed("bad status line");
  head.status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');

  bool has_length = false, has_encoding = false, chunked = false, close = false,
       keep_alive_token = false;
  while (!rest.empty()) {
    eol = rest.find("\r\n");
    const std::string_view line = rest.substr(0, eol);
    rest.remove_prefix(eol + 2);
    const size_t colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos)
      return malformed(line.empty() || line[0] == ' ' || line[0] == '\t' ? "folded field line"
                                                                         : "bad field line");
    const std::string_view name = line.substr(0, colon);
    if (!std::all_of(name.begin(), name.end(),
                     [](char c) { return kTokenChar[static_cast<unsigned char>(c)]; }))
      return malformed("bad field name");
    const std::string_view value = trim(line.substr(colon + 1));
    if (!is_text(value)) return malformed("bad field value");
    if (iequals(name, "content-length")) {
      uint64_t length = 0;
      const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), length);
      if (value.empty() || ec != std::errc() || ptr != value.data() + value.size() ||
          length > (uint64_t{1} << 62))
        return malformed("bad Content-Length");
      if (has_length && length != head.content_length)
        return malformed("conflicting Content-Length");
      has_length = true;
      head.content_length = length;
    } else if (iequals(name, "transfer-encoding")) {
      // The body is chunked when chunked is the last coding; chunked
      // anywhere else is an error (RFC 9112 §6.1).
      Status bad;
      bool any = false;
      for_each_element(value, [&](std::string_view coding) {
        if (chunked) bad = malformed("chunked is not the last transfer coding");
        chunked = iequals(coding, "chunked");
        any = true;
      });
      if (!bad.ok()) return std::move(bad).error();
      if (!any) return malformed("empty Transfer-Encoding");
      has_encoding = true;
    } else if (iequals(name, "connection")) {
      for_each_element(value, [&](std::string_view option) {
        if (iequals(option, "close")) close = true;
        if (iequals(option, "keep-alive")) keep_alive_token = true;
      });
    } else if (iequals(name, "content-type")) {
      head.content_type = std::string(value);
    }
  }

  head.keep_alive = !close && (http11 || keep_alive_token);
  if (head.status < 200 || head.status == 204 || head.status == 304) {
    head.framing = Framing::kNone;
  } else if (has_encoding) {
    // A Transfer-Encoding overrides a Content-Length, and a message with
    // both may have been framed differently on its way: the connection is
    // not reused (RFC 9112 §6.3). A coding other than chunked last: the
    // body runs to the close.
    // HTTP/1.0 has no transfer codings: such a message was framed by
    // someone else's rules, so its connection is not reused either.
    head.framing = chunked ? Framing::kChunked : Framing::kUntilClose;
    if (has_length || !chunked || !http11) head.keep_alive = false;
  } else if (has_length) {
    head.framing = Framing::kLength;
  } else {
    head.framing = Framing::kUntilClose;
    head.keep_alive = false;
  }
  return std::optional<ResponseHead>(std::move(head));
}

}  // namespace loadstar::http
