#include "model/gguf.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "model/gguf_writer.h"

namespace loadstar::model {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kMaxString = 1ull << 30;
constexpr uint64_t kMaxCount = 1ull << 32;
constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 4;

// A little-endian reader over the header bytes. Running out is kOutOfRange
// (the caller may read more); anything else is kCorrupt.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  size_t pos() const { return pos_; }

  template <typename T>
  Result<T> scalar() {
    if (bytes_.size() - pos_ < sizeof(T)) return short_read();
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  Result<std::string_view> raw(uint64_t n) {
    if (bytes_.size() - pos_ < n) return short_read();
    std::string_view out = bytes_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  Result<std::string> string(std::string_view what) {
    LS_ASSIGN_OR_RETURN(uint64_t n, scalar<uint64_t>());
    if (n > kMaxString) return corrupt("{} is {} bytes long", what, n);
    LS_ASSIGN_OR_RETURN(std::string_view s, raw(n));
    return std::string(s);
  }
  template <typename... Args>
  Error corrupt(fmt::format_string<Args...> format, Args&&... args) const {
    return make_error(ErrorCode::kCorrupt, "GGUF header at byte {}: {}", pos_,
                      fmt::format(format, std::forward<Args>(args)...));
  }

 private:
  Error short_read() const {
    return make_error(ErrorCode::kOutOfRange, "GGUF header ends after {} bytes", bytes_.size());
  }
  std::string_view bytes_;
  size_t pos_ = 0;
};

std::optional<uint64_t> scalar_size(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    default:
      return std::nullopt;
  }
}

template <typename T>
Status discard(Result<T> r) {
  if (!r.ok()) return std::move(r).error();
  return ok_status();
}

// Skips one value of `type`, checking it is well formed.
Status skip_value(Reader& r, GgufType type, const std::string& key, int depth) {
  if (auto size = scalar_size(type)) return discard(r.raw(*size));
  if (type == GgufType::kString) return discard(r.string(key));
  if (type != GgufType::kArray) return r.corrupt("{}: unknown value type {}", key, uint32_t(type));
  if (depth >= kMaxArrayDepth) return r.corrupt("{}: arrays nested too deep", key);
  LS_ASSIGN_OR_RETURN(uint32_t element, r.scalar<uint32_t>());
  LS_ASSIGN_OR_RETURN(uint64_t count, r.scalar<uint64_t>());
  if (count > kMaxCount) return r.corrupt("{}: {} elements", key, count);
  if (auto size = scalar_size(GgufType(element))) {
    if (count > kMaxString / *size) return r.corrupt("{}: {} elements", key, count);
    return discard(r.raw(count * *size));
  }
  for (uint64_t i = 0; i < count; ++i)
    LS_RETURN_IF_ERROR(skip_value(r, GgufType(element), key, depth + 1));
  return ok_status();
}

}  // namespace

const GgufKv* GgufHeader::find(std::string_view key) const {
  for (const auto& kv : kvs)
    if (kv.key == key) return &kv;
  return nullptr;
}

std::optional<uint64_t> GgufHeader::unsigned_value(std::string_view key) const {
  const GgufKv* kv = find(key);
  if (!kv) return std::nullopt;
  auto size = scalar_size(kv->type);
  if (!size || kv->type == GgufType::kFloat32 || kv->type == GgufType::kFloat64)
    return std::nullopt;
  uint64_t v = 0;
  std::memcpy(&v, kv->value.data(), *size);
  return v;
}

std::optional<std::string> GgufHeader::string_value(std::string_view key) const {
  const GgufKv* kv = find(key);
  if (!kv || kv->type != GgufType::kString || kv->value.size() < 8) return std::nullopt;
  return kv->value.substr(8);
}

