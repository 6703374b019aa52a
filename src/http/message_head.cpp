#include "http/message_head.h"

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

Error malformed(std::string_view kind, std::string_view what) {
  return make_error(ErrorCode::kCorrupt, "malformed {} head: {}", kind, what);
}

bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return kTokenChar[static_cast<unsigned char>(c)];
  });
}

// What a head's fields say of its framing and connection.
struct FieldSummary {
  bool has_length = false;
  uint64_t content_length = 0;
  bool has_encoding = false;
  bool chunked = false;       // chunked is the last transfer coding
  bool other_coding = false;  // a coding other than chunked
  bool close = false;
  bool keep_alive_token = false;
};

// Parses the field lines in `lines` (each with its CRLF), calling
// `on_field(name, value)` for each, the value trimmed.
template <class OnField>
Result<FieldSummary> scan_fields(std::string_view kind, std::string_view lines,
                                 OnField&& on_field) {
  FieldSummary out;
  while (!lines.empty()) {
    const size_t eol = lines.find("\r\n");
    const std::string_view line = lines.substr(0, eol);
    lines.remove_prefix(eol + 2);
    if (line.empty() || line[0] == ' ' || line[0] == '\t')
      return malformed(kind, "folded field line");
    const size_t colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos) return malformed(kind, "bad field line");
    const std::string_view name = line.substr(0, colon);
    if (!is_token(name)) return malformed(kind, "bad field name");
    const std::string_view value = trim(line.substr(colon + 1));
    if (!is_text(value)) return malformed(kind, "bad field value");
    if (iequals(name, "content-length")) {
      uint64_t length = 0;
      const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), length);
      if (value.empty() || ec != std::errc() || ptr != value.data() + value.size() ||
          length > (uint64_t{1} << 62))
        return malformed(kind, "bad Content-Length");
      if (out.has_length && length != out.content_length)
        return malformed(kind, "conflicting Content-Length");
      out.has_length = true;
      out.content_length = length;
    } else if (iequals(name, "transfer-encoding")) {
      // The body is chunked when chunked is the last coding; chunked
      // anywhere else is an error (RFC 9112 §6.1).
      Status bad;
      bool any = false;
      for_each_element(value, [&](std::string_view coding) {
        if (out.chunked) bad = malformed(kind, "chunked is not the last transfer coding");
        out.chunked = iequals(coding, "chunked");
        if (!out.chunked) out.other_coding = true;
        any = true;
      });
      if (!bad.ok()) return std::move(bad).error();
      if (!any) return malformed(kind, "empty Transfer-Encoding");
      out.has_encoding = true;
    } else if (iequals(name, "connection")) {
      for_each_element(value, [&](std::string_view option) {
        if (iequals(option, "close")) out.close = true;
        if (iequals(option, "keep-alive")) out.keep_alive_token = true;
      });
    }
    on_field(name, value);
  }
  return out;
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

bool has_bare_lf(std::string_view in, size_t from) {
  for (size_t at = in.find('\n', from); at != std::string_view::npos; at = in.find('\n', at + 1))
    if (at == 0 || in[at - 1] != '\r') return true;
  return false;
}

BodyDecoder RequestHead::body_decoder() const {
  return chunked ? BodyDecoder::chunked() : BodyDecoder::length(content_length);
}

