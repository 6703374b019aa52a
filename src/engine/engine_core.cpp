#include "engine/engine_core.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include <xxhash.h>

#include "common/check.h"

namespace loadstar::engine {

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kNone:
      break;
  }
  return "";
}

Status EngineConfig::validate() const {
  if (block_size == 0)
    return make_error(ErrorCode::kInvalidArgument, "block_size must be positive");
  if (max_num_seqs == 0)
    return make_error(ErrorCode::kInvalidArgument, "max_num_seqs must be positive");
  if (max_num_batched_tokens == 0)
    return make_error(ErrorCode::kInvalidArgument, "max_num_batched_tokens must be positive");
  if (max_model_len < 2)
    return make_error(ErrorCode::kInvalidArgument, "max_model_len must be at least 2");
  uint64_t capacity = static_cast<uint64_t>(num_gpu_blocks) * block_size;
  if (capacity < max_model_len) {
    // As vLLM at start-up: one request of full length must fit in the pool.
    return make_error(
        ErrorCode::kInvalidArgument,
        "the KV cache holds {} tokens ({} blocks of {}), fewer than max_model_len {}; "
        "raise num_gpu_blocks or lower max_model_len",
        capacity, num_gpu_blocks, block_size, max_model_len);
  }
  if (cost.base_s < 0 || cost.per_prefill_token_s < 0 || cost.per_decode_seq_s < 0 ||
      cost.per_context_token_s < 0)
    return make_error(ErrorCode::kInvalidArgument, "step cost coefficients must not be negative");
  if (kv_transfer.bytes_per_token == 0 || !(kv_transfer.bandwidth_bytes_per_s > 0) ||
      kv_transfer.latency_s < 0 || !(kv_transfer.hold_timeout_s > 0))
    return make_error(ErrorCode::kInvalidArgument,
                      "KV transfer: bytes per token and bandwidth must be positive, latency not "
                      "negative, the hold timeout positive");
  if (lora.enabled) {
    if (lora.max_loras == 0)
      return make_error(ErrorCode::kInvalidArgument, "max_loras must be at least 1");
    if (lora.max_cpu_loras != 0 && lora.max_cpu_loras < lora.max_loras)
      return make_error(ErrorCode::kInvalidArgument,
                        "max_cpu_loras ({}) must be at least max_loras ({})", lora.max_cpu_loras,
                        lora.max_loras);
    if (lora.max_lora_rank == 0)
      return make_error(ErrorCode::kInvalidArgument, "max_lora_rank must be positive");
    if (lora.load_bytes_per_s <= 0 || lora.activate_s < 0 || lora.per_adapter_step_s < 0)
      return make_error(ErrorCode::kInvalidArgument, "LoRA cost parameters must be positive");
  }
  return ok_status();
}

namespace {

// splitmix64: small, fast, and the same everywhere.
uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

double uniform01(uint64_t& state) {
  return (next_random(state) >> 11) * 0x1.0p-53;
}

}  // namespace

struct EngineCore::Request {
  RequestId id = 0;
  std::vector<TokenId> tokens;  // the prompt, then every generated token
  uint32_t num_prompt = 0;
  uint32_t num_computed = 0;  // tokens whose KV is in the cache
  uint32_t max_tokens = 0;
  uint32_t min_tokens = 0;
  uint32_t eos_at = UINT32_MAX;  // the output count at which the model emits EOS
  bool pooling = false;
  uint32_t adapter = 0;
  BlockHash root = 0;  // the first block's parent: the adapter's own, so its blocks hash apart
  uint64_t rng = 0;
  std::vector<BlockId> blocks;
  std::vector<BlockHash> block_hashes;  // one per full block of `tokens`
  uint32_t num_cached_blocks = 0;       // leading blocks registered in the prefix cache
  uint32_t cached_tokens = 0;           // prefix hit at first admission
  double arrival = 0;
  double first_scheduled = -1;
  double first_token = -1;
  double last_token = -1;
  bool hold_kv = false;    // a producer's: its blocks are held when it finishes
  bool remote_kv = false;  // a consumer's, until admitted (or preempted)
  double kv_ready = 0;     // a consumer's: when its transferred KV lands
  double kv_admitted = 0;
  uint32_t kv_tokens = 0;  // prompt tokens transferred (not computed) here