Result<GgufHeader> parse_gguf_header(std::string_view bytes) {
  Reader r(bytes);
  GgufHeader h;
  LS_ASSIGN_OR_RETURN(uint32_t magic, r.scalar<uint32_t>());
  if (magic != kGgufMagic)
    return make_error(ErrorCode::kCorrupt, "not a GGUF file (no GGUF magic)");
  LS_ASSIGN_OR_RETURN(h.version, r.scalar<uint32_t>());
  if (h.version < 2 || h.version > 3)
    return make_error(ErrorCode::kCorrupt, "GGUF version {} is not supported (2 or 3)", h.version);
  LS_ASSIGN_OR_RETURN(uint64_t tensors, r.scalar<uint64_t>());
  LS_ASSIGN_OR_RETURN(uint64_t kvs, r.scalar<uint64_t>());
  if (tensors > kMaxCount || kvs > kMaxCount)
    return r.corrupt("{} tensors and {} metadata entries", tensors, kvs);
  for (uint64_t i = 0; i < kvs; ++i) {
    GgufKv kv;
    LS_ASSIGN_OR_RETURN(kv.key, r.string("a metadata key"));
    LS_ASSIGN_OR_RETURN(uint32_t type, r.scalar<uint32_t>());
    kv.type = GgufType(type);
    const size_t start = r.pos();
    Reader value = r;
    LS_RETURN_IF_ERROR(skip_value(value, kv.type, kv.key, 0));
    kv.value = std::string(bytes.substr(start, value.pos() - start));
    if (kv.type == GgufType::kArray) {
      uint32_t element = 0;
      std::memcpy(&element, kv.value.data(), 4);
      std::memcpy(&kv.count, kv.value.data() + 4, 8);
      kv.array_type = GgufType(element);
    }
    r = value;
    if (kv.key == "general.alignment") {
      auto size = scalar_size(kv.type);
      if (!size || *size > 4) return r.corrupt("general.alignment is not a 32-bit number");
      uint32_t a = 0;
      std::memcpy(&a, kv.value.data(), *size);
      if (a == 0 || !std::has_single_bit(a))
        return r.corrupt("alignment {} is not a power of 2", a);
      h.alignment = a;
    }
    h.kvs.push_back(std::move(kv));
  }
  for (uint64_t i = 0; i < tensors; ++i) {
    GgufTensorInfo t;
    LS_ASSIGN_OR_RETURN(t.name, r.string("a tensor name"));
    LS_ASSIGN_OR_RETURN(uint32_t dims, r.scalar<uint32_t>());
    if (dims == 0 || dims > kMaxDims) return r.corrupt("tensor {} has {} dimensions", t.name, dims);
    for (uint32_t d = 0; d < dims; ++d) {
      LS_ASSIGN_OR_RETURN(uint64_t n, r.scalar<uint64_t>());
      t.dims.push_back(n);
    }
    LS_ASSIGN_OR_RETURN(t.type, r.scalar<uint32_t>());
    LS_ASSIGN_OR_RETURN(t.offset, r.scalar<uint64_t>());
    if (t.offset % h.alignment)
      return r.corrupt("tensor {} at offset {} is not aligned to {}", t.name, t.offset,
                       h.alignment);
    h.tensors.push_back(std::move(t));
  }
  h.data_offset = align_up(r.pos(), h.alignment);
  return h;
}

Result<GgufHeader> read_gguf_header(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return make_error(ErrorCode::kNotFound, "cannot open {}", file.string());
  std::string bytes;
  for (uint64_t want = 1 << 20;; want *= 4) {
    bytes.resize(want);
    in.clear();
    in.seekg(0);
    in.read(bytes.data(), static_cast<std::streamsize>(want));
    bytes.resize(static_cast<size_t>(in.gcount()));
    auto header = parse_gguf_header(bytes);
    if (header.ok() || header.error().code != ErrorCode::kOutOfRange || bytes.size() < want) {
      if (!header.ok()) {
        Error e = std::move(header).error();
        e.message = fmt::format("{}: {}", file.string(), e.message);
        return e;
      }
      return header;
    }
    if (want > (1ull << 32))
      return make_error(ErrorCode::kCorrupt, "{}: header too large", file.string());
  }
}

Result<fs::path> find_vocab(std::string_view name_or_path) {
  std::error_code ec;
  if (fs::is_regular_file(fs::path(name_or_path), ec)) return fs::path(name_or_path);
  const std::string file = fmt::format("ggml-vocab-{}.gguf", name_or_path);
  std::vector<fs::path> dirs;
  if (const char* dir = std::getenv("LOADSTAR_VOCAB_DIR"); dir && *dir) dirs.emplace_back(dir);
  if (const char* home = std::getenv("HOME"); home && *home) {
    const fs::path cache = fs::path(home) / ".cache" / "loadstar-llama";
    for (const auto& entry : fs::directory_iterator(cache, ec))
      dirs.push_back(entry.path() / "vocab");
  }
  for (const auto& dir : dirs)
    if (fs::is_regular_file(dir / file, ec)) return dir / file;
  return make_error(ErrorCode::kNotFound,
                    "vocabulary '{}' not found (no {} in $LOADSTAR_VOCAB_DIR or "
                    "~/.cache/loadstar-llama/*/vocab): run scripts/llama-server.sh build, or name "
                    "a ggml-vocab-*.gguf file",
                    name_or_path, file);
}

