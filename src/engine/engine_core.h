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
//
// LoRA adapters (vLLM's multi-LoRA serving, when LoraConfig::enabled): a
// request may name a registered adapter. A batch holds at most max_loras
// distinct adapters (a waiting request whose adapter would be one more is
// skipped, as vLLM's scheduler does); each adapter in a batch needs one of
// max_loras GPU slots, filled from a host cache of max_cpu_loras adapters
// or else read from disk (its bytes at load_bytes_per_s), least recently
// used ones evicted; the step costs more per distinct adapter; and an
// adapter's blocks hash apart from the base model's and other adapters'.
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
#include "kvevents/kv_events.h"

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

struct LoraConfig {
  bool enabled = false;
  uint32_t max_loras = 1;      // distinct adapters in one batch (GPU slots)
  uint32_t max_cpu_loras = 0;  // adapters kept in host memory; 0: max_loras
  uint32_t max_lora_rank = 16;
  double load_bytes_per_s = 2e9;     // disk to host memory
  double activate_s = 0.002;         // host memory to a GPU slot
  double per_adapter_step_s = 5e-4;  // each distinct adapter in a batch (its kernels)
};

// An adapter the engine may serve (vLLM's --lora-modules or
// /v1/load_lora_adapter); id 0 is the base model.
struct LoraAdapter {
  uint32_t id = 0;
  std::string name;
  uint32_t rank = 8;
  uint64_t bytes = 0;  // its weights: what a load from disk reads
};

// The adapters requests use now, by name (vLLM's vllm:lora_requests_info).
struct LoraUsage {
  std::vector<std::string> running, waiting;
  uint64_t loads = 0;        // adapters read from disk into host memory
  uint64_t activations = 0;  // adapters put into a GPU slot
};

// Prefill/decode disaggregation, as vLLM's KV connectors (NIXL) do it: a
// producer (the prefill role) keeps a finished request's blocks until a
// consumer has read them; a consumer (the decode role) receives a prompt's
// KV over a link instead of computing it. The transfer's time comes from
// its bytes: tokens x bytes_per_token over the link, transfers one after
// another on it (they share its bandwidth), plus its latency.
struct KvTransferConfig {
  // One token's KV: 2 (K and V) x layers x KV heads x head size x dtype
  // bytes; 128 KiB is Llama 3 8B's (32 x 8 x 128 x 2 x 2).
  uint64_t bytes_per_token = 131072;
  double bandwidth_bytes_per_s = 45e9;  // an RDMA NIC (400 Gb/s, ~90% achieved)
  double latency_s = 20e-6;
  // Held blocks nobody read are freed after this long (vLLM's
  // VLLM_NIXL_ABORT_REQUEST_TIMEOUT, 480 s).
  double hold_timeout_s = 480;
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
  // Record the prefix cache's changes as vLLM's KV events (take_kv_events).
  bool kv_events = false;
  uint64_t seed = 0;
  StepCostModel cost;
  OutputLengthModel output_length;
  LoraConfig lora;
  KvTransferConfig kv_transfer;

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
  uint32_t adapter = 0;  // a registered LoraAdapter's id; 0: the base model
  // Producer (vLLM's do_remote_decode): when it finishes, its blocks are
  // held for a consumer to read (release_held) instead of freed.
  bool hold_kv = false;
  // Consumer (do_remote_prefill): the KV of the prompt tokens this engine's
  // prefix cache lacks is transferred, not computed; the request waits for
  // it holding its blocks, then computes the last prompt token and decodes.
  bool remote_kv = false;
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
  // A hold_kv request's blocks, held for a consumer (set when it finishes).
  std::vector<BlockId> held_blocks;
  // A remote_kv request's transfer (set with its first token): prompt
  // tokens received and the model seconds from admission until they landed.
  uint32_t kv_received_tokens = 0;
  double kv_transfer_s = 0;
};