  uint32_t num_tokens() const { return static_cast<uint32_t>(tokens.size()); }
  uint32_t num_output() const { return num_tokens() - num_prompt; }

  void update_block_hashes(uint32_t block_size) {
    while ((block_hashes.size() + 1) * block_size <= tokens.size()) {
      size_t i = block_hashes.size();
      BlockHash parent = i == 0 ? root : block_hashes[i - 1];
      block_hashes.push_back(
          hash_block(parent, std::span<const TokenId>(tokens).subspan(i * block_size, block_size)));
    }
  }
};

EngineCore::EngineCore(EngineConfig config)
    : config_(std::move(config)), pool_(config_.num_gpu_blocks, config_.enable_prefix_caching) {
  LS_CHECK_MSG(config_.validate().ok(), "EngineConfig must be validated before use");
}

EngineCore::~EngineCore() = default;

namespace {
// max_tokens when the request leaves it open: the rest of the context.
uint32_t effective_max_tokens(const NewRequest& request, uint32_t limit) {
  const auto prompt_len = static_cast<uint32_t>(request.prompt.size());
  return request.sampling.max_tokens.value_or(prompt_len < limit ? limit - prompt_len : 1);
}
}  // namespace

const LoraAdapter* EngineCore::adapter(uint32_t id) const {
  for (const auto& a : adapters_)
    if (a.id == id) return &a;
  return nullptr;
}

Status EngineCore::add_adapter(LoraAdapter a) {
  if (!config_.lora.enabled)
    return make_error(ErrorCode::kInvalidArgument, "LoRA is not enabled (--enable-lora)");
  if (a.id == 0) return make_error(ErrorCode::kInvalidArgument, "adapter id 0 is the base model");
  if (a.rank == 0 || a.rank > config_.lora.max_lora_rank)
    return make_error(ErrorCode::kInvalidArgument, "LoRA rank {} is greater than max_lora_rank {}.",
                      a.rank, config_.lora.max_lora_rank);
  for (const auto& other : adapters_)
    if (other.id == a.id || other.name == a.name)
      return make_error(ErrorCode::kInvalidArgument,
                        "The lora adapter '{}' has already been loaded.", a.name);
  adapters_.push_back(std::move(a));
  return ok_status();
}

Status EngineCore::remove_adapter(uint32_t id) {
  auto it = std::find_if(adapters_.begin(), adapters_.end(),
                         [id](const LoraAdapter& a) { return a.id == id; });
  if (it == adapters_.end()) return make_error(ErrorCode::kNotFound, "no adapter with id {}", id);
  size_t users = 0;
  for (const auto& [rid, r] : requests_) users += r->adapter == id;
  if (users > 0)
    return make_error(ErrorCode::kUnavailable, "LoRA adapter '{}' is used by {} requests", it->name,
                      users);
  std::erase(gpu_slots_, id);
  std::erase(host_cache_, id);
  adapters_.erase(it);
  return ok_status();
}

LoraUsage EngineCore::lora_usage() const {
  LoraUsage out;
  auto add = [this](std::vector<std::string>& names, uint32_t id) {
    const LoraAdapter* a = id ? adapter(id) : nullptr;
    if (a && std::find(names.begin(), names.end(), a->name) == names.end())
      names.push_back(a->name);
  };
  for (const Request* r : running_) add(out.running, r->adapter);
  for (const Request* r : waiting_) add(out.waiting, r->adapter);
  out.loads = lora_loads_;
  out.activations = lora_activations_;
  return out;
}

