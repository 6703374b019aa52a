// A model directory as Hugging Face lays it out: config.json, and the weights
// as one model.safetensors or shards listed by model.safetensors.index.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "common/result.h"
#include "model/fast_loader.h"

namespace loadstar::model {

// The fields of config.json the simulator uses.
struct ModelConfig {
  std::string architecture;
  uint32_t hidden_size = 0;
  uint32_t num_hidden_layers = 0;
  uint32_t num_attention_heads = 0;
  uint32_t num_key_value_heads = 0;
  uint32_t vocab_size = 0;
  uint32_t max_position_embeddings = 0;
};

Result<ModelConfig> read_model_config(const std::filesystem::path& dir);

// The weight files of a model directory, in load order. Checks that the index
// (when there is one) names only files inside the directory.
Result<std::vector<std::filesystem::path>> weight_files(const std::filesystem::path& dir);

struct LoadReport {
  uint64_t files = 0;
  uint64_t tensors = 0;
  uint64_t bytes = 0;  // tensor bytes read
  double seconds = 0;
  uint64_t checksum = 0;  // XXH3 over all tensor bytes, in load order
  bool direct = false;    // read with O_DIRECT
};

// Reads every tensor of every weight file (headers validated first) through
// the fast loader (io_uring, O_DIRECT). `progress(bytes_so_far)` is called
// after each read.
Result<LoadReport> load_weights(const std::filesystem::path& dir,
                                const std::function<void(uint64_t)>& progress = {});
Result<LoadReport> load_weights(const std::filesystem::path& dir, const FastLoadOptions& options,
                                const std::function<void(uint64_t)>& progress = {});

struct SynthOptions {
  uint64_t size_bytes = 0;  // approximate total of tensor bytes
  uint64_t max_shard_bytes = 512ull << 20;
  std::filesystem::path output;
  std::string name = "synthetic-llama";
  uint32_t max_position_embeddings = 4096;
  uint64_t seed = 1;
};

struct SynthReport {
  uint64_t bytes = 0;
  uint32_t shards = 0;
  uint32_t tensors = 0;
  ModelConfig config;
};

// Writes a valid Llama-shaped sharded safetensors model of about `size_bytes`
// into `output`. It is built in a sibling temporary directory and renamed into
// place, so `output` either does not exist or holds the complete model.
Result<SynthReport> synth_model(const SynthOptions& options);

}  // namespace loadstar::model