// What a producer held for one request, handed to the consumer that read it.
struct HeldKv {
  uint32_t prompt_tokens = 0;
  std::vector<BlockId> blocks;
  std::vector<BlockHash> block_hashes;  // of its full blocks, in order
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
  // Disaggregation: requests whose KV a consumer read from here and the
  // blocks still held for one; requests that received theirs, the tokens
  // and bytes, and the model seconds transfers took (admission to landing).
  uint64_t kv_sent_requests = 0;
  uint64_t kv_hold_expired = 0;
  uint32_t kv_held_blocks = 0;
  uint64_t kv_received_requests = 0;
  uint64_t kv_received_tokens = 0;
  uint64_t kv_received_bytes = 0;
  double kv_transfer_seconds = 0;
};

class EngineCore {
 public:
  explicit EngineCore(EngineConfig config);
  ~EngineCore();

  const EngineConfig& config() const { return config_; }

  // Checks a request against the model's limits (context length, max_tokens)
  // without queueing it. Depends only on the config, so any thread may call it.
  Status check_request(const NewRequest& request) const;
  // Registers an adapter. kInvalidArgument: LoRA not enabled, rank above
  // max_lora_rank, id 0, or the id or name taken.
  Status add_adapter(LoraAdapter adapter);
  // Unregisters it; kUnavailable while requests use it.
  Status remove_adapter(uint32_t id);
  const std::vector<LoraAdapter>& adapters() const { return adapters_; }
  LoraUsage lora_usage() const;
  // Queues a request that arrived at `now`. Fails as check_request does, or
  // when the waiting queue is full.
  Status add_request(NewRequest request, double now);
  // Drops a request wherever it is and frees its blocks. Unknown ids are
  // ignored (it may have finished in the meantime).
  void abort_request(RequestId id);
  // Work to step: running or waiting requests, or KV still in transfer.
  // Nothing may be computable until next_timed_event: a transfer landing,
  // or blocks held for a consumer expiring (which may let a waiting
  // request in).
  bool has_work() const { return !running_.empty() || !waiting_.empty() || !receiving_.empty(); }
  std::optional<double> next_timed_event() const;
  // Hands a held request's KV to the consumer that read it and frees its
  // blocks here. kNotFound: nothing held for `id` (read already, expired,
  // or never a hold_kv request).
  Result<HeldKv> release_held(RequestId id);
  // Schedules and "executes" one step starting at `now`.
  StepResult step(double now);
  EngineStats stats() const;
  // The prefix cache's changes since the last call, in order: full blocks
  // cached (BlockStored, with their tokens) and cached blocks evicted
  // (BlockRemoved). Empty unless config().kv_events.
  std::vector<kvevents::Event> take_kv_events();

 private:
  struct Request;
  bool allocate_slots(Request& r, uint32_t num_new_tokens);
  void cache_full_blocks(Request& r);
  void free_request_blocks(Request& r);
  void preempt(Request& r);
  TokenId sample(Request& r);
  uint32_t computed_prefix(Request& r);
  const LoraAdapter* adapter(uint32_t id) const;
  // Puts the batch's adapters into GPU slots; the seconds that took.
  double activate_adapters(const std::vector<uint32_t>& batch_adapters);

  EngineConfig config_;
  BlockPool pool_;
  std::unordered_map<RequestId, std::unique_ptr<Request>> requests_;
  void expire_held(double now);
  void finish_transfers(double now);

  std::vector<Request*> running_;  // admission order; the last is preempted first
  // Consumers admitted with their blocks, waiting for their KV to land.
  std::vector<Request*> receiving_;
  // Producers' finished requests whose blocks wait for a consumer.
  struct Held {
    HeldKv kv;
    double expires = 0;
  };
  std::unordered_map<RequestId, Held> held_;
  double link_free_at_ = 0;       // the KV link is busy with earlier transfers until then
  std::deque<Request*> waiting_;  // preempted requests go back to the front
  EngineStats stats_;
  std::vector<LoraAdapter> adapters_;
  std::vector<uint32_t> gpu_slots_;   // adapter ids, least recently used first
  std::vector<uint32_t> host_cache_;  // the same order
  uint64_t lora_loads_ = 0, lora_activations_ = 0;
  std::vector<kvevents::Event> kv_events_;
  std::vector<BlockHash> evicted_;  // by the pool, drained into kv_events_
};

}  // namespace loadstar::engine
