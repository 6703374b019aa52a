#include "engines/engines.h"

#include <algorithm>

#include <string>

#include "kvevents/kv_events.h"

namespace loadstar::engines {

namespace {

void add(std::vector<std::string>& out, std::string flag, uint64_t value) {
  out.push_back(std::move(flag));
  out.push_back(std::to_string(value));
}

void add(std::vector<std::string>& out, std::string flag, std::string value) {
  out.push_back(std::move(flag));
  out.push_back(std::move(value));
}

// vLLM's multi-LoRA flags (engine-sim takes the same).
void add_vllm_lora(std::vector<std::string>& out, const LaunchSpec& l) {
  if (l.adapters.empty() && !l.lora_on_demand) return;
  out.push_back("--enable-lora");
  add(out, "--max-loras", l.max_loras);
  add(out, "--max-lora-rank", l.max_lora_rank);
  if (l.max_cpu_loras) add(out, "--max-cpu-loras", *l.max_cpu_loras);
  if (l.adapters.empty()) return;
  out.push_back("--lora-modules");
  for (const auto& a : l.adapters) out.push_back(a.name + "=" + a.path);
}

// vLLM's KV events (engine-sim takes the same flag).
void add_vllm_kv_events(std::vector<std::string>& out, const LaunchSpec& l) {
  if (!l.kv_events_endpoint.empty())
    add(out, "--kv-events-config", kvevents::events_config_json(l.kv_events_endpoint, "kv-events"));
}

// vLLM's KV transfer for prefill/decode disaggregation (engine-sim takes
// the same, and the link it models in kv_connector_extra_config).
void add_vllm_kv_transfer(std::vector<std::string>& out, const LaunchSpec& l, bool link) {
  if (l.kv_role.empty()) return;
  std::string config = "{\"kv_connector\":\"NixlConnector\",\"kv_role\":\"" + l.kv_role + "\"";
  if (link && !l.kv_link.empty())
    config += ",\"kv_connector_extra_config\":{\"link\":\"" + l.kv_link + "\"}";
  add(out, "--kv-transfer-config", config + "}");
}

// engine-sim takes vLLM's flags for what both have.
std::vector<std::string> engine_sim_flags(const LaunchSpec& l) {
  std::vector<std::string> out = {"--model",     l.model,  "--served-model-name",
                                  l.served_name, "--host", l.host};
  add(out, "--port", l.port);
  if (l.context_length) add(out, "--max-model-len", *l.context_length);
  if (l.max_sequences) add(out, "--max-num-seqs", *l.max_sequences);
  out.push_back(l.prefix_cache ? "--enable-prefix-caching" : "--no-enable-prefix-caching");
  add_vllm_lora(out, l);
  add_vllm_kv_events(out, l);
  add_vllm_kv_transfer(out, l, true);
  // vLLM's native multi-node flags: the leader serves; the others join it
  // at its group address (engine-sim's: the leader's HTTP port).
  if (l.nnodes > 1) {
    add(out, "--nnodes", l.nnodes);
    add(out, "--node-rank", l.node_rank);
    if (l.node_rank > 0) {
      add(out, "--master-addr", l.master_addr);
      add(out, "--master-port", l.master_port);
      out.push_back("--headless");
    }
  }
  return out;
}

// llama-server: one .gguf file; slots are its concurrent sequences, and
// with -np set its context is divided among them, so -c is per-slot
// length x slots. Prompt caching (cache_prompt) is on by default; the
// Prometheus endpoint and the web UI are opt-in and opt-out.
std::vector<std::string> llama_cpp_flags(const LaunchSpec& l) {
  std::vector<std::string> out = {"--model", l.model, "--alias", l.served_name, "--host", l.host};
  add(out, "--port", l.port);
  if (l.max_sequences) add(out, "--parallel", *l.max_sequences);
  if (l.context_length) add(out, "--ctx-size", *l.context_length * l.max_sequences.value_or(1));
  if (l.threads) add(out, "--threads", *l.threads);
  if (l.gpus > 0) add(out, "--n-gpu-layers", 999);  // every layer on the GPU
  if (!l.prefix_cache) out.push_back("--no-cache-prompt");
  out.push_back("--metrics");
  out.push_back("--no-webui");
  // /slots shows each slot's prompt to whoever reaches the engine's port:
  // off, so one client cannot read another's conversation.
  out.push_back("--no-slots");
  // Adapters are loaded at start with scale 0, so a request without a
  // "lora" field gets the base model; the gateway selects one by index.
  for (const auto& a : l.adapters) add(out, "--lora", a.path);
  if (!l.adapters.empty()) out.push_back("--lora-init-without-apply");
  return out;
}

std::vector<std::string> vllm_flags(const LaunchSpec& l) {
  std::vector<std::string> out = {l.model, "--served-model-name", l.served_name, "--host", l.host};
  add(out, "--port", l.port);
  if (l.context_length) add(out, "--max-model-len", *l.context_length);
  if (l.max_sequences) add(out, "--max-num-seqs", *l.max_sequences);
  if (l.gpus > 1) add(out, "--tensor-parallel-size", l.gpus);
  // Over several nodes (Ray's cluster, which the pods' launcher formed):
  // tensor parallel within a node, pipeline parallel across them.
  if (l.nnodes > 1) {
    add(out, "--pipeline-parallel-size", l.nnodes);
    add(out, "--distributed-executor-backend", "ray");
  }
  out.push_back(l.prefix_cache ? "--enable-prefix-caching" : "--no-enable-prefix-caching");
  add_vllm_lora(out, l);
  add_vllm_kv_events(out, l);
  add_vllm_kv_transfer(out, l, false);
  return out;
}

std::vector<std::string> sglang_flags(const LaunchSpec& l) {
  std::vector<std::string> out = {"--model-path", l.model,  "--served-model-name",
                                  l.served_name,  "--host", l.host};
  add(out, "--port", l.port);
  if (l.context_length) add(out, "--context-length", *l.context_length);
  if (l.max_sequences) add(out, "--max-running-requests", *l.max_sequences);
  if (const uint32_t tp = l.nnodes > 1 ? std::max(l.gpus, 1u) * l.nnodes : l.gpus; tp > 1)
    add(out, "--tp-size", tp);
  // Multi-node: the same command on every node, its rank and the leader's
  // address (SGLang's LeaderWorkerSet example); tensor parallel across all.
  if (l.nnodes > 1) {
    add(out, "--nnodes", l.nnodes);
    add(out, "--node-rank", l.node_rank);
    add(out, "--dist-init-addr", l.master_addr + ":" + std::to_string(l.master_port));
  }
  if (!l.prefix_cache) out.push_back("--disable-radix-cache");
  out.push_back("--enable-metrics");
  // SGLang's KV events: vLLM's events and flag, its config without vLLM's
  // enable_kv_cache_events (publishing is on when the flag is given).
  if (!l.kv_events_endpoint.empty())
    add(out, "--kv-events-config",
        kvevents::events_config_json(l.kv_events_endpoint, "kv-events", false));
  if (!l.adapters.empty()) {
    add(out, "--max-loras-per-batch", l.max_loras);
    add(out, "--max-lora-rank", l.max_lora_rank);
    out.push_back("--lora-paths");
    for (const auto& a : l.adapters) out.push_back(a.name + "=" + a.path);
  }
  return out;
}

std::vector<Engine> make_table() {
  std::vector<Engine> t;
  {
    Engine e;
    e.name = "engine-sim";
    e.lora = true;
    e.lora_runtime_loading = true;
    e.kv_events = true;
    e.kv_transfer = true;
    e.multi_node = true;
    e.engine_flags = engine_sim_flags;
    e.description =
        "Loadstar's vLLM-compatible engine simulator (no GPU, no real model): for tests and "
        "benchmarks at scale";
    e.program = "loadstar";
    e.subcommand = {"engine-sim"};
    e.image = "loadstar:0.1.0";
    e.container_command = {"loadstar", "engine-sim"};
    e.model_format = "safetensors";
    e.startup_allowance_s = 300;
    e.stop_grace_s = 5;
    e.metrics = {"vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc"};
    e.writes_port_file = true;
    t.push_back(std::move(e));
  }
  {
    Engine e;
    e.name = "llama.cpp";
    e.lora = true;
    e.adapters_by_index = true;
    e.engine_flags = llama_cpp_flags;
    e.description = "llama.cpp's llama-server: GGUF models on CPU (and GPUs)";
    e.program = "llama-server";
    e.install_hint =
        "build it with scripts/llama-server.sh build (or put llama-server on PATH, or set "
        "LOADSTAR_LLAMA_SERVER)";
    e.image = "ghcr.io/ggml-org/llama.cpp:server-b6700";
    e.container_command = {"/app/llama-server"};
    e.model_is_file = true;
    e.model_format = "gguf";
    e.startup_allowance_s = 600;
    e.stop_grace_s = 10;
    // llama-server exports its queue (requests deferred for want of a free
    // slot) and its busy slots, but no KV-cache use.
    e.metrics = {"llamacpp:requests_deferred", "llamacpp:requests_processing", ""};
    t.push_back(std::move(e));
  }
  {
    Engine e;
    e.name = "vllm";
    e.lora = true;
    e.lora_runtime_loading = true;
    e.kv_events = true;
    e.kv_transfer = true;
    e.engine_flags = vllm_flags;
    e.description = "vLLM's OpenAI-compatible server";
    e.program = "vllm";
    e.subcommand = {"serve"};
    e.install_hint =
        "install vLLM on this machine (its `vllm` command must be on PATH; it needs a GPU), or "
        "run this service in Kubernetes mode, where it runs from vLLM's image";
    e.image = "vllm/vllm-openai:v0.11.0";
    e.container_command = {"vllm", "serve"};
    // Multi-node as LeaderWorkerSet's vLLM example runs it: the image's own
    // script forms a Ray cluster of the group's pods (the leader waits for
    // all of them), then the leader serves across it.
    e.multi_node = true;
    e.group_leader_prelude =
        "bash /vllm-workspace/examples/online_serving/multi-node-serving.sh leader "
        "--ray_cluster_size=$(LWS_GROUP_SIZE)";
    e.group_worker_command =
        "bash /vllm-workspace/examples/online_serving/multi-node-serving.sh worker "
        "--ray_address=$(LWS_LEADER_ADDRESS)";
    e.needs_shm = true;
    e.model_format = "safetensors";
    e.startup_allowance_s = 1800;
    e.stop_grace_s = 30;
    e.metrics = {"vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc"};
    t.push_back(std::move(e));
  }
  {
    Engine e;
    e.name = "sglang";
    e.lora = true;
    e.kv_events = true;
    e.engine_flags = sglang_flags;
    e.multi_node = true;
    e.description = "SGLang's OpenAI-compatible server";
    e.program = "python3";
    e.subcommand = {"-m", "sglang.launch_server"};
    e.install_hint =
        "install SGLang on this machine (python3 -m sglang.launch_server must run; it needs a "
        "GPU), or run this service in Kubernetes mode, where it runs from SGLang's image";
    e.local_check = {"python3", "-c", "import sglang"};
    e.image = "lmsysorg/sglang:v0.5.2-cu126";
    e.container_command = {"python3", "-m", "sglang.launch_server"};
    e.needs_shm = true;
    e.model_format = "safetensors";
    e.startup_allowance_s = 1800;
    e.stop_grace_s = 30;
    e.metrics = {"sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage"};
    t.push_back(std::move(e));
  }
  return t;
}

}  // namespace

std::vector<std::string> Engine::flags(const LaunchSpec& launch) const {
  std::vector<std::string> out = engine_flags(launch);
  out.insert(out.end(), launch.extra_args.begin(), launch.extra_args.end());
  return out;
}

const std::vector<Engine>& all() {
  static const std::vector<Engine> table = make_table();
  return table;
}

const Engine* find(std::string_view name) {
  for (const Engine& e : all())
    if (e.name == name) return &e;
  return nullptr;
}

std::string names(bool Engine::*feature) {
  std::string out;
  for (const Engine& e : all())
    if (!feature || e.*feature) out += (out.empty() ? "" : ", ") + e.name;
  return out;
}

std::vector<std::string> unfed_targets(const Engine& engine, const Targets& targets) {
  std::vector<std::string> out;
  if (targets.waiting && engine.metrics.waiting.empty())
    out.push_back("waitingPerReplica: " + engine.name + " exports no queue length");
  if (targets.kv_cache && engine.metrics.kv_usage.empty())
    out.push_back("kvCacheUsage: " + engine.name + " exports no KV-cache use");
  return out;
}

}  // namespace loadstar::engines
