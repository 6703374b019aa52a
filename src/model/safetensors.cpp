#include "model/safetensors.h"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace loadstar::model {

using nlohmann::json;

uint32_t dtype_size(std::string_view dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2")
    return 1;
  return 0;
}

Result<SafetensorsHeader> parse_safetensors_header(std::string_view header_json,
                                                   uint64_t file_size) {
  SafetensorsHeader header;
  header.data_offset = 8 + header_json.size();
  if (header.data_offset > file_size)
    return make_error(ErrorCode::kCorrupt, "header length {} exceeds the file size {}",
                      header_json.size(), file_size);
  const uint64_t data_size = file_size - header.data_offset;
  json doc = json::parse(header_json, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object())
    return make_error(ErrorCode::kCorrupt, "header is not a JSON object");
  for (auto& [name, entry] : doc.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        return make_error(ErrorCode::kCorrupt, "__metadata__ is not an object");
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string())
          return make_error(ErrorCode::kCorrupt, "__metadata__.{} is not a string", k);
        header.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object())
      return make_error(ErrorCode::kCorrupt, "tensor '{}' is not an object", name);
    TensorInfo t;
    t.name = name;
    auto dtype = entry.find("dtype");
    auto shape = entry.find("shape");
    auto offsets = entry.find("data_offsets");
    if (dtype == entry.end() || !dtype->is_string())
      return make_error(ErrorCode::kCorrupt, "tensor '{}': missing string 'dtype'", name);
    t.dtype = dtype->get<std::string>();
    uint32_t elem = dtype_size(t.dtype);
    if (elem == 0)
      return make_error(ErrorCode::kCorrupt, "tensor '{}': unknown dtype '{}'", name, t.dtype);
    if (shape == entry.end() || !shape->is_array())
      return make_error(ErrorCode::kCorrupt, "tensor '{}': missing array 'shape'", name);
    uint64_t numel = 1;
    bool overflow = false;
    for (auto& d : *shape) {
      if (!d.is_number_unsigned())
        return make_error(ErrorCode::kCorrupt, "tensor '{}': shape holds a non-integer", name);
      t.shape.push_back(d.get<uint64_t>());
      overflow |= __builtin_mul_overflow(numel, t.shape.back(), &numel);
    }
    uint64_t tensor_bytes = 0;
    overflow |= __builtin_mul_overflow(numel, uint64_t{elem}, &tensor_bytes);
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned())
      return make_error(ErrorCode::kCorrupt, "tensor '{}': 'data_offsets' must be [begin, end]",
                        name);
    t.begin = (*offsets)[0].get<uint64_t>();
    t.end = (*offsets)[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_size)
      return make_error(ErrorCode::kCorrupt,
                        "tensor '{}': data_offsets [{}, {}] outside the {} data bytes", name,
                        t.begin, t.end, data_size);
    if (overflow || tensor_bytes != t.end - t.begin)
      return make_error(ErrorCode::kCorrupt, "tensor '{}': {} bytes for a {} tensor of {} elements",
                        name, t.end - t.begin, t.dtype, numel);
    header.tensors.push_back(std::move(t));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  // The data section is exactly the tensors, back to back: no gap, no overlap.
  uint64_t expected = 0;
  for (const TensorInfo& t : header.tensors) {
    if (t.begin != expected)
      return make_error(ErrorCode::kCorrupt,
                        "tensor '{}' starts at {}, expected {} (gap or overlap)", t.name, t.begin,
                        expected);
    expected = t.end;
  }
  if (expected != data_size)
    return make_error(ErrorCode::kCorrupt,
                      "tensors cover {} bytes but the file holds {} data bytes", expected,
                      data_size);
  return header;
}

std::string build_safetensors_header(const std::vector<TensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  json doc = json::object();
  if (!metadata.empty()) doc["__metadata__"] = metadata;
  for (const TensorInfo& t : tensors)
    doc[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  std::string text = doc.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace loadstar::model
