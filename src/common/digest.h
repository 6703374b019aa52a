// Cryptographic digests (OpenSSL's EVP interface).
#pragma once

#include <string>
#include <string_view>

namespace loadstar {

// SHA-256 of `data` as 64 lower-case hex digits.
std::string sha256_hex(std::string_view data);

}  // namespace loadstar
