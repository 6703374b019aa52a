#include "enginesim/metrics.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

namespace loadstar::enginesim {

using prometheus::Histogram;

namespace {
// vLLM's bucket boundaries (vllm/v1/metrics/loggers.py).
const Histogram::BucketBoundaries kTtftBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
    1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const Histogram::BucketBoundaries kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                 0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                                 7.5,  10.0,  20.0, 40.0,  80.0};
const Histogram::BucketBoundaries kLatencyBuckets = {
    0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
Histogram::BucketBoundaries token_buckets(uint32_t max_model_len) {
  // vLLM: 1, 2, 5, 10, 20, 50, ... up to max_model_len.
  Histogram::BucketBoundaries b;
  for (double mantissa = 1;; mantissa *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m * mantissa > max_model_len) return b;
      b.push_back(m * mantissa);
    }
  }
}
}  // namespace

EngineMetrics::EngineMetrics(const std::string& model_name, const engine::EngineConfig& config,
                             double time_scale)
    : registry_(std::make_shared<prometheus::Registry>()) {
  const prometheus::Labels labels = {{"model_name", model_name}};
  auto& r = *registry_;
  auto gauge = [&](const char* name, const char* help) -> prometheus::Gauge* {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add(labels);
  };
  auto counter = [&](const char* name, const char* help) -> prometheus::Counter* {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add(labels);
  };
  auto histogram = [&](const char* name, const char* help, const Histogram::BucketBoundaries& b) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add(labels, b);
  };
  running_ = gauge("vllm:num_requests_running", "Number of requests in model execution batches.");
  waiting_ = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.");
  kv_usage_ = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.");
  prefix_queries_ = counter("vllm:prefix_cache_queries_total",
                            "Prefix cache queries, in terms of number of queried tokens.");
  prefix_hits_ = counter("vllm:prefix_cache_hits_total",
                         "Prefix cache hits, in terms of number of cached tokens.");
  preemptions_ =
      counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.");
  prompt_tokens_ = counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.");
  generation_tokens_ =
      counter("vllm:generation_tokens_total", "Number of generation tokens processed.");
  auto& success = prometheus::BuildCounter()
                      .Name("vllm:request_success_total")
                      .Help("Count of successfully processed requests.")
                      .Register(r);
  success_stop_ = &success.Add({{"model_name", model_name}, {"finished_reason", "stop"}});
  success_length_ = &success.Add({{"model_name", model_name}, {"finished_reason", "length"}});
  ttft_ = histogram("vllm:time_to_first_token_seconds",
                    "Histogram of time to first token in seconds.", kTtftBuckets);
  itl_ = histogram("vllm:inter_token_latency_seconds",
                   "Histogram of inter-token latency in seconds.", kItlBuckets);
  e2e_ = histogram("vllm:e2e_request_latency_seconds",
                   "Histogram of e2e request latency in seconds.", kLatencyBuckets);
  queue_time_ = histogram("vllm:request_queue_time_seconds",
                          "Histogram of time spent in WAITING phase for request.", kLatencyBuckets);
  request_prompt_tokens_ =
      histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                token_buckets(config.max_model_len));
  request_generation_tokens_ =
      histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                token_buckets(config.max_model_len));
  prometheus::BuildGauge()
      .Name("vllm:cache_config_info")
      .Help("Information of the LLMEngine CacheConfig")
      .Register(r)
      .Add({{"model_name", model_name},
            {"block_size", std::to_string(config.block_size)},
            {"num_gpu_blocks", std::to_string(config.num_gpu_blocks)},
            {"enable_prefix_caching", config.enable_prefix_caching ? "True" : "False"},
            {"cache_dtype", "auto"}})
      .Set(1);
  steps_ = counter("loadstar_engine_sim_steps_total", "Engine steps executed.");
  step_lag_ =
      histogram("loadstar_engine_sim_step_lag_seconds",
                "Wall-clock seconds by which a step ended later than the model said it "
                "should; sustained lag means the simulator cannot keep time at this time scale.",
                {0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1});
  kv_sent_ = counter("loadstar_engine_sim_kv_transfer_sent_requests_total",
                     "Prefills whose held KV blocks a decode engine read (kv_producer).");
  kv_expired_ = counter("loadstar_engine_sim_kv_transfer_expired_total",
                        "Prefills whose held KV blocks nobody read in time, freed.");
  kv_held_blocks_ = gauge("loadstar_engine_sim_kv_transfer_held_blocks",
                          "KV blocks held for decode engines to read.");
  kv_received_ = counter("loadstar_engine_sim_kv_transfer_received_requests_total",
                         "Requests whose prompt KV arrived from a prefill engine (kv_consumer).");
  kv_received_tokens_ = counter("loadstar_engine_sim_kv_transfer_received_tokens_total",
                                "Prompt tokens whose KV arrived instead of being computed.");
  kv_bytes_ = counter("loadstar_engine_sim_kv_transfer_bytes_total",
                      "KV bytes received over the modelled link.");
  kv_seconds_ = counter("loadstar_engine_sim_kv_transfer_seconds_total",
                        "Model seconds from admission until received KV landed.");
  kv_failures_ = counter("loadstar_engine_sim_kv_transfer_failures_total",
                         "Reads of a prefill's KV that failed or did not match the prompt.");
  gauge("loadstar_engine_sim_time_scale", "Model seconds per wall-clock second.")->Set(time_scale);
  load_seconds_ = gauge("loadstar_engine_sim_model_load_seconds",
                        "Wall-clock seconds spent reading the model's weights at start-up.");
  load_bytes_ = gauge("loadstar_engine_sim_model_load_bytes", "Weight bytes read at start-up.");
}

