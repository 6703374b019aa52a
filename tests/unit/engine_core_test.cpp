// Behaviour of the engine core under a virtual clock: the properties that make
// the simulator behave like vLLM under load.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <map>
#include <numeric>

#include "engine/engine_core.h"

namespace loadstar::engine {
namespace {

struct Outcome {
  double arrival = 0;
  double ttft = -1;
  double finished = -1;
  std::vector<TokenId> tokens;
  FinishReason finish = FinishReason::kNone;
  uint32_t cached = 0;
  std::vector<BlockId> held_blocks;
  uint32_t kv_received = 0;
  double kv_transfer_s = 0;
};

// Drives an EngineCore in virtual time, as the real loop does in wall time.
class Sim {
 public:
  explicit Sim(EngineConfig config) : core_(config) {}

  void add(RequestId id, uint32_t prompt_len, uint32_t max_tokens, bool ignore_eos = true,
           uint32_t prompt_seed = 0, bool hold_kv = false, bool remote_kv = false) {
    NewRequest r;
    r.hold_kv = hold_kv;
    r.remote_kv = remote_kv;
    r.id = id;
    for (uint32_t i = 0; i < prompt_len; ++i)
      r.prompt.push_back(100 + (i * 7 + prompt_seed * 13) % 5000);
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = ignore_eos;
    ASSERT_TRUE(core_.add_request(std::move(r), now_).ok());
    out_[id].arrival = now_;
  }
  void run() {
    while (core_.has_work()) step();
  }
  void step() {
    StepResult s = core_.step(now_);
    now_ += s.duration;
    // Nothing computable: time passes until a transfer lands (as the loop waits).
    if (s.empty() && s.outputs.empty())
      if (auto at = core_.next_timed_event()) now_ = std::max(now_, *at);
    for (const RequestOutput& o : s.outputs) {
      Outcome& oc = out_[o.id];
      if (o.has_token) {
        if (oc.ttft < 0) oc.ttft = now_ - oc.arrival;
        oc.tokens.push_back(o.token);
      }
      oc.cached = o.cached_tokens;
      if (!o.held_blocks.empty()) oc.held_blocks = o.held_blocks;
      if (o.kv_received_tokens) {
        oc.kv_received = o.kv_received_tokens;
        oc.kv_transfer_s = o.kv_transfer_s;
      }
      if (o.finish != FinishReason::kNone) {
        oc.finish = o.finish;
        oc.finished = now_;
      }
    }
  }
  EngineCore& core() { return core_; }
  Outcome& operator[](RequestId id) { return out_[id]; }
  double now() const { return now_; }
  void advance(double seconds) { now_ += seconds; }

