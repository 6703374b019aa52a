// An engine's load as its /metrics page reports it. vLLM, SGLang and
// llama.cpp's server name the same signals differently; each is mapped here:
//   waiting:  vllm:num_requests_waiting | sglang:num_queue_reqs | llamacpp:requests_deferred
//   running:  vllm:num_requests_running | sglang:num_running_reqs | llamacpp:requests_processing
//   KV use:   vllm:kv_cache_usage_perc (V1) | vllm:gpu_cache_usage_perc (V0) |
//             sglang:token_usage | llamacpp:kv_cache_usage_ratio   (all 0..1)
//   KV size (tokens): vllm:cache_config_info's num_gpu_blocks x block_size |
//             sglang:max_total_num_tokens
// Samples of one metric with several label sets (several models) are summed.
// LoRA adapters: vllm:lora_requests_info, one series per set of adapters
// seen (labels max_lora, running_lora_adapters, waiting_lora_adapters, comma
// separated; the value the time it was last current): the newest is now's.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loadstar::gateway {

struct EngineLoad {
  std::optional<double> waiting;
  std::optional<double> running;
  std::optional<double> kv_usage;
  std::optional<double> kv_capacity_tokens;
  struct Loras {
    std::vector<std::string> running, waiting;
    uint32_t max_loras = 0;  // 0: not reported
  };
  std::optional<Loras> loras;
};

// Reads the Prometheus text exposition format; lines it does not know, and
// malformed ones, are skipped.
EngineLoad parse_engine_load(std::string_view metrics_text);

}  // namespace loadstar::gateway
