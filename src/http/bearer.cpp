#include "http/bearer.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace loadstar::http {

Result<BearerToken> BearerToken::from_string(std::string token, std::string_view origin) {
  const size_t begin = token.find_first_not_of(" \t\r\n");
  const size_t end = token.find_last_not_of(" \t\r\n");
  token = begin == std::string::npos ? "" : token.substr(begin, end - begin + 1);
  if (token.size() < 16)
    return make_error(ErrorCode::kInvalidArgument,
                      "{}: the token must have at least 16 characters (it has {})", origin,
                      token.size());
  for (char c : token)
    if (c < 0x21 || c > 0x7e)
      return make_error(ErrorCode::kInvalidArgument,
                        "{}: the token must be printable ASCII without spaces", origin);
  return BearerToken(std::move(token));
}

Result<BearerToken> BearerToken::from_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::kNotFound, "--token-file {}: cannot read it", path);
  std::stringstream text;
  text << in.rdbuf();
  return from_string(text.str(), "--token-file " + path);
}

Result<std::optional<BearerToken>> BearerToken::from_flag_or_env(const std::string& token_file) {
  if (!token_file.empty()) {
    LS_ASSIGN_OR_RETURN(BearerToken token, from_file(token_file));
    return std::optional<BearerToken>(std::move(token));
  }
  if (const char* env = std::getenv("LOADSTAR_TOKEN"); env && *env) {
    LS_ASSIGN_OR_RETURN(BearerToken token, from_string(env, "$LOADSTAR_TOKEN"));
    return std::optional<BearerToken>(std::move(token));
  }
  return std::optional<BearerToken>();
}

std::string BearerToken::generate() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) std::abort();
  std::string out;
  for (unsigned char b : bytes) out += fmt::format("{:02x}", b);
  return out;
}

bool BearerToken::admits(const Request& request) const {
  std::string_view given = request.header("authorization");
  constexpr std::string_view kScheme = "Bearer ";
  if (given.size() != kScheme.size() + token_.size() ||
      !std::equal(kScheme.begin(), kScheme.end(), given.begin(),
                  [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
    return false;
  return CRYPTO_memcmp(given.data() + kScheme.size(), token_.data(), token_.size()) == 0;
}

namespace {

constexpr std::string_view kBearer = "Bearer ";

// The token a request carries; empty for none.
std::string_view bearer_of(const Request& request) {
  std::string_view given = request.header("authorization");
  if (given.size() < kBearer.size() ||
      !std::equal(kBearer.begin(), kBearer.end(), given.begin(),
                  [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
    return {};
  return given.substr(kBearer.size());
}

std::string namespace_mac(const std::string& key, std::string_view namespace_name) {
  const std::string message = fmt::format("loadstar namespace token\n{}", namespace_name);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &size);
  std::string out;
  for (unsigned int i = 0; i < size; ++i) out += fmt::format("{:02x}", mac[i]);
  return out;
}

}  // namespace

BearerToken BearerToken::for_namespace(std::string_view namespace_name) const {
  return BearerToken(
      fmt::format("ns.{}.{}", namespace_name, namespace_mac(token_, namespace_name)));
}

std::optional<std::string> BearerToken::namespace_of(const Request& request) const {
  std::string_view given = bearer_of(request);
  if (!given.starts_with("ns.")) return std::nullopt;
  const size_t dot = given.rfind('.');
  if (dot <= 3) return std::nullopt;
  const std::string_view namespace_name = given.substr(3, dot - 3);
  const std::string expected = namespace_mac(token_, namespace_name);
  const std::string_view mac = given.substr(dot + 1);
  if (mac.size() != expected.size() ||
      CRYPTO_memcmp(mac.data(), expected.data(), expected.size()) != 0)
    return std::nullopt;
  return std::string(namespace_name);
}

Response unauthorized(std::string_view what) {
  Response r{
      401, "application/json",
      fmt::format(
          R"json({{"error":{{"message":"{} needs Loadstar's internal token (Authorization: Bearer; the Secret loadstar-internal in Kubernetes)","code":401}}}})json",
          what)};
  r.headers.push_back({"WWW-Authenticate", "Bearer"});
  return r;
}

}  // namespace loadstar::http
