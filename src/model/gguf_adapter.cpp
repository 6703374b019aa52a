// LoRA adapters as llama.cpp reads them: one GGUF file with general.type
// "adapter", adapter.type "lora", adapter.lora.alpha, general.architecture
// the base model's, and for each adapted weight W (ne = [in, out]) the pair
// W.lora_a (ne = [in, rank]) and W.lora_b (ne = [rank, out]).
#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "model/lora_adapter.h"

namespace loadstar::model {

namespace fs = std::filesystem;

namespace {

std::optional<float> f32_value(const GgufHeader& h, std::string_view key) {
  const GgufKv* kv = h.find(key);
  if (!kv || kv->type != GgufType::kFloat32 || kv->value.size() != 4) return std::nullopt;
  float v = 0;
  std::memcpy(&v, kv->value.data(), 4);
  return v;
}

}  // namespace

Result<AdapterInfo> read_gguf_adapter(const fs::path& file) {
  LS_ASSIGN_OR_RETURN(GgufHeader h, read_gguf_header(file));
  auto fail = [&](std::string_view why) {
    return make_error(ErrorCode::kInvalidArgument, "{}: {}", file.string(), why);
  };
  if (h.string_value("general.type") != "adapter" || h.string_value("adapter.type") != "lora")
    return fail("not a LoRA adapter (general.type must be 'adapter', adapter.type 'lora')");
  AdapterInfo info;
  info.dir = file;
  info.format = "gguf";
  info.base_model = h.string_value("general.architecture").value_or("");
  for (const GgufTensorInfo& t : h.tensors) {
    if (t.name.ends_with(".lora_a") && t.dims.size() == 2) {
      const auto rank = static_cast<uint32_t>(t.dims[1]);
      if (info.rank != 0 && rank != info.rank) return fail("its tensors have different ranks");
      info.rank = rank;
      const std::string weight = t.name.substr(0, t.name.size() - 7);
      const size_t dot = weight.find('.', weight.find('.') + 1);  // blk.N.<module>.weight
      const std::string module = weight.substr(dot + 1, weight.rfind('.') - dot - 1);
      if (dot != std::string::npos &&
          std::find(info.target_modules.begin(), info.target_modules.end(), module) ==
              info.target_modules.end())
        info.target_modules.push_back(module);
    } else if (!t.name.ends_with(".lora_b") && !t.name.ends_with("_norm.weight")) {
      return fail(fmt::format("tensor '{}' is neither a lora_a nor a lora_b", t.name));
    }
    ++info.tensors;
  }
  if (info.rank == 0 || info.rank > 4096) return fail("no lora_a tensor of rank 1..4096");
  info.alpha = f32_value(h, "adapter.lora.alpha").value_or(static_cast<float>(info.rank));
  std::error_code ec;
  info.bytes = fs::file_size(file, ec);
  return info;
}

Result<AdapterInfo> synth_gguf_adapter(const SynthGgufAdapterOptions& options) {
  LS_ASSIGN_OR_RETURN(GgufHeader base, read_gguf_header(options.base));
  const std::string arch = base.string_value("general.architecture").value_or("");
  if (arch.empty() || base.string_value("general.type") == "adapter")
    return make_error(ErrorCode::kInvalidArgument, "{} is not a GGUF model", options.base.string());
  if (options.rank == 0 || options.rank > 4096)
    return make_error(ErrorCode::kInvalidArgument, "rank must be 1..4096");
  KvWriter kv;
  kv.str("general.architecture", arch);
  kv.str("general.type", "adapter");
  kv.str("general.name", options.output.stem().string());
  kv.str("adapter.type", "lora");
  kv.f32("adapter.lora.alpha", static_cast<float>(options.rank));
  std::vector<GgufTensor> tensors;
  for (const GgufTensorInfo& t : base.tensors) {
    if (t.dims.size() != 2 || !t.name.starts_with("blk.") ||
        !(t.name.ends_with(".attn_q.weight") || t.name.ends_with(".attn_v.weight")))
      continue;
    tensors.push_back({t.name + ".lora_a", {t.dims[0], options.rank}, kGgmlF16});
    // B sixteen times larger than the base's weights: a synthetic adapter
    // changes a random model's answers, so a test can tell it was applied.
    tensors.push_back({t.name + ".lora_b", {options.rank, t.dims[1]}, kGgmlF16, 4});
  }
  if (tensors.empty())
    return make_error(ErrorCode::kInvalidArgument, "{} has no attn_q/attn_v weights to adapt",
                      options.base.string());
  LS_RETURN_IF_ERROR(write_gguf(options.output, kv, tensors, options.seed));
  return read_gguf_adapter(options.output);
}

}  // namespace loadstar::model