double EngineCore::activate_adapters(const std::vector<uint32_t>& batch_adapters) {
  const LoraConfig& lc = config_.lora;
  const size_t host_capacity = lc.max_cpu_loras ? lc.max_cpu_loras : lc.max_loras;
  double seconds = 0;
  // Most recently used last; an evicted slot is never one this batch needs
  // (the scheduler admitted at most max_loras distinct adapters).
  auto use = [](std::vector<uint32_t>& lru, uint32_t id) {
    std::erase(lru, id);
    lru.push_back(id);
  };
  for (uint32_t id : batch_adapters) {
    if (std::find(gpu_slots_.begin(), gpu_slots_.end(), id) != gpu_slots_.end()) {
      use(gpu_slots_, id);
      continue;
    }
    if (std::find(host_cache_.begin(), host_cache_.end(), id) == host_cache_.end()) {
      const LoraAdapter* a = adapter(id);
      seconds += a ? static_cast<double>(a->bytes) / lc.load_bytes_per_s : 0;
      ++lora_loads_;
      if (host_cache_.size() >= host_capacity) host_cache_.erase(host_cache_.begin());
    }
    use(host_cache_, id);
    seconds += lc.activate_s;
    ++lora_activations_;
    if (gpu_slots_.size() >= lc.max_loras) {
      auto victim = std::find_if(gpu_slots_.begin(), gpu_slots_.end(), [&](uint32_t slot) {
        return std::find(batch_adapters.begin(), batch_adapters.end(), slot) ==
               batch_adapters.end();
      });
      if (victim != gpu_slots_.end()) gpu_slots_.erase(victim);
    }
    gpu_slots_.push_back(id);
  }
  return seconds;
}

Status EngineCore::check_request(const NewRequest& request) const {
  const auto prompt_len = static_cast<uint32_t>(request.prompt.size());
  if (prompt_len == 0) return make_error(ErrorCode::kInvalidArgument, "the prompt is empty");
  const uint32_t limit = config_.max_model_len;
  if (request.pooling) {
    if (prompt_len > limit) {
      return make_error(
          ErrorCode::kOutOfRange,
          "This model's maximum context length is {} tokens. However, you requested {} "
          "tokens in the input for embedding generation. Please reduce the length of "
          "the input.",
          limit, prompt_len);
    }
    return ok_status();
  }
  const uint32_t asked = effective_max_tokens(request, limit);
  if (prompt_len >= limit || static_cast<uint64_t>(prompt_len) + asked > limit) {
    return make_error(ErrorCode::kOutOfRange,
                      "This model's maximum context length is {} tokens. However, you requested {} "
                      "tokens ({} in the messages, {} in the completion). Please reduce the length "
                      "of the messages or completion.",
                      limit, static_cast<uint64_t>(prompt_len) + asked, prompt_len, asked);
  }
  if (asked == 0) return make_error(ErrorCode::kInvalidArgument, "max_tokens must be at least 1");
  return ok_status();
}

Status EngineCore::add_request(NewRequest request, double now) {
  LS_RETURN_IF_ERROR(check_request(request));
  if (request.adapter != 0 && !adapter(request.adapter))
    return make_error(ErrorCode::kNotFound, "the LoRA adapter of this request was unloaded");
  if (requests_.count(request.id))
    return make_error(ErrorCode::kInvalidArgument, "request id {} is already in use", request.id);
  const auto prompt_len = static_cast<uint32_t>(request.prompt.size());
  const uint32_t max_tokens =
      request.pooling ? 0 : effective_max_tokens(request, config_.max_model_len);
  if (config_.max_waiting > 0 && waiting_.size() >= config_.max_waiting) {
    return make_error(ErrorCode::kResourceExhausted,
                      "the engine's waiting queue is full ({} requests); retry later",
                      config_.max_waiting);
  }

  auto r = std::make_unique<Request>();
  r->id = request.id;
  r->tokens = std::move(request.prompt);
  r->num_prompt = prompt_len;
  r->max_tokens = max_tokens;
  r->min_tokens = request.sampling.min_tokens;
  r->pooling = request.pooling;
  r->adapter = request.adapter;
  r->hold_kv = request.hold_kv && !request.pooling;
  r->remote_kv = request.remote_kv && !request.pooling;
  if (const LoraAdapter* a = r->adapter ? adapter(r->adapter) : nullptr)
    r->root = XXH3_64bits(a->name.data(), a->name.size());
  r->arrival = now;
  r->rng = request.sampling.seed
               ? *request.sampling.seed ^ 0x5bd1e995ULL
               : XXH3_64bits_withSeed(r->tokens.data(), r->tokens.size() * sizeof(TokenId),
                                      config_.seed);
  if (!request.sampling.ignore_eos && !request.pooling) {
    // Box-Muller: a log-normal natural length, drawn before any token so that
    // the whole output depends on the seed alone.
    double u1 = std::max(uniform01(r->rng), 1e-12), u2 = uniform01(r->rng);
    double normal = std::sqrt(-2 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2);
    double length =
        config_.output_length.median_tokens * std::exp(config_.output_length.sigma * normal);
    r->eos_at = std::max<uint32_t>({1, r->min_tokens, static_cast<uint32_t>(std::lround(length))});
  }
  r->update_block_hashes(config_.block_size);
  waiting_.push_back(r.get());
  requests_.emplace(r->id, std::move(r));
  return ok_status();
}

