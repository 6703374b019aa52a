// Cryptographic digests (OpenSSL's EVP interface).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace loadstar {

// SHA-256 of `data` as 64 lower-case hex digits.
std::string sha256_hex(std::string_view data);

// Lower-case hex of raw bytes.
std::string hex_encode(std::string_view bytes);

// HMAC-SHA256 of `data` under `key`, as 32 raw bytes.
std::string hmac_sha256(std::string_view key, std::string_view data);

// Standard base64 (RFC 4648, with padding); decode ignores whitespace and
// fails on anything else that is not base64.
std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);

// Incremental SHA-256 for data that arrives in pieces.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  void update(std::string_view data);
  // The digest as hex; the object starts over afterwards.
  std::string finish_hex();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

}  // namespace loadstar