Result<std::optional<RequestHead>> parse_request_head(std::string_view in, size_t max_bytes) {
  const std::string_view limited = in.substr(0, max_bytes);
  size_t skip = 0;  // empty lines before the request line
  while (limited.substr(skip, 2) == "\r\n") skip += 2;
  const size_t end = limited.find("\r\n\r\n", skip);
  if (end == std::string_view::npos) {
    if (in.size() >= max_bytes)
      return make_error(ErrorCode::kOutOfRange, "request head over the limit of {} bytes",
                        max_bytes);
    if (has_bare_lf(limited)) return malformed("request", "a line ends in a bare LF");
    return std::optional<RequestHead>();
  }
  RequestHead head;
  head.size = end + 4;
  std::string_view rest = in.substr(skip, end + 2 - skip);  // every line with its CRLF

  // The request line: method SP request-target SP HTTP-version CRLF.
  const size_t eol = rest.find("\r\n");
  const std::string_view line = rest.substr(0, eol);
  rest.remove_prefix(eol + 2);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return malformed("request", "bad request line");
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!is_token(method)) return malformed("request", "bad method");
  if (target.empty() || !std::all_of(target.begin(), target.end(), [](char ch) {
        const auto c = static_cast<unsigned char>(ch);
        return c > 0x20 && c != 0x7f;
      }))
    return malformed("request", "bad target");
  if (version == "HTTP/1.1") {
    head.http11 = true;
  } else if (version == "HTTP/1.0") {
    head.http11 = false;
  } else {
    return malformed("request", "bad version");
  }
  head.method = std::string(method);
  head.target = std::string(target);

  head.headers.reserve(8);
  bool expect_continue = false;
  auto fields = scan_fields("request", rest, [&](std::string_view name, std::string_view value) {
    head.headers.push_back({std::string(name), std::string(value)});
    if (iequals(name, "expect") && iequals(value, "100-continue")) expect_continue = true;
  });
  if (!fields.ok()) return std::move(fields).error();
  const FieldSummary& f = *fields;
  // A server that framed a request by one field while a proxy before it
  // used the other would read a second request smuggled inside the first:
  // a request whose framing is in any doubt is refused (RFC 9112 §6.1, as
  // nginx does).
  if (f.has_encoding) {
    if (!head.http11) return malformed("request", "Transfer-Encoding in an HTTP/1.0 request");
    if (f.has_length) return malformed("request", "both Content-Length and Transfer-Encoding");
    if (!f.chunked) return malformed("request", "Transfer-Encoding does not end in chunked");
    if (f.other_coding)
      return make_error(ErrorCode::kInvalidArgument,
                        "a request body may have no transfer coding but chunked");
    head.chunked = true;
  } else {
    head.content_length = f.content_length;
  }
  head.keep_alive = !f.close && (head.http11 || f.keep_alive_token);
  head.expect_continue = expect_continue && head.http11;
  return std::optional<RequestHead>(std::move(head));
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
    return malformed("response", "bad status line");
  const bool http11 = status_line[7] == '1';
  const std::string_view code = status_line.substr(9, 3);
  if (!std::all_of(code.begin(), code.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      code[0] == '0' || (status_line.size() > 12 && status_line[12] != ' ') ||
      !is_text(status_line.substr(12)))
    return malformed("response", "bad status line");
  head.status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');

  auto fields = scan_fields("response", rest, [&](std::string_view name, std::string_view value) {
    if (iequals(name, "content-type")) head.content_type = std::string(value);
  });
  if (!fields.ok()) return std::move(fields).error();
  const FieldSummary& f = *fields;
  head.content_length = f.content_length;
  head.keep_alive = !f.close && (http11 || f.keep_alive_token);
  if (head.status < 200 || head.status == 204 || head.status == 304) {
    head.framing = Framing::kNone;
  } else if (f.has_encoding) {
    // A Transfer-Encoding overrides a Content-Length, and a message with
    // both may have been framed differently on its way: the connection is
    // not reused (RFC 9112 §6.3). A coding other than chunked last: the
    // body runs to the close.
    // HTTP/1.0 has no transfer codings: such a message was framed by
    // someone else's rules, so its connection is not reused either.
    head.framing = f.chunked ? Framing::kChunked : Framing::kUntilClose;
    if (f.has_length || !f.chunked || !http11) head.keep_alive = false;
  } else if (f.has_length) {
    head.framing = Framing::kLength;
  } else {
    head.framing = Framing::kUntilClose;
    head.keep_alive = false;
  }
  return std::optional<ResponseHead>(std::move(head));
}

}  // namespace loadstar::http
