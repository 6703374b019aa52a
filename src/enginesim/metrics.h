// The engine's Prometheus metrics under vLLM's names, labelled by model_name,
// so that anything that scrapes vLLM (the gateway's picker, autoscalers,
// dashboards) reads the simulator unchanged. Times are model seconds
// (wall seconds x time scale).
#pragma once

#include <memory>
#include <string>

#include "engine/engine_core.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace loadstar::enginesim {

class EngineMetrics {
 public:
  EngineMetrics(const std::string& model_name, const engine::EngineConfig& config,
                double time_scale);
  ~EngineMetrics();

  // Called by the engine thread after each step.
  void record_step(const engine::StepResult& step, const engine::EngineStats& stats, double lag_s);
  // Refreshes the gauges (running, waiting, KV usage) between steps.
  void record_gauges(const engine::EngineStats& stats);
  // Brings the counters and gauges up to `stats` (between steps too: a
  // consumer's read of held KV changes them while the engine is idle).
  void record_counters(const engine::EngineStats& stats);
  // A consumer's read of a producer's KV that failed or did not match.
  void count_kv_transfer_failure();
  void set_load(double seconds, uint64_t bytes);
  // vLLM's vllm:lora_requests_info: one series labelled with max_lora and
  // the running and waiting adapters (comma-separated), valued with the
  // time it was set (Unix seconds), as vLLM's set_to_current_time(). The
  // series of earlier label values is removed (vLLM keeps them at their
  // older times; readers take the newest either way). Also engine-sim's own
  // counters of adapters read from disk and put into a GPU slot
  // (loadstar_engine_sim_lora_{loads,activations}_total).
  void record_lora(const engine::LoraUsage& usage, uint32_t max_loras);
  // The Prometheus text exposition of every metric.
  std::string render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* kv_usage_;
  prometheus::Counter* prefix_queries_;
  prometheus::Counter* prefix_hits_;
  prometheus::Counter* preemptions_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Counter* success_stop_;
  prometheus::Counter* success_length_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* itl_;
  prometheus::Histogram* e2e_;
  prometheus::Histogram* queue_time_;
  prometheus::Histogram* request_prompt_tokens_;
  prometheus::Histogram* request_generation_tokens_;
  prometheus::Counter* steps_;
  prometheus::Counter* kv_sent_;
  prometheus::Counter* kv_expired_;
  prometheus::Gauge* kv_held_blocks_;
  prometheus::Counter* kv_received_;
  prometheus::Counter* kv_received_tokens_;
  prometheus::Counter* kv_bytes_;
  prometheus::Counter* kv_seconds_;
  prometheus::Counter* kv_failures_;
  prometheus::Histogram* step_lag_;
  prometheus::Gauge* load_seconds_;
  prometheus::Gauge* load_bytes_;
  engine::EngineStats last_;
  prometheus::Family<prometheus::Gauge>* lora_info_family_ = nullptr;
  prometheus::Gauge* lora_info_ = nullptr;
  std::string lora_info_key_;
  prometheus::Counter* lora_loads_ = nullptr;
  prometheus::Counter* lora_activations_ = nullptr;
  uint64_t last_lora_loads_ = 0, last_lora_activations_ = 0;
};

}  // namespace loadstar::enginesim
