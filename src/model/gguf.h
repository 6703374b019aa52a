// GGUF, llama.cpp's model file: a header of typed key-value metadata and
// tensor descriptions, then the aligned tensor data. The reader validates
// the header (every length and count against the bytes there are) and keeps
// each value's serialized bytes, so metadata can be copied verbatim; the
// synthesizer writes a Llama-architecture model with seeded random weights
// and the real tokenizer of one of llama.cpp's vocabulary-only GGUF files
// (models/ggml-vocab-*.gguf), which llama-server loads and runs at real CPU
// cost (its answers are meaningless tokens).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::model {

enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

struct GgufKv {
  std::string key;
  GgufType type = GgufType::kUint8;
  std::string value;                       // the value as serialized after its type tag
  GgufType array_type = GgufType::kUint8;  // arrays only
  uint64_t count = 1;                      // arrays: elements; otherwise 1
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ne[0] (the row) first
  uint32_t type = 0;           // ggml_type
  uint64_t offset = 0;         // from the start of the data section
};

struct GgufHeader {
  uint32_t version = 0;
  std::vector<GgufKv> kvs;
  std::vector<GgufTensorInfo> tensors;
  uint32_t alignment = 32;
  uint64_t data_offset = 0;  // where tensor data begins in the file

  const GgufKv* find(std::string_view key) const;
  std::optional<uint64_t> unsigned_value(std::string_view key) const;
  std::optional<std::string> string_value(std::string_view key) const;
};

// Parses a GGUF header from the start of a file. kOutOfRange: `bytes` ends
// inside the header (read more and try again); other errors name what is
// malformed and where.
Result<GgufHeader> parse_gguf_header(std::string_view bytes);
Result<GgufHeader> read_gguf_header(const std::filesystem::path& file);

struct GgufSynthOptions {
  uint64_t size_bytes = 0;       // approximate file size
  std::filesystem::path output;  // the .gguf file to write
  std::filesystem::path vocab;   // a vocabulary-only GGUF (tokenizer.* keys)
  std::string name = "synthetic-llama";
  uint32_t context_length = 4096;
  uint64_t seed = 1;
};

struct GgufSynthReport {
  uint64_t bytes = 0;
  uint32_t layers = 0, embedding = 0, feed_forward = 0, heads = 0, vocab = 0, tensors = 0;
};

// A vocabulary GGUF by path, or by name ("llama-bpe", "qwen2", ...: the
// file ggml-vocab-NAME.gguf) in $LOADSTAR_VOCAB_DIR or in the llama.cpp
// build cache (~/.cache/loadstar-llama/*/vocab, written by
// scripts/llama-server.sh).
Result<std::filesystem::path> find_vocab(std::string_view name_or_path);

// Writes a temporary file beside `output` and renames it into place, so
// `output` is either absent or complete.
Result<GgufSynthReport> synth_gguf(const GgufSynthOptions& options);

}  // namespace loadstar::model
