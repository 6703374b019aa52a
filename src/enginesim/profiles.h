// Model profiles: the step cost coefficients and KV-cache size of a model on
// a GPU. Built in, or read from a YAML file (--profiles-file).
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "engine/engine_core.h"

namespace loadstar::enginesim {

struct Profile {
  std::string name;
  std::string description;
  engine::StepCostModel cost;
  uint32_t num_gpu_blocks = 0;
  // KV bytes of one token that one GPU sends when its prefill is handed to a
  // decode engine: 2 (K, V) x layers x KV heads x head size x dtype bytes,
  // divided by the tensor-parallel size (each GPU sends its own heads over
  // its own link).
  uint64_t kv_bytes_per_token = 131072;
};

// 2 x layers x kv_heads x head_dim x dtype_bytes / tensor_parallel.
constexpr uint64_t kv_bytes_per_token(uint64_t layers, uint64_t kv_heads, uint64_t head_dim,
                                      uint64_t dtype_bytes, uint64_t tensor_parallel = 1) {
  return 2 * layers * kv_heads * head_dim * dtype_bytes / tensor_parallel;
}

const std::vector<Profile>& builtin_profiles();
inline constexpr const char* kDefaultProfile = "llama-3.1-8b-a100-80gb";

// Reads profiles from `path`:
//   profiles:
//     - name: my-gpu
//       base_ms: 6            # b0
//       prefill_token_us: 35  # b1
//       decode_seq_us: 40     # b2
//       context_token_ns: 50  # b3
//       num_gpu_blocks: 28000
//       kv_bytes_per_token: 131072  # optional; prefill/decode transfers
Result<std::vector<Profile>> load_profiles(const std::string& path);

// The profile called `name` among the built-in ones and those of `path`
// (when not empty; a file's profile overrides a built-in of the same name).
Result<Profile> find_profile(const std::string& name, const std::string& path);

}  // namespace loadstar::enginesim
