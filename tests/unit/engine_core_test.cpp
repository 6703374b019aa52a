// Behaviour of the engine core under a virtual clock: the properties that make
// the simulator behave like vLLM under load.
#include <gtest/gtest.h>

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
};

// Drives an EngineCore in virtual time, as the real loop does in wall time.
class Sim {
 public:
  explicit Sim(EngineConfig config) : core_(config) {}

  void add(RequestId id, uint32_t prompt_len, uint32_t max_tokens, bool ignore_eos = true,
           uint32_t prompt_seed = 0) {
    NewRequest r;
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
    for (const RequestOutput& o : s.outputs) {
      Outcome& oc = out_[o.id];
      if (o.has_token) {
        if (oc.ttft < 0) oc.ttft = now_ - oc.arrival;
        oc.tokens.push_back(o.token);
      }
      oc.cached = o.cached_tokens;
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
