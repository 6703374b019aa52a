#include <memory>

#include <CLI/CLI.hpp>

#include "app/commands.h"
#include "common/units.h"
#include "enginesim/engine_sim.h"
#include "enginesim/profiles.h"

namespace loadstar::app {

void add_engine_sim_options(CLI::App& app, enginesim::EngineSimOptions& o) {
  // Names follow `vllm serve` where vLLM has the same knob.
  app.add_option("--model", o.model_dir, "Model directory (config.json + safetensors; required)");
  app.add_option("--served-model-name", o.served_model_name,
                 "Name clients use (default: directory name)");
  app.add_option("--host", o.host)->capture_default_str();
  app.add_option("--port", o.port, "0 picks a free port (see --port-file)")->capture_default_str();
  app.add_option("--port-file", o.port_file, "Write the bound port here once listening");
  app.add_option("--profile", o.profile, "Model/GPU profile for step costs and KV size")
      ->default_str(enginesim::kDefaultProfile);
  app.add_option("--profiles-file", o.profiles_file, "YAML file with more profiles");
  app.add_option("--max-num-seqs", o.max_num_seqs)->capture_default_str();
  app.add_option("--max-num-batched-tokens", o.max_num_batched_tokens)->capture_default_str();
  app.add_option("--max-model-len", o.max_model_len,
                 "Default: the model's max_position_embeddings");
  app.add_option("--block-size", o.block_size)->capture_default_str();
  app.add_option("--num-gpu-blocks-override", o.num_gpu_blocks_override,
                 "KV blocks (default: profile's)");
  app.add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", o.enable_prefix_caching)
      ->capture_default_str();
  app.add_option("--max-waiting", o.max_waiting, "Waiting requests before 503 (0: unbounded)")
      ->capture_default_str();
  app.add_option("--seed", o.seed)->capture_default_str();
  app.add_option("--time-scale", o.time_scale, "Model seconds per wall second (>1 runs faster)")
      ->capture_default_str();
  app.add_option("--output-len-median", o.output_len_median,
                 "Median natural output length in tokens (requests without ignore_eos)")
      ->capture_default_str();
  app.add_option("--output-len-sigma", o.output_len_sigma, "Log-normal sigma of the output length")
      ->capture_default_str();
  app.add_option("--embedding-dim", o.embedding_dim)->capture_default_str();
  app.add_option("--drain-timeout", o.drain_timeout_s,
                 "Seconds to finish in-flight requests on SIGTERM")
      ->capture_default_str();
  app.add_option("--timeout-keep-alive", o.keep_alive_timeout_s,
                 "Seconds an idle keep-alive connection stays open (uvicorn's name and default)")
      ->capture_default_str();
  app.add_flag("--enable-lora", o.enable_lora, "Serve LoRA adapters (vLLM's multi-LoRA)");
  app.add_option("--max-loras", o.max_loras, "Distinct adapters in one batch (GPU slots)")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--max-lora-rank", o.max_lora_rank, "Largest adapter rank accepted")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--max-cpu-loras", o.max_cpu_loras,
                 "Adapters kept in host memory (default: --max-loras)");
  app.add_option("--lora-modules", o.lora_modules,
                 "Adapters served from the start: NAME=PATH or {\"name\":...,\"path\":...}")
      ->expected(1, -1);
  app.add_option("--kv-events-config", o.kv_events_config,
                 "vLLM's KV events as JSON, e.g. {\"enable_kv_cache_events\":true,"
                 "\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:5557\"}");
  app.add_option("--kv-transfer-config", o.kv_transfer_config,
                 "vLLM's KV transfer as JSON (prefill/decode disaggregation), e.g. "
                 "{\"kv_connector\":\"NixlConnector\",\"kv_role\":\"kv_producer\"}; "
                 "kv_connector_extra_config.link: nvlink, rdma (default) or tcp");
  app.add_option("--nnodes", o.nnodes, "Nodes one engine spans (multi-node; rank 0 serves)")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  app.add_option("--node-rank", o.node_rank, "This node's rank in the engine")
      ->capture_default_str();
  app.add_option("--master-addr", o.master_addr, "The leader's address (ranks above 0)");
  app.add_option("--master-port", o.master_port, "The leader's group port (its HTTP port)");
  app.add_flag("--headless", o.headless, "A node that joins the leader and serves no API");
  app.add_option("--fault-error-rate", o.fault_error_rate,
                 "Fault injection: answer this fraction of generation requests 500")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option(
         "--fault-delay", o.fault_delay_s,
         "Fault injection: seconds every generation request (and /tokenize) waits before it "
         "starts")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option_function<std::string>(
         "--max-body-size",
         [&o](const std::string& text) {
           auto bytes = parse_bytes(text);
           if (!bytes.ok()) throw CLI::ValidationError("--max-body-size", bytes.error().message);
           o.max_body_bytes = *bytes;
         },
         "Largest request body")
      ->default_str("8Mi");
}

std::function<int()> setup_engine_sim(CLI::App& app) {
  auto opts = std::make_shared<enginesim::EngineSimOptions>();
  add_engine_sim_options(app, *opts);
  return [opts] { return enginesim::run_engine_sim(*opts); };
}

}  // namespace loadstar::app
