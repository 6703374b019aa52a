#include "common/url.h"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace loadstar {

namespace {

uint16_t default_port(std::string_view scheme) {
  if (scheme == "https") return 443;
  if (scheme == "http") return 80;
  return 0;
}

}  // namespace

std::string Url::origin() const {
  std::string out =
      scheme + "://" + (host.find(':') != std::string::npos ? "[" + host + "]" : host);
  if (port != 0 && port != default_port(scheme)) out += ":" + std::to_string(port);
  return out;
}

Result<Url> parse_url(std::string_view text) {
  Url url;
  const size_t colon = text.find("://");
  if (colon == std::string_view::npos || colon == 0)
    return make_error(ErrorCode::kInvalidArgument, "'{}' is not an absolute URL (scheme://...)",
                      text);
  url.scheme = std::string(text.substr(0, colon));
  std::transform(url.scheme.begin(), url.scheme.end(), url.scheme.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  std::string_view rest = text.substr(colon + 3);
  const size_t slash = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, slash);
  url.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (url.target[0] == '?') url.target.insert(url.target.begin(), '/');
  if (authority.find('@') != std::string_view::npos)
    return make_error(ErrorCode::kInvalidArgument,
                      "URL '{}...' carries credentials; give them through the environment or a "
                      "credentials file",
                      text.substr(0, colon + 3));
  url.port = default_port(url.scheme);
  std::string_view host = authority;
  std::string_view port;
  if (!authority.empty() && authority[0] == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos)
      return make_error(ErrorCode::kInvalidArgument, "URL '{}': unterminated '['", text);
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':')
        return make_error(ErrorCode::kInvalidArgument, "URL '{}': junk after ']'", text);
      port = authority.substr(close + 2);
    }
  } else if (const size_t c = authority.rfind(':'); c != std::string_view::npos) {
    host = authority.substr(0, c);
    port = authority.substr(c + 1);
  }
  if (!port.empty()) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535)
      return make_error(ErrorCode::kInvalidArgument, "URL '{}': bad port '{}'", text, port);
    url.port = static_cast<uint16_t>(value);
  }
  url.host = std::string(host);
  if (url.host.empty() && url.scheme != "file")
    return make_error(ErrorCode::kInvalidArgument, "URL '{}' has no host", text);
  return url;
}

Result<Url> resolve_location(const Url& base, std::string_view location) {
  if (location.find("://") != std::string_view::npos) return parse_url(location);
  Url url = base;
  if (location.starts_with("//")) return parse_url(base.scheme + ":" + std::string(location));
  if (location.starts_with("/")) {
    url.target = std::string(location);
    return url;
  }
  std::string path = base.target.substr(0, base.target.find('?'));
  path = path.substr(0, path.rfind('/') + 1);
  url.target = path + std::string(location);
  return url;
}

std::string uri_encode(std::string_view text, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace loadstar
