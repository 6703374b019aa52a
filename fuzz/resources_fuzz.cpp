// libFuzzer: resource decoding never crashes, and what it accepts encodes and
// decodes back to the same document.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "api/resources.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto resources = loadstar::api::decode_resources(text, "fuzz.yaml");
  if (!resources.ok()) return 0;
  for (const auto& r : *resources) {
    const std::string encoded = loadstar::api::encode_resource(r);
    auto again = loadstar::api::decode_resources(encoded, "encoded");
    if (!again.ok() || again->size() != 1 || loadstar::api::encode_resource((*again)[0]) != encoded)
      std::abort();
  }
  return 0;
}
