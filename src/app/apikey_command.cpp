// `loadstar apikey`: makes an API key for a Tenant and prints the SHA-256
// digest that the Tenant resource stores (the key itself is never stored).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "app/commands.h"
#include "common/digest.h"

namespace loadstar::app {

std::function<int()> setup_apikey(CLI::App& app) {
  auto hash = std::make_shared<bool>(false);
  app.add_flag(
      "--hash", *hash,
      "Read a key from standard input and print only its digest (for keys made elsewhere)");
  return [hash]() -> int {
    if (*hash) {
      std::string key;
      std::getline(std::cin, key);
      while (!key.empty() && (key.back() == '\r' || key.back() == ' ')) key.pop_back();
      if (key.empty()) {
        fmt::print(stderr, "apikey --hash: no key on standard input\n");
        return 2;
      }
      fmt::print("{}\n", sha256_hex(key));
      return 0;
    }
    // 32 random bytes from the kernel, as base62: about 190 bits.
    std::ifstream random("/dev/urandom", std::ios::binary);
    unsigned char bytes[32];
    if (!random.read(reinterpret_cast<char*>(bytes), sizeof bytes)) {
      fmt::print(stderr, "apikey: cannot read /dev/urandom\n");
      return 1;
    }
    static constexpr char kAlphabet[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    std::string key = "ls-";
    for (unsigned char b : bytes) key += kAlphabet[b % 62];
    fmt::print(
        "key:    {}\nsha256: {}\n\nGive the key to its user; put the digest in a Tenant:\n"
        "  spec:\n    apiKeys:\n      - name: NAME\n        sha256: {}\n",
        key, sha256_hex(key), sha256_hex(key));
    return 0;
  };
}

}  // namespace loadstar::app
