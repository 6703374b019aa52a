#include "model/gguf_writer.h"

#include <algorithm>
#include <cstring>
#include <fstream>

namespace loadstar::model {

namespace fs = std::filesystem;

namespace {

void put_u32(std::string& out, uint32_t v) {
  out.append(reinterpret_cast<const char*>(&v), 4);
}
void put_u64(std::string& out, uint64_t v) {
  out.append(reinterpret_cast<const char*>(&v), 8);
}
void put_f32(std::string& out, float v) {
  out.append(reinterpret_cast<const char*>(&v), 4);
}
void put_string(std::string& out, std::string_view s) {
  put_u64(out, s.size());
  out.append(s);
}

// Random F16 weights of magnitude about 2^-7..2^-5 times 2^k (small enough
// that the activations of a random model stay finite), four from each draw.
class WeightSource {
 public:
  explicit WeightSource(uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  void fill_f16(char* out, uint64_t count, int k) {
    uint64_t i = 0;
    while (i < count) {
      uint64_t r = next();
      for (int j = 0; j < 4 && i < count; ++j, ++i, r >>= 16) {
        const uint16_t bits = static_cast<uint16_t>(r);
        const auto exponent =
            static_cast<uint16_t>(8 + k + (bits >> 14 & 1) + (bits >> 13 & 1));  // 2^-7 .. 2^-5
        const uint16_t h = static_cast<uint16_t>((bits & 0x8000) | exponent << 10 | (bits & 0x3FF));
        std::memcpy(out + 2 * i, &h, 2);
      }
    }
  }

 private:
  uint64_t next() {  // xorshift64*
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545F4914F6CDD1Dull;
  }
  uint64_t state_;
};

}  // namespace

void KvWriter::u32(std::string_view key, uint32_t v) {
  begin(key, GgufType::kUint32);
  put_u32(out_, v);
}

void KvWriter::f32(std::string_view key, float v) {
  begin(key, GgufType::kFloat32);
  put_f32(out_, v);
}

void KvWriter::str(std::string_view key, std::string_view v) {
  begin(key, GgufType::kString);
  put_string(out_, v);
}

void KvWriter::copy(const GgufKv& kv) {
  begin(kv.key, kv.type);
  out_ += kv.value;
}

void KvWriter::begin(std::string_view key, GgufType type) {
  put_string(out_, key);
  put_u32(out_, static_cast<uint32_t>(type));
  ++count_;
}

uint64_t GgufTensor::bytes() const {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n * (type == kGgmlF32 ? 4 : 2);
}

Result<uint64_t> write_gguf(const fs::path& output, const KvWriter& kv,
                            const std::vector<GgufTensor>& tensors, uint64_t seed) {
  std::string header;
  put_u32(header, kGgufMagic);
  put_u32(header, 3);
  put_u64(header, tensors.size());
  put_u64(header, kv.count());
  header += kv.bytes();
  uint64_t offset = 0;
  for (const GgufTensor& t : tensors) {
    put_string(header, t.name);
    put_u32(header, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put_u64(header, d);
    put_u32(header, t.type);
    put_u64(header, offset);
    offset = align_up(offset + t.bytes(), 32);
  }
  header.resize(align_up(header.size(), 32), '\0');

  fs::path tmp = output;
  tmp += ".partial";
  std::error_code ec;
  if (output.has_parent_path()) fs::create_directories(output.parent_path(), ec);
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (!out) return make_error(ErrorCode::kIo, "cannot write {}", tmp.string());
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  WeightSource weights(seed);
  std::string buffer;
  uint64_t written = header.size();
  for (const GgufTensor& t : tensors) {
    const uint64_t bytes = t.bytes();
    const uint64_t padded = align_up(bytes, 32);
    constexpr uint64_t kChunk = 8 << 20;
    for (uint64_t done = 0; done < padded; done += kChunk) {
      const uint64_t n = std::min(kChunk, padded - done);
      buffer.assign(n, '\0');
      const uint64_t data = done < bytes ? std::min(n, bytes - done) : 0;
      if (t.type == kGgmlF32) {
        const float one = 1.0f;  // norms
        for (uint64_t i = 0; i + 4 <= data; i += 4) std::memcpy(buffer.data() + i, &one, 4);
      } else {
        weights.fill_f16(buffer.data(), data / 2, t.exponent_offset);
      }
      out.write(buffer.data(), static_cast<std::streamsize>(n));
    }
    written += padded;
  }
  out.close();
  if (!out) return make_error(ErrorCode::kIo, "writing {} failed", tmp.string());
  fs::rename(tmp, output, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot rename {}: {}", tmp.string(), ec.message());
  return written;
}

}  // namespace loadstar::model
