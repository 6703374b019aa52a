// Writing GGUF files (the model library's own; not for other libraries):
// the typed key-value metadata, the tensor descriptions, then each tensor's
// data, 32-byte aligned. F32 tensors are written as ones (norms), F16 ones
// as seeded random weights, so a synthetic file runs at real cost.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "model/gguf.h"

namespace loadstar::model {

inline constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
inline constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1;

inline uint64_t align_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

class KvWriter {
 public:
  void u32(std::string_view key, uint32_t v);
  void f32(std::string_view key, float v);
  void str(std::string_view key, std::string_view v);
  void copy(const GgufKv& kv);  // as read, verbatim
  uint64_t count() const { return count_; }
  const std::string& bytes() const { return out_; }

 private:
  void begin(std::string_view key, GgufType type);
  std::string out_;
  uint64_t count_ = 0;
};

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> dims;  // ne[0] first
  uint32_t type = kGgmlF16;
  // F16 weights are of magnitude 2^(-7+k)..2^(-5+k) for this k.
  int exponent_offset = 0;
  uint64_t bytes() const;
};

// Writes `output` (through a temporary file renamed into place); returns
// the bytes written.
Result<uint64_t> write_gguf(const std::filesystem::path& output, const KvWriter& kv,
                            const std::vector<GgufTensor>& tensors, uint64_t seed);

}  // namespace loadstar::model
