// The safetensors format: an 8-byte little-endian header length N, N bytes of
// JSON naming each tensor's dtype, shape and [begin, end) byte range within the
// data that follows, then the data. Parsing validates everything a loader
// relies on, so a corrupt or hostile file is rejected before a byte of tensor
// data is trusted.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::model {

struct TensorInfo {
  std::string name;
  std::string dtype;  // "BF16", "F32", ...
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // offsets relative to the start of the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t data_offset = 0;         // 8 + header length: where tensor data starts in the file
  std::vector<TensorInfo> tensors;  // sorted by begin
  std::map<std::string, std::string> metadata;
};

inline constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

// Bytes per element of a safetensors dtype, or 0 for an unknown dtype.
uint32_t dtype_size(std::string_view dtype);

// Parses the JSON header of a file of `file_size` bytes whose header is
// `header_json` (the N bytes after the length prefix).
Result<SafetensorsHeader> parse_safetensors_header(std::string_view header_json,
                                                   uint64_t file_size);

// Serialises a header for `tensors` (offsets already assigned), padded with
// spaces to a multiple of 8 bytes as the reference implementation does.
std::string build_safetensors_header(const std::vector<TensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata);

}  // namespace loadstar::model
