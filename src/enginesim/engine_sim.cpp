#include "enginesim/engine_sim.h"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/strings.h"
#include "enginesim/engine_loop.h"
#include "enginesim/group.h"
#include "enginesim/kv_transfer.h"
#include "enginesim/metrics.h"
#include "enginesim/profiles.h"
#include "enginesim/responses.h"
#include "enginesim/server.h"
#include "http/server.h"
#include "model/lora_adapter.h"
#include "model/model_dir.h"
#include "openai/protocol.h"

namespace loadstar::enginesim {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using engine::FinishReason;
using http::Exchange;
using openai::ApiError;
using openai::Endpoint;

namespace {

// Written to a temporary name and renamed, so a reader never sees half a number.
Status write_port_file(const std::string& path, uint16_t port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << port << "\n";
    if (!out.flush()) return make_error(ErrorCode::kIo, "cannot write {}", tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot rename {} to {}: {}", tmp, path, ec.message());
  return ok_status();
}

// Waits for in-flight requests to finish (at most drain_timeout), then stops.
asio::awaitable<void> drain_and_stop(asio::io_context& io, EngineLoop& loop, http::Server& server,
                                     double timeout_s) {
  server.stop();
  asio::steady_timer timer(io);
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  while (loop.in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(asio::use_awaitable);
  }
  loop.stop();
  io.stop();
}

}  // namespace

Result<LoraModule> parse_lora_module(const std::string& text) {
  LoraModule m;
  if (text.starts_with("{")) {
    const nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
    if (doc.is_object() && doc.contains("name") && doc["name"].is_string() &&
        doc.contains("path") && doc["path"].is_string()) {
      m.name = doc["name"].get<std::string>();
      m.path = doc["path"].get<std::string>();
    }
  } else if (const size_t eq = text.find('='); eq != std::string::npos) {
    m.name = text.substr(0, eq);
    m.path = text.substr(eq + 1);
  }
  if (m.name.empty() || m.path.empty())
    return make_error(ErrorCode::kInvalidArgument,
                      "--lora-modules '{}': expected NAME=PATH or {{\"name\": ..., \"path\": ...}}",
                      text);
  return m;
}

Result<engine::EngineConfig> engine_config(const EngineSimOptions& options,
                                           uint32_t model_max_len) {
  auto profile = find_profile(options.profile.empty() ? kDefaultProfile : options.profile,
                              options.profiles_file);
  if (!profile.ok()) return profile.error();
  engine::EngineConfig config;
  config.block_size = options.block_size;
  config.num_gpu_blocks = options.num_gpu_blocks_override.value_or(profile->num_gpu_blocks);
  config.max_num_seqs = options.max_num_seqs;
  config.max_num_batched_tokens = options.max_num_batched_tokens;
  config.max_model_len = options.max_model_len.value_or(model_max_len);
  config.max_waiting = options.max_waiting;
  config.enable_prefix_caching = options.enable_prefix_caching;
  config.seed = options.seed;
  config.cost = profile->cost;
  config.output_length = {options.output_len_median, options.output_len_sigma};
  config.lora.enabled = options.enable_lora;
  config.lora.max_loras = options.max_loras;
  config.lora.max_lora_rank = options.max_lora_rank;
  config.lora.max_cpu_loras = options.max_cpu_loras.value_or(options.max_loras);
  if (!options.lora_modules.empty() && !options.enable_lora)
    return make_error(ErrorCode::kInvalidArgument, "--lora-modules needs --enable-lora");
  if (!(options.time_scale > 0))
    return make_error(ErrorCode::kInvalidArgument, "--time-scale must be positive");
  if (Status s = config.validate(); !s.ok())
    return make_error(ErrorCode::kInvalidArgument, "invalid engine configuration: {}",
                      s.error().message);
  return config;
}

int run_engine_sim(const EngineSimOptions& options) {
  if (options.headless) return run_headless_node(options);
  if (options.node_rank != 0) {
    spdlog::error("--node-rank {}: a node other than the leader runs --headless",
                  options.node_rank);
    return 2;
  }
  if (options.model_dir.empty()) {
    spdlog::error(
        "--model is required: a model directory with config.json and safetensors weights");
    return 2;
  }
  auto model_config = model::read_model_config(options.model_dir);
  if (!model_config.ok()) {
    spdlog::error("{}", model_config.error().message);
    return 2;
  }
  auto config = engine_config(options, model_config->max_position_embeddings
                                           ? model_config->max_position_embeddings
                                           : 4096);
  if (!config.ok()) {
    spdlog::error("{}", config.error().message);
    return 2;
  }
  std::unique_ptr<kvevents::Publisher> kv_publisher;
  if (!options.kv_events_config.empty()) {
    auto events = kvevents::parse_events_config(options.kv_events_config);
    if (!events.ok()) {
      spdlog::error("{}", events.error().message);
      return 2;
    }
    if (events->enabled && events->publisher == "zmq") {
      auto publisher = kvevents::Publisher::bind(*events);
      if (!publisher.ok()) {
        spdlog::error("{}", publisher.error().message);
        return 2;
      }
      kv_publisher = std::move(*publisher);
      config->kv_events = true;
      spdlog::info("KV events published on {} (topic '{}')", kv_publisher->endpoint(),
                   events->topic);
    }
  }
  std::optional<KvTransferSettings> kv_transfer;
  if (!options.kv_transfer_config.empty()) {
    auto profile = find_profile(options.profile.empty() ? kDefaultProfile : options.profile,
                                options.profiles_file);
    auto settings = profile.ok() ? parse_kv_transfer_config(options.kv_transfer_config,
                                                            profile->kv_bytes_per_token)
                                 : Result<KvTransferSettings>(profile.error());
    if (!settings.ok()) {
      spdlog::error("{}", settings.error().message);
      return 2;
    }
    config->kv_transfer = settings->transfer;
    kv_transfer = std::move(settings).value();
  }
  const fs::path model_path = fs::absolute(options.model_dir).lexically_normal();
  std::string name = options.served_model_name;
  if (name.empty()) name = model_path.filename().string();

  asio::io_context io(1);
  EngineSimServer sim(options, *config, name, model_path.string(), kv_transfer);
  // Adapters served from the start: checked now, so that a bad one stops
  // the start with its reason (as vLLM does).
  for (const std::string& text : options.lora_modules) {
    auto module = parse_lora_module(text);
    if (!module.ok()) {
      spdlog::error("{}", module.error().message);
      return 2;
    }
    auto info = model::read_adapter(module->path);
    if (!info.ok()) {
      spdlog::error("--lora-modules {}: {}", module->name, info.error().message);
      return 2;
    }
    if (info->rank > options.max_lora_rank) {
      spdlog::error("--lora-modules {}: LoRA rank {} is greater than max_lora_rank {}.",
                    module->name, info->rank, options.max_lora_rank);
      return 2;
    }
    sim.add_adapter(module->name, module->path, io.get_executor(), [name = module->name](Status s) {
      if (!s.ok()) spdlog::error("--lora-modules {}: {}", name, s.error().message);
    });
  }
  http::ServerOptions server_options;
  server_options.host = options.host;
  server_options.port = options.port;
  server_options.max_body_bytes = options.max_body_bytes;
  server_options.idle_timeout_s = options.keep_alive_timeout_s;
  server_options.error_body = openai::error_body_for;
  auto server =
      http::Server::create({&io}, server_options, [&sim](Exchange& ex) { return sim.handle(ex); });
  if (!server.ok()) {
    spdlog::error("{}", server.error().message);
    return 1;
  }
  (*server)->start();
  const uint16_t port = (*server)->port();
  if (!options.port_file.empty()) {
    if (Status s = write_port_file(options.port_file, port); !s.ok()) {
      spdlog::error("{}", s.error().message);
      return 1;
    }
  }
  if (kv_transfer) {
    const char* side_host = std::getenv("VLLM_NIXL_SIDE_CHANNEL_HOST");
    std::string host = side_host && *side_host ? side_host : options.host;
    if (host == "0.0.0.0" || host == "::") host = "127.0.0.1";
    sim.set_side_channel(host, port);
    spdlog::info(
        "KV transfer: {} engine {}, side channel {}:{}, link {} ({:.1f} GB/s, {:.0f} us), {} KV "
        "bytes per token",
        kv_transfer->role == KvRole::kProducer   ? "kv_producer"
        : kv_transfer->role == KvRole::kConsumer ? "kv_consumer"
                                                 : "kv_both",
        kv_transfer->engine_id, host, port, kv_transfer->link,
        kv_transfer->transfer.bandwidth_bytes_per_s / 1e9, kv_transfer->transfer.latency_s * 1e6,
        kv_transfer->transfer.bytes_per_token);
  }
  spdlog::info(
      "engine-sim serving model '{}' on http://{}:{} (profile {}, {} KV blocks of {} tokens, "
      "max_model_len {}, time scale {})",
      name, options.host, port, options.profile.empty() ? kDefaultProfile : options.profile,
      config->num_gpu_blocks, config->block_size, config->max_model_len, options.time_scale);
  sim.loop().start(kv_publisher.get());

  // Weights are read on their own thread; /health turns 200 when they are in.
  std::atomic<int> exit_code{0};
  std::thread loader([&] {
    auto report = model::load_weights(model_path);
    if (!report.ok()) {
      spdlog::error("cannot load the model: {}", report.error().message);
      exit_code = 1;
      asio::post(io, [&io] { io.stop(); });
      return;
    }
    sim.metrics().set_load(report->seconds, report->bytes);
    spdlog::info("loaded {} tensors ({:.1f} MiB) from {} files in {:.3f}s ({:.0f} MiB/s); ready",
                 report->tensors, report->bytes / 1048576.0, report->files, report->seconds,
                 report->bytes / 1048576.0 / std::max(report->seconds, 1e-9));
    asio::post(io, [&sim] { sim.set_ready(); });
  });

  // A multi-node leader: ready with its whole group, and ends with it.
  std::optional<GroupMembers> group;
  asio::steady_timer group_check(io);
  std::function<void()> check_group;
  if (options.nnodes > 1) {
    group.emplace(options.nnodes);
    sim.set_group(&*group);
    spdlog::info("multi-node leader of {} nodes: waiting for {} to join on port {}", options.nnodes,
                 options.nnodes - 1, port);
    check_group = [&] {
      group_check.expires_after(std::chrono::milliseconds(200));
      group_check.async_wait([&](boost::system::error_code ec) {
        if (ec) return;
        if (auto lost = sim.group_lost()) {
          spdlog::error("{}", *lost);
          exit_code = 1;
          io.stop();
          return;
        }
        check_group();
      });
    };
    check_group();
  }

  asio::signal_set signals(io, SIGINT, SIGTERM);
  http::Server* srv = server->get();
  signals.async_wait([&](boost::system::error_code ec, int signal) {
    if (ec) return;
    group_check.cancel();
    spdlog::info("signal {}: draining {} in-flight requests", signal, sim.loop().in_flight());
    asio::co_spawn(io, drain_and_stop(io, sim.loop(), *srv, options.drain_timeout_s),
                   asio::detached);
  });
  io.run();
  loader.join();
  sim.loop().stop();
  return exit_code;
}

}  // namespace loadstar::enginesim