void EngineCore::abort_request(RequestId id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  Request* r = it->second.get();
  if (auto rit = std::find(running_.begin(), running_.end(), r); rit != running_.end()) {
    running_.erase(rit);
  } else if (auto wit = std::find(waiting_.begin(), waiting_.end(), r); wit != waiting_.end()) {
    waiting_.erase(wit);
  } else {
    std::erase(receiving_, r);
  }
  free_request_blocks(*r);
  requests_.erase(it);
}

std::optional<double> EngineCore::next_timed_event() const {
  std::optional<double> first;
  auto consider = [&first](double at) {
    if (!first || at < *first) first = at;
  };
  for (const Request* r : receiving_) consider(r->kv_ready);
  // Held blocks expire at the next step anyway; only a waiting request
  // that finds no room needs the step to come when they do.
  if (!waiting_.empty())
    for (const auto& [id, h] : held_) consider(h.expires);
  return first;
}

Result<HeldKv> EngineCore::release_held(RequestId id) {
  auto it = held_.find(id);
  if (it == held_.end())
    return make_error(ErrorCode::kNotFound,
                      "no KV is held for request {} (read already, or held past {} s)", id,
                      config_.kv_transfer.hold_timeout_s);
  HeldKv kv = std::move(it->second.kv);
  held_.erase(it);
  std::vector<BlockId> tail_first(kv.blocks.rbegin(), kv.blocks.rend());
  pool_.release(tail_first);
  ++stats_.kv_sent_requests;
  return kv;
}

void EngineCore::expire_held(double now) {
  for (auto it = held_.begin(); it != held_.end();) {
    if (it->second.expires > now) {
      ++it;
      continue;
    }
    std::vector<BlockId> tail_first(it->second.kv.blocks.rbegin(), it->second.kv.blocks.rend());
    pool_.release(tail_first);
    ++stats_.kv_hold_expired;
    it = held_.erase(it);
  }
}

void EngineCore::finish_transfers(double now) {
  for (auto it = receiving_.begin(); it != receiving_.end();) {
    Request* r = *it;
    if (r->kv_ready > now) {
      ++it;
      continue;
    }
    // The prompt's KV is here but for its last token, which is computed to
    // get logits (as a full prefix-cache hit): a one-token step, then decode.
    r->num_computed = r->num_tokens() - 1;
    cache_full_blocks(*r);
    ++stats_.kv_received_requests;
    stats_.kv_received_tokens += r->kv_tokens;
    stats_.kv_received_bytes += r->kv_tokens * config_.kv_transfer.bytes_per_token;
    stats_.kv_transfer_seconds += r->kv_ready - r->kv_admitted;
    running_.push_back(r);
    it = receiving_.erase(it);
  }
}

void EngineCore::free_request_blocks(Request& r) {
  // Reverse order: the tail of a sequence is the least likely to be shared,
  // so it should be evicted first.
  std::reverse(r.blocks.begin(), r.blocks.end());
  pool_.release(r.blocks);
  r.blocks.clear();
  r.num_cached_blocks = 0;
}