Result<GgufSynthReport> synth_gguf(const GgufSynthOptions& options) {
  LS_ASSIGN_OR_RETURN(GgufHeader vocab, read_gguf_header(options.vocab));
  const GgufKv* tokens = vocab.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GgufType::kArray || tokens->count == 0)
    return make_error(ErrorCode::kInvalidArgument, "{} has no tokenizer.ggml.tokens",
                      options.vocab.string());
  GgufSynthReport report;
  report.vocab = static_cast<uint32_t>(tokens->count);
  const uint64_t v = report.vocab;
  // The tokenizer's metadata (tokens, merges) is part of the file's size.
  uint64_t metadata = 4096;
  for (const GgufKv& t : vocab.kvs)
    if (t.key.starts_with("tokenizer.")) metadata += t.key.size() + t.value.size() + 12;
  const uint64_t budget = options.size_bytes > metadata ? options.size_bytes - metadata : 0;
  // Output tied to the token embeddings; per layer 4 E^2 attention and
  // 3 E x 3E feed-forward F16 weights (26 E^2 bytes).
  auto total = [v](uint64_t e, uint64_t layers) { return 2 * v * e + 26 * e * e * layers; };
  static constexpr uint64_t kEmbeddings[] = {64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096};
  uint64_t e = 0;
  for (uint64_t candidate : kEmbeddings)
    if (total(candidate, 2) <= budget) e = candidate;
  if (e == 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "a model with this {}-token vocabulary is at least {} bytes", v,
                      total(64, 2) + metadata);
  const uint64_t layers = std::clamp<uint64_t>((budget - 2 * v * e) / (26 * e * e), 2, 80);
  report.embedding = static_cast<uint32_t>(e);
  report.layers = static_cast<uint32_t>(layers);
  report.feed_forward = static_cast<uint32_t>(3 * e);
  report.heads = static_cast<uint32_t>(std::max<uint64_t>(1, e / 64));

  std::vector<GgufTensor> tensors;
  tensors.push_back({"token_embd.weight", {e, v}, kGgmlF16});
  tensors.push_back({"output_norm.weight", {e}, kGgmlF32});
  for (uint64_t l = 0; l < layers; ++l) {
    auto name = [l](const char* what) { return fmt::format("blk.{}.{}.weight", l, what); };
    tensors.push_back({name("attn_norm"), {e}, kGgmlF32});
    tensors.push_back({name("attn_q"), {e, e}, kGgmlF16});
    tensors.push_back({name("attn_k"), {e, e}, kGgmlF16});
    tensors.push_back({name("attn_v"), {e, e}, kGgmlF16});
    tensors.push_back({name("attn_output"), {e, e}, kGgmlF16});
    tensors.push_back({name("ffn_norm"), {e}, kGgmlF32});
    tensors.push_back({name("ffn_gate"), {e, 3 * e}, kGgmlF16});
    tensors.push_back({name("ffn_up"), {e, 3 * e}, kGgmlF16});
    tensors.push_back({name("ffn_down"), {3 * e, e}, kGgmlF16});
  }
  report.tensors = static_cast<uint32_t>(tensors.size());

  KvWriter kv;
  kv.str("general.architecture", "llama");
  kv.str("general.name", options.name);
  kv.u32("general.file_type", 1);  // mostly F16
  kv.u32("llama.context_length", options.context_length);
  kv.u32("llama.embedding_length", report.embedding);
  kv.u32("llama.block_count", report.layers);
  kv.u32("llama.feed_forward_length", report.feed_forward);
  kv.u32("llama.attention.head_count", report.heads);
  kv.u32("llama.attention.head_count_kv", report.heads);
  kv.u32("llama.rope.dimension_count", static_cast<uint32_t>(e / report.heads));
  kv.f32("llama.rope.freq_base", 10000.0f);
  kv.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  kv.u32("llama.vocab_size", report.vocab);
  for (const GgufKv& t : vocab.kvs)
    if (t.key.starts_with("tokenizer.")) kv.copy(t);

  LS_ASSIGN_OR_RETURN(report.bytes, write_gguf(options.output, kv, tensors, options.seed));
  return report;
}

}  // namespace loadstar::model
