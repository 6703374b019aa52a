// The engine simulator's core: vLLM's V1 scheduler and KV-cache manager driven
// step by step, with a step cost model in place of the GPU. Pure: no I/O, no
// threads, no clock of its own. The caller passes `now` (model seconds) to
// step(), waits out the returned duration however it likes (the HTTP shell in
// real time scaled by --time-scale, tests and simulations in virtual time) and
// then hands the outputs on.
//
// Each step (as vLLM's EngineCore.step):
//  1. running requests first, in order: each gets its remaining tokens (one
//     for a decoding request, a prefill chunk otherwise) within the step's
//     token budget; when the KV pool has no room, the most recently admitted
//     running request is preempted (blocks freed, recomputed later);
//  2. then waiting requests, in arrival order, while the budget, max_num_seqs
//     and KV blocks allow, each starting from its longest cached prefix;
//  3. the batch's cost is b0 + b1*prefill tokens + b2*decode sequences +
//     b3*context tokens; a request that has computed all its tokens samples
//     one more at the end of the step.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "engine/kv_cache.h"

namespace loadstar::engine {

using RequestId = uint64_t;

// Seconds per step as a function of the batch. Fitted per model and GPU; see
// docs/engine-sim.md for how the built-in profiles were derived.
struct StepCostModel {
  double base_s = 0.006;               // b0: weights read once per step, launch overhead
  double per_prefill_token_s = 60e-6;  // b1: compute-bound prefill
  double per_decode_seq_s = 80e-6;     // b2: sampling and per-sequence work
  double per_context_token_s = 65e-9;  // b3: attention reads the KV of every context token

  double step_seconds(uint64_t prefill_tokens, uint64_t decode_seqs,
                      uint64_t context_tokens) const {
    return base_s + per_prefill_token_s * prefill_tokens + per_decode_seq_s * decode_seqs +
           per_context_token_s * context_tokens;
  }
};

struct OutputLengthModel {
  // Without ignore_eos a request stops by itself after a log-normally
  // distributed number of tokens (its EOS), or at max_tokens if sooner.
  double median_tokens = 180;
  double sigma = 0.8;
};

struct EngineConfig {
  uint32_t block_size = 16;
  uint32_t num_gpu_blocks = 8192;
  uint32_t max_num_seqs = 256;
  uint32_t max_num_batched_tokens = 2048;
  uint32_t max_model_len = 4096;
  // Requests allowed to wait beyond those running; past it add_request fails
  // with kResourceExhausted. 0 means unbounded (vLLM's behaviour).
  uint32_t max_waiting = 0;
  bool enable_prefix_caching = true;
  uint64_t seed = 0;
  StepCostModel cost;
  OutputLengthModel output_length;

  // Checks the combination (e.g. one full-length request must fit in the pool).
  Status validate() const;
};

struct SamplingParams {
  // Tokens to generate at most; nullopt: up to the context limit.
  std::optional<uint32_t> max_tokens;
  uint32_t min_tokens = 0;
  bool ignore_eos = false;
  // Same seed and prompt, same output. nullopt: derived from the prompt.
  std::optional<uint64_t> seed;
};

struct NewRequest {
  RequestId id = 0;
  std::vector<TokenId> prompt;
  SamplingParams sampling;
  // A pooling (embedding) request: prefill only, finishes without a token.
  bool pooling = false;
};

enum class FinishReason : uint8_t { kNone, kStop, kLength, kAbort };
const char* finish_reason_name(FinishReason reason);

// What one step did to one request.
struct RequestOutput {
  RequestId id = 0;
  bool has_token = false;
  TokenId token = 0;
  FinishReason finish = FinishReason::kNone;
  uint32_t prompt_tokens = 0;
  uint32_t output_tokens = 0;  // generated so far, this token included
  uint32_t cached_tokens = 0;  // prompt tokens served from the prefix cache at admission
  double arrival_time = 0;
  double first_scheduled_time = 0;
  double first_token_time = 0;  // set once the first token exists
  double inter_token_s = 0;     // since the previous token; 0 for the first
};

struct StepResult {
  double start = 0;
  double duration = 0;  // model seconds; outputs happen at start + duration
  uint32_t num_prefill_tokens = 0;
  uint32_t num_decode_seqs = 0;
  uint64_t num_context_tokens = 0;
  std::vector<RequestOutput> outputs;
  bool empty() const { return outputs.empty() && num_prefill_tokens == 0 && num_decode_seqs == 0; }
};

// Cumulative counters and current gauges, as vLLM's SchedulerStats.
struct EngineStats {
  uint32_t num_running = 0;
  uint32_t num_waiting = 0;
  double kv_cache_usage = 0;
  uint64_t prefix_cache_queries = 0;  // tokens looked up
  uint64_t prefix_cache_hits = 0;     // tokens found
  uint64_t num_preemptions = 0;
  uint64_t prompt_tokens = 0;  // prompt tokens of admitted requests
  uint64_t generation_tokens = 0;
  uint64_t num_steps = 0;
};

class EngineCore {
 public:
  explicit EngineCore(EngineConfig config);
  ~EngineCore();

  const EngineConfig& config() const { return config_; }

  // Checks a request against the model's limits (context length, max_tokens)
  // without queueing it. Depends only on the config, so any thread may call it.
  Status check_request(const NewRequest& request) const;
  // Queues a request that arrived at `now`. Fails as check_request does, or
  // when the waiting queue is full.
  Status add_request(NewRequest request, double now);
  // Drops a request wherever it is and frees its blocks. Unknown ids are
  // ignored (it may have finished in the meantime).
  void abort_request(RequestId id);
  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  // Schedules and "executes" one step starting at `now`.
  StepResult step(double now);
  EngineStats stats() const;

 private:
  struct Request;
  bool allocate_slots(Request& r, uint32_t num_new_tokens);
  void cache_full_blocks(Request& r);
  void free_request_blocks(Request& r);
  void preempt(Request& r);
  TokenId sample(Request& r);
  uint32_t computed_prefix(Request& r);

  EngineConfig config_;
  BlockPool pool_;
  std::unordered_map<RequestId, std::unique_ptr<Request>> requests_;
  std::vector<Request*> running_;  // admission order; the last is preempted first
  std::deque<Request*> waiting_;   // preempted requests go back to the front
  EngineStats stats_;
};

}  // namespace loadstar::engine