void EngineCore::preempt(Request& r) {
  free_request_blocks(r);
  r.remote_kv = false;  // its transferred KV is gone: recomputed here
  r.num_computed = 0;   // recompute from scratch (the prefix cache may still help)
  waiting_.push_front(&r);
  ++stats_.num_preemptions;
}

uint32_t EngineCore::computed_prefix(Request& r) {
  if (!config_.enable_prefix_caching) return 0;
  // At least one token must be computed to produce logits, so a full hit
  // stops one block short (vLLM: max_cache_hit_length = num_tokens - 1).
  const uint32_t max_blocks = (r.num_tokens() - 1) / config_.block_size;
  uint32_t hits = 0;
  while (hits < max_blocks && hits < r.block_hashes.size()) {
    auto block = pool_.lookup(r.block_hashes[hits]);
    if (!block) break;
    ++hits;
  }
  return hits;
}

bool EngineCore::allocate_slots(Request& r, uint32_t num_new_tokens) {
  const uint32_t bs = config_.block_size;
  const uint32_t total = r.num_computed + num_new_tokens;
  const uint32_t needed = (total + bs - 1) / bs;
  if (needed <= r.blocks.size()) return true;
  const uint32_t to_allocate = needed - static_cast<uint32_t>(r.blocks.size());
  if (pool_.num_free() < to_allocate) return false;
  pool_.allocate(to_allocate, r.blocks, config_.kv_events ? &evicted_ : nullptr);
  if (!evicted_.empty()) {
    kv_events_.emplace_back(
        kvevents::BlockRemoved{.block_hashes = std::move(evicted_), .medium = "GPU"});
    evicted_.clear();
  }
  return true;
}

void EngineCore::cache_full_blocks(Request& r) {
  const uint32_t full = std::min<uint32_t>(r.num_computed / config_.block_size,
                                           static_cast<uint32_t>(r.block_hashes.size()));
  for (uint32_t i = r.num_cached_blocks; i < full; ++i) pool_.cache(r.blocks[i], r.block_hashes[i]);
  if (config_.kv_events && config_.enable_prefix_caching && full > r.num_cached_blocks) {
    const uint32_t bs = config_.block_size, first = r.num_cached_blocks;
    kvevents::BlockStored e;
    e.block_hashes.assign(r.block_hashes.begin() + first, r.block_hashes.begin() + full);
    if (first > 0) e.parent_block_hash = r.block_hashes[first - 1];
    e.token_ids.assign(r.tokens.begin() + first * bs, r.tokens.begin() + full * bs);
    e.block_size = bs;
    e.medium = "GPU";
    if (const LoraAdapter* a = r.adapter ? adapter(r.adapter) : nullptr) {
      e.lora_id = a->id;
      e.lora_name = a->name;
    }
    kv_events_.emplace_back(std::move(e));
  }
  r.num_cached_blocks = std::max(r.num_cached_blocks, full);
}

std::vector<kvevents::Event> EngineCore::take_kv_events() {
  return std::exchange(kv_events_, {});
}

TokenId EngineCore::sample(Request& r) {
  if (r.num_output() + 1 >= r.eos_at) return tokenizer::kEos;
  uint64_t x = next_random(r.rng);
  // Mostly words, now and then punctuation, so the text reads like text.
  if (x % 100 < 8) return tokenizer::kFirstPunctuation + static_cast<TokenId>((x >> 8) % 2);
  if (x % 100 < 9) return tokenizer::kFirstPunctuation + 6;  // newline
  return tokenizer::kFirstWord +
         static_cast<TokenId>((x >> 16) % (tokenizer::kVocabSize - tokenizer::kFirstWord));
}

