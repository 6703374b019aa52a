// A LoRA adapter as PEFT saves it and vLLM loads it: adapter_config.json
// (rank `r`, `lora_alpha`, `base_model_name_or_path`, `target_modules`) and
// adapter_model.safetensors holding lora_A/lora_B for each target module of
// each layer. Or as llama.cpp loads it: one GGUF file (gguf_adapter.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/result.h"

namespace loadstar::model {

struct AdapterInfo {
  std::filesystem::path dir;           // the directory, or the .gguf file
  std::string format = "safetensors";  // or gguf
  uint32_t rank = 0;
  double alpha = 0;
  std::string base_model;  // base_model_name_or_path, as the adapter names it
  std::vector<std::string> target_modules;
  uint64_t bytes = 0;  // the weights file
  uint32_t tensors = 0;
};

// Reads and checks an adapter directory: the config's fields, and the
// weights' safetensors header (every tensor a lora_A or lora_B); or a .gguf
// adapter file (read_gguf_adapter).
Result<AdapterInfo> read_adapter(const std::filesystem::path& dir);

// A llama.cpp LoRA adapter file: its rank (the lora_a tensors' second
// dimension), alpha, base architecture (as base_model) and adapted modules.
Result<AdapterInfo> read_gguf_adapter(const std::filesystem::path& file);

struct SynthAdapterOptions {
  std::filesystem::path output;
  uint32_t rank = 8;
  uint32_t hidden_size = 512;
  uint32_t layers = 2;
  std::string base_model;  // written as base_model_name_or_path
  uint64_t seed = 1;
};

// Writes a PEFT-shaped adapter (q_proj and v_proj of every layer, BF16)
// into `output`, built beside it and renamed into place.
Result<AdapterInfo> synth_adapter(const SynthAdapterOptions& options);

struct SynthGgufAdapterOptions {
  std::filesystem::path base;    // the GGUF model it adapts
  std::filesystem::path output;  // the .gguf file to write
  uint32_t rank = 8;
  uint64_t seed = 1;
};

// Writes a llama.cpp LoRA adapter of a GGUF model: attn_q and attn_v of
// every layer, F16, seeded random weights strong enough to change the
// model's answers.
Result<AdapterInfo> synth_gguf_adapter(const SynthGgufAdapterOptions& options);

}  // namespace loadstar::model