EngineMetrics::~EngineMetrics() = default;

void EngineMetrics::set_load(double seconds, uint64_t bytes) {
  load_seconds_->Set(seconds);
  load_bytes_->Set(static_cast<double>(bytes));
}

void EngineMetrics::record_lora(const engine::LoraUsage& usage, uint32_t max_loras) {
  const std::string running = fmt::format("{}", fmt::join(usage.running, ","));
  const std::string waiting = fmt::format("{}", fmt::join(usage.waiting, ","));
  const std::string key = running + "\n" + waiting;
  if (!lora_info_family_) {
    lora_info_family_ = &prometheus::BuildGauge()
                             .Name("vllm:lora_requests_info")
                             .Help("Running stats on lora requests.")
                             .Register(*registry_);
    lora_loads_ = &prometheus::BuildCounter()
                       .Name("loadstar_engine_sim_lora_loads_total")
                       .Help("LoRA adapters read from disk into host memory.")
                       .Register(*registry_)
                       .Add({});
    lora_activations_ = &prometheus::BuildCounter()
                             .Name("loadstar_engine_sim_lora_activations_total")
                             .Help("LoRA adapters put into a GPU slot.")
                             .Register(*registry_)
                             .Add({});
  }
  lora_loads_->Increment(static_cast<double>(usage.loads - last_lora_loads_));
  lora_activations_->Increment(static_cast<double>(usage.activations - last_lora_activations_));
  last_lora_loads_ = usage.loads;
  last_lora_activations_ = usage.activations;
  if (!lora_info_ || key != lora_info_key_) {
    if (lora_info_) lora_info_family_->Remove(lora_info_);
    lora_info_ = &lora_info_family_->Add({{"max_lora", std::to_string(max_loras)},
                                          {"running_lora_adapters", running},
                                          {"waiting_lora_adapters", waiting}});
    lora_info_key_ = key;
  }
  lora_info_->SetToCurrentTime();
}

void EngineMetrics::record_gauges(const engine::EngineStats& stats) {
  running_->Set(stats.num_running);
  waiting_->Set(stats.num_waiting);
  kv_usage_->Set(stats.kv_cache_usage);
}

void EngineMetrics::count_kv_transfer_failure() {
  kv_failures_->Increment();
}

void EngineMetrics::record_counters(const engine::EngineStats& stats) {
  record_gauges(stats);
  // Each counter grows by what its statistic grew since the last record.
  auto grow = [&](prometheus::Counter* counter, auto engine::EngineStats::*field) {
    counter->Increment(static_cast<double>(stats.*field - last_.*field));
  };
  using S = engine::EngineStats;
  grow(prefix_queries_, &S::prefix_cache_queries);
  grow(prefix_hits_, &S::prefix_cache_hits);
  grow(preemptions_, &S::num_preemptions);
  grow(prompt_tokens_, &S::prompt_tokens);
  grow(generation_tokens_, &S::generation_tokens);
  grow(steps_, &S::num_steps);
  grow(kv_sent_, &S::kv_sent_requests);
  grow(kv_expired_, &S::kv_hold_expired);
  grow(kv_received_, &S::kv_received_requests);
  grow(kv_received_tokens_, &S::kv_received_tokens);
  grow(kv_bytes_, &S::kv_received_bytes);
  grow(kv_seconds_, &S::kv_transfer_seconds);
  kv_held_blocks_->Set(stats.kv_held_blocks);
  last_ = stats;
}

void EngineMetrics::record_step(const engine::StepResult& step, const engine::EngineStats& stats,
                                double lag_s) {
  record_counters(stats);
  if (step.duration > 0) step_lag_->Observe(lag_s);
  const double end = step.start + step.duration;
  for (const engine::RequestOutput& out : step.outputs) {
    if (out.has_token) {
      if (out.output_tokens == 1)
        ttft_->Observe(out.first_token_time - out.arrival_time);
      else
        itl_->Observe(out.inter_token_s);
    }
    if (out.finish == engine::FinishReason::kNone) continue;
    e2e_->Observe(end - out.arrival_time);
    queue_time_->Observe(out.first_scheduled_time - out.arrival_time);
    request_prompt_tokens_->Observe(out.prompt_tokens);
    request_generation_tokens_->Observe(out.output_tokens);
    (out.finish == engine::FinishReason::kLength ? success_length_ : success_stop_)->Increment();
  }
}

std::string EngineMetrics::render() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry_->Collect());
}

}  // namespace loadstar::enginesim
