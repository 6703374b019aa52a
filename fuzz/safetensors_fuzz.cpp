// libFuzzer: the safetensors and GGUF header parsers must reject or accept
// any bytes without crashing, and what they accept must be self-consistent.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "model/gguf.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view whole(reinterpret_cast<const char*>(data), size);
  if (auto gguf = loadstar::model::parse_gguf_header(whole); gguf.ok()) {
    if (gguf->data_offset % gguf->alignment || gguf->data_offset < 24) std::abort();
    for (const auto& kv : gguf->kvs)
      if (kv.type == loadstar::model::GgufType::kArray && kv.value.size() < 12) std::abort();
  }
  if (size < 8) return 0;
  uint64_t data_bytes = 0;
  for (int i = 0; i < 8; ++i) data_bytes = (data_bytes << 8) | data[i];
  data_bytes %= 1u << 20;
  std::string_view header(reinterpret_cast<const char*>(data + 8), size - 8);
  auto parsed = loadstar::model::parse_safetensors_header(header, 8 + header.size() + data_bytes);
  if (!parsed.ok()) return 0;
  uint64_t expected = 0;
  for (const auto& t : parsed->tensors) {
    if (t.begin != expected || t.end < t.begin) std::abort();
    expected = t.end;
  }
  if (expected != data_bytes) std::abort();
  return 0;
}