 private:
  EngineCore core_;
  double now_ = 0;
  std::map<RequestId, Outcome> out_;
};

EngineConfig small_config() {
  EngineConfig c;
  c.num_gpu_blocks = 4096;
  c.max_model_len = 8192;
  return c;
}

TEST(EngineCore, TtftGrowsWithPromptLength) {
  double previous = 0;
  for (uint32_t len : {64u, 512u, 2048u, 6000u}) {
    Sim sim(small_config());
    sim.add(1, len, 4);
    sim.run();
    EXPECT_GT(sim[1].ttft, previous) << "prompt " << len;
    previous = sim[1].ttft;
  }
}

TEST(EngineCore, LongPromptIsPrefilledInChunks) {
  EngineConfig c = small_config();
  c.max_num_batched_tokens = 2048;
  Sim sim(c);
  sim.add(1, 5000, 1);
  int steps = 0;
  while (sim[1].tokens.empty()) {
    sim.step();
    ++steps;
  }
  EXPECT_EQ(steps, 3);  // 2048 + 2048 + 904
}

TEST(EngineCore, TtftGrowsWithQueueDepth) {
  double previous = 0;
  for (uint32_t depth : {1u, 8u, 32u}) {
    Sim sim(small_config());
    for (uint32_t i = 0; i < depth; ++i) sim.add(i + 1, 1000, 16, true, i);
    sim.run();
    double mean = 0;
    for (uint32_t i = 0; i < depth; ++i) mean += sim[i + 1].ttft;
    mean /= depth;
    EXPECT_GT(mean, previous * 1.5) << "depth " << depth;
    previous = mean;
  }
}

TEST(EngineCore, RepeatedPrefixHitsTheCacheAndLowersTtft) {
  Sim sim(small_config());
  sim.add(1, 2000, 4);
  sim.run();
  const uint64_t hits_before = sim.core().stats().prefix_cache_hits;
  sim.add(2, 2000, 4);  // the same prompt
  sim.run();
  const EngineStats stats = sim.core().stats();
  EXPECT_EQ(hits_before, 0u);
  EXPECT_EQ(stats.prefix_cache_hits,
            1984u);  // all full blocks but the last (one token must be computed)
  EXPECT_EQ(sim[2].cached, 1984u);
  EXPECT_LT(sim[2].ttft, sim[1].ttft / 4);
  EXPECT_EQ(stats.prefix_cache_queries, 4000u);
}

TEST(EngineCore, NoPrefixCachingMeansNoHits) {
  EngineConfig c = small_config();
  c.enable_prefix_caching = false;
  Sim sim(c);
  sim.add(1, 2000, 4);
  sim.run();
  sim.add(2, 2000, 4);
  sim.run();
  EXPECT_EQ(sim.core().stats().prefix_cache_hits, 0u);
  EXPECT_NEAR(sim[2].ttft, sim[1].ttft, 1e-9);
}

TEST(EngineCore, OverfilledKvPoolPreemptsAndRecomputesWithIdenticalOutput) {
  EngineConfig tight = small_config();
  tight.num_gpu_blocks = 80;  // 1280 tokens for 8 requests needing 500 each
  tight.max_model_len = 1024;
  Sim pressured(tight);
  Sim roomy(small_config());
  for (RequestId id = 1; id <= 8; ++id) {
    pressured.add(id, 100, 400, true, static_cast<uint32_t>(id));
    roomy.add(id, 100, 400, true, static_cast<uint32_t>(id));
  }
  pressured.run();
  roomy.run();
  EXPECT_GT(pressured.core().stats().num_preemptions, 0u);
  EXPECT_EQ(roomy.core().stats().num_preemptions, 0u);
  for (RequestId id = 1; id <= 8; ++id) {
    EXPECT_EQ(pressured[id].finish, FinishReason::kLength);
    EXPECT_EQ(pressured[id].tokens, roomy[id].tokens) << "request " << id;
  }
  EXPECT_GT(pressured.now(), roomy.now());  // recompute costs time
  EXPECT_EQ(pressured.core().stats().kv_cache_usage, 0.0);
}

TEST(EngineCore, ThroughputRisesWithBatchThenSaturates) {
  auto throughput = [](uint32_t batch) {
    EngineConfig c = small_config();
    c.max_num_seqs = 64;
    c.num_gpu_blocks = 100000;
    Sim sim(c);
    for (uint32_t i = 0; i < batch; ++i) sim.add(i + 1, 64, 256, true, i);
    sim.run();
    return batch * 256.0 / sim.now();
  };
  const double t1 = throughput(1), t4 = throughput(4), t16 = throughput(16), t64 = throughput(64),
               t256 = throughput(256);
  EXPECT_GT(t4, 2.5 * t1);
  EXPECT_GT(t16, 2.0 * t4);
  EXPECT_GT(t64, 1.2 * t16);
  EXPECT_LT(t256, 1.1 * t64);  // max_num_seqs = 64: more requests only queue
}

TEST(EngineCore, OutputIsDeterministicAndStopsByItself) {
  Sim a(small_config()), b(small_config());
  a.add(1, 50, 4000, /*ignore_eos=*/false);
  b.add(1, 50, 4000, /*ignore_eos=*/false);
  a.run();
  b.run();
  EXPECT_EQ(a[1].tokens, b[1].tokens);
  EXPECT_EQ(a[1].finish, FinishReason::kStop);
  EXPECT_EQ(a[1].tokens.back(), tokenizer::kEos);
  EXPECT_LT(a[1].tokens.size(), 4000u);
}

TEST(EngineCore, AbortFreesBlocks) {
  Sim sim(small_config());
  sim.add(1, 1000, 1000);
  sim.step();
  sim.step();
  EXPECT_GT(sim.core().stats().kv_cache_usage, 0.0);
  sim.core().abort_request(1);
  EXPECT_EQ(sim.core().stats().kv_cache_usage, 0.0);
  EXPECT_FALSE(sim.core().has_work());
}

TEST(EngineCore, RejectsWhatDoesNotFit) {
  EngineConfig c = small_config();
  c.max_model_len = 1000;
  c.max_waiting = 2;
  EngineCore core(c);
  NewRequest r;
  r.id = 1;
  r.prompt.assign(990, 5);
  r.sampling.max_tokens = 20;
  Status s = core.add_request(r, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kOutOfRange);
  EXPECT_NE(s.error().message.find("maximum context length is 1000 tokens"), std::string::npos);
  r.sampling.max_tokens = 10;
  for (RequestId id = 1; id <= 2; ++id) {
    r.id = id;
    EXPECT_TRUE(core.add_request(r, 0).ok());
  }
  r.id = 3;
  s = core.add_request(r, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kResourceExhausted);
}

EngineConfig lora_config(uint32_t max_loras) {
  EngineConfig c;
  c.lora.enabled = true;
  c.lora.max_loras = max_loras;
  c.lora.max_cpu_loras = 4;
  c.lora.load_bytes_per_s = 1e8;  // 10 ms per MB
  return c;
}

// `salt` makes another prompt of the same length.
NewRequest lora_request(RequestId id, uint32_t adapter, uint32_t prompt_len = 64,
                        uint32_t salt = 0) {
  NewRequest r;
  r.id = id;
  r.adapter = adapter;
  for (uint32_t i = 0; i < prompt_len; ++i) r.prompt.push_back(100 + i + 1000 * salt);
  r.sampling.max_tokens = 4;
  r.sampling.ignore_eos = true;
  return r;
}

TEST(EngineCoreLora, ABatchHoldsAtMostMaxLorasAdaptersAndSkipsTheRest) {
  EngineCore core(lora_config(2));
  for (uint32_t id : {1u, 2u, 3u})
    ASSERT_TRUE(core.add_adapter({id, fmt::format("a{}", id), 8, 1000000}).ok());
  for (uint32_t id : {1u, 2u, 3u}) ASSERT_TRUE(core.add_request(lora_request(id, id), 0).ok());
  ASSERT_TRUE(core.add_request(lora_request(4, 0), 0).ok());  // the base model, behind a3
  core.step(0);
  const LoraUsage usage = core.lora_usage();
  EXPECT_EQ(usage.running, (std::vector<std::string>{"a1", "a2"}));
  EXPECT_EQ(usage.waiting, (std::vector<std::string>{"a3"}));
  EXPECT_EQ(core.stats().num_running, 3u);  // a1, a2 and the base request skipped past a3
  EXPECT_EQ(usage.loads, 2u);
  double now = 0;
  while (core.has_work()) now += core.step(now).duration;
  EXPECT_EQ(core.lora_usage().loads, 3u);  // a3 ran once a slot was free
}

TEST(EngineCoreLora, LoadsFromDiskOnceThenFromHostMemoryAndCostsPerAdapter) {
  EngineCore core(lora_config(1));
  ASSERT_TRUE(core.add_adapter({1, "big", 8, 50000000}).ok());   // 0.5 s from disk
  ASSERT_TRUE(core.add_adapter({2, "small", 8, 1000000}).ok());  // 10 ms
  EngineCore base(lora_config(1));
  auto first_step = [](EngineCore& c, NewRequest r) {
    EXPECT_TRUE(c.add_request(std::move(r), 0).ok());
    const double d = c.step(0).duration;
    while (c.has_work()) c.step(0);
    return d;
  };
  const double plain = first_step(base, lora_request(1, 0));
  const double cold = first_step(core, lora_request(1, 1));
  EXPECT_NEAR(cold - plain, 0.5 + 0.002 + 5e-4, 1e-6);
  const double warm = first_step(core, lora_request(2, 1, 64, 2));  // still in its GPU slot
  EXPECT_NEAR(warm - plain, 5e-4, 1e-6);
  first_step(core, lora_request(3, 2, 64, 3));                      // takes the one slot
  const double back = first_step(core, lora_request(4, 1, 64, 4));  // host memory, not disk
  EXPECT_NEAR(back - plain, 0.002 + 5e-4, 1e-6);
  EXPECT_EQ(core.lora_usage().loads, 2u);
  EXPECT_EQ(core.lora_usage().activations, 3u);
}

TEST(EngineCoreLora, AnAdaptersBlocksHashApartFromTheBaseModels) {
  EngineCore core(lora_config(1));
  ASSERT_TRUE(core.add_adapter({1, "a", 8, 0}).ok());
  auto cached = [&](NewRequest r) {
    const RequestId id = r.id;
    EXPECT_TRUE(core.add_request(std::move(r), 0).ok());
    uint32_t hit = 0;
    while (core.has_work())
      for (const auto& o : core.step(0).outputs)
        if (o.id == id) hit = o.cached_tokens;
    return hit;
  };
  EXPECT_EQ(cached(lora_request(1, 0, 128)), 0u);
  EXPECT_EQ(cached(lora_request(2, 1, 128)), 0u);  // the same prompt, another model
  EXPECT_EQ(cached(lora_request(3, 1, 128)), 112u);
  EXPECT_EQ(cached(lora_request(4, 0, 128)), 112u);
}

TEST(EngineCoreLora, AdaptersAreCheckedAndNotRemovedWhileInUse) {
  EngineCore off{EngineConfig{}};
  EXPECT_NE(off.add_adapter({1, "a", 8, 0}).error().message.find("--enable-lora"),
            std::string::npos);
  EngineCore core(lora_config(1));
  auto big = core.add_adapter({1, "a", 64, 0});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().message, "LoRA rank 64 is greater than max_lora_rank 16.");
  ASSERT_TRUE(core.add_adapter({1, "a", 8, 0}).ok());
  EXPECT_FALSE(core.add_adapter({2, "a", 8, 0}).ok());
  EXPECT_EQ(core.add_request(lora_request(1, 9), 0).error().code, ErrorCode::kNotFound);
  ASSERT_TRUE(core.add_request(lora_request(1, 1), 0).ok());
  EXPECT_EQ(core.remove_adapter(1).error().code, ErrorCode::kUnavailable);
  while (core.has_work()) core.step(0);
  EXPECT_TRUE(core.remove_adapter(1).ok());
  EXPECT_TRUE(core.adapters().empty());
}

TEST(EngineCore, ValidateRejectsAPoolSmallerThanOneRequest) {
  EngineConfig c;
  c.num_gpu_blocks = 10;
  c.max_model_len = 4096;
  EXPECT_FALSE(c.validate().ok());
}

TEST(BlockPool, EvictsLeastRecentlyFreedCachedBlocksFirst) {
  BlockPool pool(4, true);
  std::vector<BlockId> a, b;
  pool.allocate(2, a);
  pool.cache(a[0], 111);
  pool.cache(a[1], 222);
  pool.release(a);  // free queue: ..., a0, a1 (cached, still findable)
  EXPECT_EQ(pool.num_free(), 4u);
  EXPECT_TRUE(pool.lookup(111).has_value());
  pool.allocate(3, b);  // takes the two never-used blocks, then a0
  EXPECT_FALSE(pool.lookup(111).has_value());
  EXPECT_TRUE(pool.lookup(222).has_value());
  pool.touch(*pool.lookup(222));
  EXPECT_EQ(pool.num_free(), 0u);
  EXPECT_DOUBLE_EQ(pool.usage(), 1.0);
}

}  // namespace
}  // namespace loadstar::engine

