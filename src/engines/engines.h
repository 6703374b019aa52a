// One table of the inference engines Loadstar runs: for each, how it is
// launched (the command on this machine; image, command and arguments in a
// Pod), how a service's spec maps onto its flags, its health endpoint and
// the start-up allowance a model load needs, the load signals its /metrics
// feeds (and so which autoscaling targets it cannot), and how it stops.
// Both runtimes (local processes, Pods) build engines from this table;
// nothing else branches on an engine's name. Pure: no I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loadstar::engines {

// What one replica's engine is given. `model` is what the engine reads: a
// model directory (config.json + safetensors), or one .gguf file for
// llama.cpp.
struct LaunchSpec {
  std::string model;
  std::string served_name;  // the name clients use (the service's)
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  uint32_t gpus = 0;                       // whole GPUs: the tensor-parallel size when > 1
  std::optional<uint32_t> context_length;  // tokens per request (prompt + output)
  std::optional<uint32_t> max_sequences;   // requests served at once
  std::optional<uint32_t> threads;         // CPU threads (CPU engines)
  bool prefix_cache = true;
  // LoRA adapters served from the start (spec.lora): name and directory.
  struct Adapter {
    std::string name, path;
  };
  std::vector<Adapter> adapters;
  uint32_t max_loras = 1;
  std::optional<uint32_t> max_cpu_loras;
  uint32_t max_lora_rank = 16;
  // LoRA on, adapters loaded at runtime (none at start); the runtime sets
  // runtime_loading_env in the engine's environment.
  bool lora_on_demand = false;
  std::vector<std::string> extra_args;  // spec.engine.args, passed last
  // Publish KV-cache events (vLLM's --kv-events-config) on this ZeroMQ
  // endpoint ("tcp://*:5557"); empty: none.
  std::string kv_events_endpoint;
  // Prefill/decode disaggregation (api/disaggregation.h): vLLM's kv_role
  // with NixlConnector ("kv_producer", "kv_both"; empty: none), and the
  // link engine-sim models (nvlink, rdma, tcp).
  std::string kv_role;
  std::string kv_link;
  // A multi-node replica (spec.multiNode): its pods (nnodes > 1), this
  // one's rank (0: the leader, which serves), and where the leader's group
  // port is. vLLM's native multi-node flags (--nnodes, --node-rank,
  // --master-addr, --master-port, --headless); SGLang's --nnodes,
  // --node-rank, --dist-init-addr.
  uint32_t nnodes = 1;
  uint32_t node_rank = 0;
  std::string master_addr;
  uint16_t master_port = 0;
};

// The signals the gateway reads from an engine's /metrics (see
// gateway/engine_load.h for every name it knows).
struct MetricNames {
  std::string waiting;   // requests queued in the engine; empty: not exported
  std::string running;   // requests being served
  std::string kv_usage;  // KV-cache use, 0..1; empty: not exported
};

struct Engine {
  std::string name;  // as in spec.engine.name
  // This machine: the program to find (on PATH, or where the runtime keeps
  // it) and the words before the flags ("vllm" + {"serve"}).
  std::string program;
  std::vector<std::string> subcommand;
  std::string install_hint;  // what to do when the program is missing
  // A command that must succeed for the engine to run on this machine
  // (sglang: its Python package importable); empty: finding the program is
  // enough.
  std::vector<std::string> local_check;
  // Kubernetes: the default image (tag pinned), and its command.
  std::string image;
  std::vector<std::string> container_command;
  bool needs_shm = false;               // /dev/shm as a memory-backed volume (NCCL, workers)
  bool model_is_file = false;           // reads one .gguf file, not a directory
  std::string model_format;             // the Model spec.format it serves
  std::string health_path = "/health";  // 200 once the model is loaded
  // A model load may take this long before the engine is given up on
  // (startup probe; the local runtime's start timeout is the controller's).
  double startup_allowance_s = 600;
  double stop_grace_s = 30;  // SIGTERM, then SIGKILL after this
  MetricNames metrics;
  // engine-sim only: reports the port it bound (--port 0) in a file.
  bool writes_port_file = false;
  // Serves LoRA adapters (LaunchSpec::adapters), named in a request's
  // `model`; or, with adapters_by_index, selected by their index in the
  // launch's list (llama.cpp's per-request "lora": [{"id", "scale"}]), which
  // the gateway sets from the model name.
  bool lora = false;
  bool adapters_by_index = false;
  // Loads adapters at runtime through vLLM's /v1/load_lora_adapter
  // (spec.lora.loading: onDemand; LaunchSpec::lora_on_demand).
  bool lora_runtime_loading = false;
  // Publishes vLLM's KV events (LaunchSpec::kv_events_endpoint) and
  // answers vLLM's POST /tokenize, through which the gateway gets a
  // prompt's token ids to match the events' token blocks.
  bool kv_events = false;
  // Hands a prompt's KV cache to another engine (LaunchSpec::kv_role):
  // vLLM's --kv-transfer-config with NixlConnector, whose side channel
  // listens on kNixlSideChannelPort in a Pod.
  bool kv_transfer = false;
  // Runs one model over several nodes (spec.multiNode): LaunchSpec's
  // nnodes, node_rank and master address become its flags.
  bool multi_node = false;
  // ...through a launcher of its own (vLLM v0.11.0: Ray), Kubernetes only:
  // the leader's container runs `group_leader_prelude` (a shell command)
  // and then the engine; the group's other pods run `group_worker_command`
  // instead of the engine (LeaderWorkerSet's vLLM example). Empty: the
  // engine's own flags (LaunchSpec::nnodes, node_rank, ...) join the group.
  std::string group_leader_prelude, group_worker_command;
  std::string description;

  // The flags (after program and subcommand) for a launch, extra_args last.
  std::vector<std::string> flags(const LaunchSpec& launch) const;
  std::vector<std::string> (*engine_flags)(const LaunchSpec&) = nullptr;
};

// vLLM's NIXL side channel (VLLM_NIXL_SIDE_CHANNEL_PORT's default).
inline constexpr uint16_t kNixlSideChannelPort = 5600;

// What lets vLLM (and engine-sim) take /v1/load_lora_adapter.
inline constexpr const char* kRuntimeLoraEnv = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True";

const std::vector<Engine>& all();
const Engine* find(std::string_view name);
// "engine-sim, llama.cpp, vllm, sglang", for messages; with `feature`,
// only the engines that have it ("engine-sim, vllm" for &Engine::kv_events).
std::string names(bool Engine::*feature = nullptr);

// Autoscaling targets set on a service that its engine cannot feed, each
// with why ("kvCacheUsage: llama.cpp exports no KV-cache use"). Empty: all
// can be fed.
struct Targets {
  bool waiting = false;
  bool kv_cache = false;
};
std::vector<std::string> unfed_targets(const Engine& engine, const Targets& targets);

}  // namespace loadstar::engines
