#include "model/lora_adapter.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/safetensors.h"

namespace loadstar::model {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

Result<std::string> read_text(const fs::path& path, uint64_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::kNotFound, "{}: cannot open", path.string());
  std::string text(limit, '\0');
  in.read(text.data(), static_cast<std::streamsize>(limit));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

}  // namespace

Result<AdapterInfo> read_adapter(const fs::path& dir) {
  std::error_code file_ec;
  if (dir.extension() == ".gguf" && fs::is_regular_file(dir, file_ec))
    return read_gguf_adapter(dir);
  AdapterInfo info;
  info.dir = dir;
  const fs::path config_path = dir / kConfigFile;
  LS_ASSIGN_OR_RETURN(std::string text, read_text(config_path, 1 << 20));
  const json config = json::parse(text, nullptr, false);
  if (!config.is_object())
    return make_error(ErrorCode::kInvalidArgument, "{}: not a JSON object", config_path.string());
  if (!config.contains("r") || !config["r"].is_number_unsigned() ||
      config["r"].get<uint64_t>() == 0 || config["r"].get<uint64_t>() > 4096)
    return make_error(ErrorCode::kInvalidArgument, "{}: 'r' (the rank) must be 1..4096",
                      config_path.string());
  info.rank = config["r"].get<uint32_t>();
  info.alpha = config.contains("lora_alpha") && config["lora_alpha"].is_number()
                   ? config["lora_alpha"].get<double>()
                   : info.rank;
  if (config.contains("base_model_name_or_path") && config["base_model_name_or_path"].is_string())
    info.base_model = config["base_model_name_or_path"].get<std::string>();
  if (config.contains("target_modules") && config["target_modules"].is_array())
    for (const auto& m : config["target_modules"])
      if (m.is_string()) info.target_modules.push_back(m.get<std::string>());
  const fs::path weights = dir / kWeightsFile;
  std::error_code ec;
  const uint64_t size = fs::file_size(weights, ec);
  if (ec) return make_error(ErrorCode::kNotFound, "{}: {}", weights.string(), ec.message());
  LS_ASSIGN_OR_RETURN(std::string prefix, read_text(weights, 8));
  if (prefix.size() < 8)
    return make_error(ErrorCode::kCorrupt, "{}: too short for safetensors", weights.string());
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8) | static_cast<unsigned char>(prefix[i]);
  if (header_len > kMaxSafetensorsHeader || header_len > size - 8)
    return make_error(ErrorCode::kCorrupt, "{}: header length {} is impossible", weights.string(),
                      header_len);
  LS_ASSIGN_OR_RETURN(std::string head, read_text(weights, 8 + header_len));
  auto header = parse_safetensors_header(std::string_view(head).substr(8), size);
  if (!header.ok()) return std::move(header).error().context(weights.string());
  for (const TensorInfo& t : header->tensors)
    if (t.name.find("lora_A") == std::string::npos && t.name.find("lora_B") == std::string::npos)
      return make_error(ErrorCode::kInvalidArgument, "{}: tensor '{}' is not a LoRA weight",
                        weights.string(), t.name);
  if (header->tensors.empty())
    return make_error(ErrorCode::kInvalidArgument, "{}: no tensors", weights.string());
  info.bytes = size;
  info.tensors = static_cast<uint32_t>(header->tensors.size());
  return info;
}

Result<AdapterInfo> synth_adapter(const SynthAdapterOptions& options) {
  if (options.output.empty()) return make_error(ErrorCode::kInvalidArgument, "no output directory");
  if (options.rank == 0 || options.hidden_size == 0 || options.layers == 0)
    return make_error(ErrorCode::kInvalidArgument, "rank, hidden size and layers must be positive");
  std::error_code ec;
  if (fs::exists(options.output, ec))
    return make_error(ErrorCode::kInvalidArgument, "{} already exists; remove it or choose another",
                      options.output.string());
  const fs::path final_dir = fs::absolute(options.output).lexically_normal();
  const fs::path tmp = final_dir.parent_path() /
                       fmt::format(".{}.partial-{}", final_dir.filename().string(), ::getpid());
  fs::create_directories(tmp, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot create {}: {}", tmp.string(), ec.message());
  std::vector<TensorInfo> tensors;
  uint64_t offset = 0;
  auto add = [&](std::string name, std::vector<uint64_t> shape) {
    uint64_t bytes = 2;
    for (uint64_t d : shape) bytes *= d;
    tensors.push_back({std::move(name), "BF16", std::move(shape), offset, offset + bytes});
    offset += bytes;
  };
  for (uint32_t l = 0; l < options.layers; ++l)
    for (const char* module : {"q_proj", "v_proj"}) {
      const std::string p =
          fmt::format("base_model.model.model.layers.{}.self_attn.{}.", l, module);
      add(p + "lora_A.weight", {options.rank, options.hidden_size});
      add(p + "lora_B.weight", {options.hidden_size, options.rank});
    }
  const std::string header = build_safetensors_header(tensors, {{"format", "pt"}});
  {
    std::ofstream out(tmp / kWeightsFile, std::ios::binary);
    char prefix[8];
    for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>(header.size() >> (8 * i));
    out.write(prefix, 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    uint64_t rng = options.seed * 0x9e3779b97f4a7c15ULL + 1;
    std::string data(offset, '\0');
    for (size_t i = 0; i + 1 < data.size(); i += 2) {
      rng ^= rng << 13;
      rng ^= rng >> 7;
      rng ^= rng << 17;
      const auto v = static_cast<uint16_t>((rng & 0x807f) | 0x3b00);  // small bf16 values
      data[i] = static_cast<char>(v & 0xff);
      data[i + 1] = static_cast<char>(v >> 8);
    }
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    if (!out.flush()) {
      fs::remove_all(tmp, ec);
      return make_error(ErrorCode::kIo, "cannot write {}", (tmp / kWeightsFile).string());
    }
  }
  const json config = {{"peft_type", "LORA"},
                       {"task_type", "CAUSAL_LM"},
                       {"r", options.rank},
                       {"lora_alpha", 2 * options.rank},
                       {"lora_dropout", 0.0},
                       {"bias", "none"},
                       {"target_modules", {"q_proj", "v_proj"}},
                       {"base_model_name_or_path", options.base_model},
                       {"loadstar_synthetic", true}};
  {
    std::ofstream out(tmp / kConfigFile);
    out << config.dump(2) << "\n";
    if (!out.flush()) {
      fs::remove_all(tmp, ec);
      return make_error(ErrorCode::kIo, "cannot write {}", (tmp / kConfigFile).string());
    }
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) {
    fs::remove_all(tmp, ec);
    return make_error(ErrorCode::kIo, "cannot publish {}: {}", final_dir.string(), ec.message());
  }
  return read_adapter(final_dir);
}

}  // namespace loadstar::model