namespace loadstar::engine {
namespace {

// Prefill/decode disaggregation: the producer's side holds, the consumer's
// side receives instead of computing.

TEST(EngineCoreDisaggregation, ProducerHoldsItsBlocksUntilReadThenFreesThem) {
  Sim sim(small_config());
  sim.add(1, 1000, 1, true, 0, /*hold_kv=*/true);
  sim.run();
  ASSERT_EQ(sim[1].finish, FinishReason::kLength);
  EXPECT_EQ(sim[1].held_blocks.size(), 63u);  // ceil(1000 / 16)
  EXPECT_GT(sim.core().stats().kv_cache_usage, 0.0);
  EXPECT_EQ(sim.core().stats().kv_held_blocks, 63u);

  auto kv = sim.core().release_held(1);
  ASSERT_TRUE(kv.ok()) << kv.error().message;
  EXPECT_EQ(kv->prompt_tokens, 1000u);
  EXPECT_EQ(kv->block_hashes.size(), 62u);  // full blocks only
  EXPECT_EQ(kv->blocks, sim[1].held_blocks);
  EXPECT_EQ(sim.core().stats().kv_cache_usage, 0.0);
  EXPECT_EQ(sim.core().stats().kv_sent_requests, 1u);
  EXPECT_EQ(sim.core().release_held(1).error().code, ErrorCode::kNotFound);
}

TEST(EngineCoreDisaggregation, HeldBlocksNobodyReadsExpire) {
  EngineConfig config = small_config();
  config.kv_transfer.hold_timeout_s = 10;
  Sim sim(config);
  sim.add(1, 500, 1, true, 0, /*hold_kv=*/true);
  sim.run();
  EXPECT_GT(sim.core().stats().kv_held_blocks, 0u);
  sim.advance(11);
  sim.add(2, 20, 1);
  sim.run();
  EXPECT_EQ(sim.core().stats().kv_held_blocks, 0u);
  EXPECT_EQ(sim.core().stats().kv_hold_expired, 1u);
  EXPECT_EQ(sim.core().release_held(1).error().code, ErrorCode::kNotFound);
}

TEST(EngineCoreDisaggregation, ConsumerReceivesThePromptInsteadOfComputingIt) {
  EngineConfig config = small_config();
  config.kv_transfer.bytes_per_token = 131072;
  config.kv_transfer.bandwidth_bytes_per_s = 1e9;  // slow enough to see
  config.kv_transfer.latency_s = 0.001;
  Sim local(config), remote(config);
  local.add(1, 4000, 20, true, 3);
  local.run();
  remote.add(1, 4000, 20, true, 3, false, /*remote_kv=*/true);
  remote.run();
  // The same tokens: disaggregation changes where the prompt is computed,
  // never what the model says.
  EXPECT_EQ(remote[1].tokens, local[1].tokens);
  const double transfer = 4000 * 131072 / 1e9 + 0.001;
  EXPECT_EQ(remote[1].kv_received, 4000u);
  EXPECT_NEAR(remote[1].kv_transfer_s, transfer, 1e-9);
  // TTFT: the transfer, then one step computing the last prompt token.
  EXPECT_GT(remote[1].ttft, transfer);
  EXPECT_LT(remote[1].ttft, transfer + 0.05);
  const EngineStats s = remote.core().stats();
  EXPECT_EQ(s.kv_received_requests, 1u);
  EXPECT_EQ(s.kv_received_tokens, 4000u);
  EXPECT_EQ(s.kv_received_bytes, 4000u * 131072u);
  EXPECT_NEAR(s.kv_transfer_seconds, transfer, 1e-9);
}

TEST(EngineCoreDisaggregation, TransfersShareTheLinkAndSkipWhatTheCacheHolds) {
  EngineConfig config = small_config();
  config.kv_transfer.bandwidth_bytes_per_s = 1e9;
  config.kv_transfer.latency_s = 0;
  Sim sim(config);
  // A prompt computed here first: its prefix is cached.
  sim.add(1, 2000, 1, true, 5);
  sim.run();
  sim.add(2, 2000, 5, true, 5, false, /*remote_kv=*/true);  // the same prompt
  sim.add(3, 2000, 5, true, 6, false, /*remote_kv=*/true);  // another
  sim.run();
  // All but the cache's blocks travel (the last token is computed anyway).
  EXPECT_EQ(sim[2].kv_received, 2000u - 1984u);
  EXPECT_EQ(sim[3].kv_received, 2000u);
  // The second transfer waited for the first on the link.
  EXPECT_NEAR(sim[3].kv_transfer_s, (16 + 2000) * 131072 / 1e9, 1e-9);
}

}  // namespace
}  // namespace loadstar::engine