StepResult EngineCore::step(double now) {
  StepResult result;
  result.start = now;
  struct Scheduled {
    Request* r;
    uint32_t num_new;
  };
  std::vector<Scheduled> batch;
  batch.reserve(running_.size() + 8);
  if (!held_.empty()) expire_held(now);
  if (!receiving_.empty()) finish_transfers(now);
  uint32_t budget = config_.max_num_batched_tokens;
  bool preempted = false;

  // 1. Running requests, oldest first; make room by preempting the newest.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Request* r = running_[i];
    const uint32_t num_new = std::min(r->num_tokens() - r->num_computed, budget);
    LS_CHECK(num_new > 0);
    bool scheduled = false;
    while (true) {
      if (allocate_slots(*r, num_new)) {
        scheduled = true;
        break;
      }
      Request* victim = running_.back();
      running_.pop_back();
      preempt(*victim);
      preempted = true;
      if (victim == r) break;
    }
    if (!scheduled) break;
    batch.push_back({r, num_new});
    budget -= num_new;
    ++i;
  }

  // The adapters running requests use: a waiting request whose adapter
  // would be one more than max_loras is skipped, and stays waiting (as
  // vLLM's scheduler does).
  std::vector<uint32_t> running_adapters;
  auto note_adapter = [](std::vector<uint32_t>& ids, uint32_t id) {
    if (id && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  for (const Request* r : running_) note_adapter(running_adapters, r->adapter);

  // 2. Waiting requests, unless this step had to preempt (as vLLM).
  for (size_t w = 0; !preempted && w < waiting_.size() && budget > 0 &&
                     running_.size() + receiving_.size() < config_.max_num_seqs;) {
    Request* r = waiting_[w];
    if (r->adapter &&
        std::find(running_adapters.begin(), running_adapters.end(), r->adapter) ==
            running_adapters.end() &&
        running_adapters.size() >= config_.lora.max_loras) {
      ++w;
      continue;
    }
    const uint32_t hit_blocks = computed_prefix(*r);
    const uint32_t hit_tokens = hit_blocks * config_.block_size;
    const uint32_t num_new = std::min(r->num_tokens() - hit_tokens, budget);
    // Blocks found in the cache are reused; those sitting in the free queue
    // stop being free, so count them before deciding whether the rest fits.
    uint32_t evictable_hits = 0;
    for (uint32_t b = 0; b < hit_blocks; ++b)
      if (pool_.is_free(*pool_.lookup(r->block_hashes[b]))) ++evictable_hits;
    const uint32_t bs = config_.block_size;
    // A consumer holds blocks for its whole prompt now: the part the cache
    // lacks arrives over the link, using none of the step's compute.
    const bool receive = r->remote_kv;
    const uint32_t to_allocate =
        (hit_tokens + (receive ? r->num_tokens() - hit_tokens : num_new) + bs - 1) / bs -
        hit_blocks;
    if (pool_.num_free() < evictable_hits + to_allocate) break;
    for (uint32_t b = 0; b < hit_blocks; ++b) {
      BlockId id = *pool_.lookup(r->block_hashes[b]);
      pool_.touch(id);
      r->blocks.push_back(id);
    }
    r->num_computed = hit_tokens;
    r->num_cached_blocks = hit_blocks;
    LS_CHECK(allocate_slots(*r, receive ? r->num_tokens() - hit_tokens : num_new));
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(w));
    note_adapter(running_adapters, r->adapter);
    stats_.prefix_cache_queries += r->num_tokens();
    stats_.prefix_cache_hits += hit_tokens;
    if (r->first_scheduled < 0) {
      r->first_scheduled = now;
      r->cached_tokens = hit_tokens;
      stats_.prompt_tokens += r->num_prompt;
    }
    if (receive) {
      r->remote_kv = false;
      r->kv_tokens = r->num_prompt - hit_tokens;
      const KvTransferConfig& link = config_.kv_transfer;
      const double start = std::max(now, link_free_at_);
      link_free_at_ = start + static_cast<double>(r->kv_tokens) *
                                  static_cast<double>(link.bytes_per_token) /
                                  link.bandwidth_bytes_per_s;
      r->kv_ready = link_free_at_ + link.latency_s;
      r->kv_admitted = now;
      receiving_.push_back(r);
      continue;
    }
    running_.push_back(r);
    batch.push_back({r, num_new});
    budget -= num_new;
  }

  // 3. "Execute": cost of the batch, then advance every scheduled request.
  for (const Scheduled& s : batch) {
    const Request& r = *s.r;
    const bool decode =
        s.num_new == 1 && r.num_output() > 0 && r.num_computed + 1 == r.num_tokens();
    if (decode)
      ++result.num_decode_seqs;
    else
      result.num_prefill_tokens += s.num_new;
    result.num_context_tokens += r.num_computed + s.num_new;
  }
  if (batch.empty()) return result;
  result.duration = config_.cost.step_seconds(result.num_prefill_tokens, result.num_decode_seqs,
                                              result.num_context_tokens);
  std::vector<uint32_t> batch_adapters;
  for (const Scheduled& sc : batch) note_adapter(batch_adapters, sc.r->adapter);
  if (!batch_adapters.empty())
    result.duration += activate_adapters(batch_adapters) +
                       config_.lora.per_adapter_step_s * static_cast<double>(batch_adapters.size());
  const double end = now + result.duration;
  ++stats_.num_steps;

  std::vector<Request*> finished;
  for (const Scheduled& s : batch) {
    Request& r = *s.r;
    r.num_computed += s.num_new;
    cache_full_blocks(r);
    if (r.num_computed < r.num_tokens()) continue;  // a prefill chunk; more to come
    RequestOutput out;
    out.id = r.id;
    out.prompt_tokens = r.num_prompt;
    out.cached_tokens = r.cached_tokens;
    out.arrival_time = r.arrival;
    out.first_scheduled_time = r.first_scheduled;
    if (r.pooling) {
      out.finish = FinishReason::kStop;
      out.first_token_time = end;
    } else {
      const TokenId token = sample(r);
      r.tokens.push_back(token);
      r.update_block_hashes(config_.block_size);
      ++stats_.generation_tokens;
      out.has_token = true;
      out.token = token;
      out.output_tokens = r.num_output();
      if (r.first_token < 0) {
        r.first_token = end;
        if (r.kv_tokens > 0) {
          out.kv_received_tokens = r.kv_tokens;
          out.kv_transfer_s = r.kv_ready - r.kv_admitted;
        }
      } else {
        out.inter_token_s = end - r.last_token;
      }
      r.last_token = end;
      out.first_token_time = r.first_token;
      if (token == tokenizer::kEos)
        out.finish = FinishReason::kStop;
      else if (r.num_output() >= r.max_tokens)
        out.finish = FinishReason::kLength;
    }
    if (out.finish != FinishReason::kNone) {
      finished.push_back(&r);
      if (r.hold_kv) out.held_blocks = r.blocks;
    }
    result.outputs.push_back(out);
  }
  if (!finished.empty()) {
    std::erase_if(running_, [&](Request* r) {
      return std::find(finished.begin(), finished.end(), r) != finished.end();
    });
    for (Request* r : finished) {
      if (r->hold_kv) {
        // Held for the consumer, in order; read (release_held) or expired.
        Held& h = held_[r->id];
        h.kv.prompt_tokens = r->num_prompt;
        h.kv.blocks = std::exchange(r->blocks, {});
        const size_t full =
            std::min<size_t>(r->num_prompt / config_.block_size, r->block_hashes.size());
        h.kv.block_hashes.assign(r->block_hashes.begin(),
                                 r->block_hashes.begin() + static_cast<std::ptrdiff_t>(full));
        h.expires = end + config_.kv_transfer.hold_timeout_s;
      }
      free_request_blocks(*r);
      requests_.erase(r->id);
    }
  }
  return result;
}

EngineStats EngineCore::stats() const {
  EngineStats s = stats_;
  s.num_running = static_cast<uint32_t>(running_.size());
  // Requests waiting for their KV to land count as waiting, as in vLLM
  // (WAITING_FOR_REMOTE_KVS).
  s.num_waiting = static_cast<uint32_t>(waiting_.size() + receiving_.size());
  for (const auto& [id, h] : held_) s.kv_held_blocks += static_cast<uint32_t>(h.kv.blocks.size());
  s.kv_cache_usage = pool_.usage();
  return s;
}

}  // namespace loadstar::engine
