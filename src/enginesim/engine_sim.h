// `loadstar engine-sim`: a vLLM-compatible OpenAI server whose "GPU" is the
// engine core's step cost model. It reads its model's weights at start-up,
// answers /health with 503 until they are loaded, then serves.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "engine/engine_core.h"

namespace loadstar::enginesim {

struct EngineSimOptions {
  std::string model_dir;
  std::string served_model_name;  // default: the model directory's name
  std::string host = "127.0.0.1";
  uint16_t port = 8000;
  std::string port_file;  // when set, the bound port is written here once listening
  std::string profile;    // default: kDefaultProfile
  std::string profiles_file;
  uint32_t max_num_seqs = 256;
  uint32_t max_num_batched_tokens = 2048;
  std::optional<uint32_t> max_model_len;  // default: the model's max_position_embeddings
  uint32_t block_size = 16;
  std::optional<uint32_t> num_gpu_blocks_override;
  bool enable_prefix_caching = true;
  uint32_t max_waiting = 0;
  uint64_t seed = 0;
  double time_scale = 1.0;
  double output_len_median = 180;
  double output_len_sigma = 0.8;
  uint32_t embedding_dim = 384;
  uint64_t max_body_bytes = 8u << 20;
  double drain_timeout_s = 5;
  // An idle keep-alive connection is closed after this, as vLLM's server
  // (uvicorn's timeout_keep_alive, 5 s) does.
  double keep_alive_timeout_s = 5;
  // Fault injection, to test what runs above an engine (rollouts, retries,
  // outlier detection): this fraction of generation requests is answered
  // 500, and every generation request waits this long first (wall time).
  double fault_error_rate = 0;
  double fault_delay_s = 0;
  // LoRA adapters, as vLLM's flags: --enable-lora, --max-loras,
  // --max-lora-rank, --max-cpu-loras (default max_loras) and
  // --lora-modules NAME=PATH (or {"name","path"} JSON), served at start.
  // /v1/load_lora_adapter and /v1/unload_lora_adapter answer when
  // VLLM_ALLOW_RUNTIME_LORA_UPDATING is true, as in vLLM.
  bool enable_lora = false;
  uint32_t max_loras = 1;
  uint32_t max_lora_rank = 16;
  std::optional<uint32_t> max_cpu_loras;
  std::vector<std::string> lora_modules;
  // vLLM's --kv-events-config (JSON): publish the prefix cache's changes as
  // vLLM's KV events over ZeroMQ.
  std::string kv_events_config;
  // vLLM's --kv-transfer-config (JSON): a prefill or decode role of a
  // disaggregated pair (enginesim/kv_transfer.h).
  std::string kv_transfer_config;
  // A multi-node engine (enginesim/group.h), with vLLM's flag names.
  uint32_t nnodes = 1;
  uint32_t node_rank = 0;
  std::string master_addr;
  uint16_t master_port = 0;
  bool headless = false;
};

// One --lora-modules entry: NAME=PATH, or {"name": ..., "path": ...}.
struct LoraModule {
  std::string name, path;
};
Result<LoraModule> parse_lora_module(const std::string& text);

// The engine core's configuration from the options and the profile they
// name; `model_max_len` unless --max-model-len says otherwise.
Result<engine::EngineConfig> engine_config(const EngineSimOptions& options, uint32_t model_max_len);

// Runs until SIGINT/SIGTERM; returns the process exit code.
int run_engine_sim(const EngineSimOptions& options);

}  // namespace loadstar::enginesim
