// engine-sim's OpenAI server: the HTTP surface over one EngineLoop — vLLM's
// routes (completions, chat, embeddings, models, health, metrics), LoRA
// adapters loaded at runtime, and the prefill/decode side of KV transfer
// (kv_transfer.h). run_engine_sim (engine_sim.cpp) builds and serves it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "enginesim/engine_loop.h"
#include "enginesim/engine_sim.h"
#include "enginesim/group.h"
#include "enginesim/kv_reader.h"
#include "enginesim/kv_transfer.h"
#include "enginesim/metrics.h"
#include "http/server.h"
#include "openai/protocol.h"

namespace loadstar::enginesim {

class EngineSimServer {
 public:
  EngineSimServer(const EngineSimOptions& options, engine::EngineConfig config,
                  std::string model_name, std::string model_root,
                  std::optional<KvTransferSettings> kv);

  // Where consumers read this engine's held KV: its own address (the
  // side channel is its HTTP port), or VLLM_NIXL_SIDE_CHANNEL_HOST's, as
  // vLLM advertises it (a Pod's IP).
  void set_side_channel(std::string host, uint16_t port) {
    side_host_ = std::move(host);
    side_port_ = port;
  }

  // A multi-node engine's leader: ready only with its whole group
  // (enginesim/group.h); the members' heartbeats arrive on its port.
  void set_group(GroupMembers* group) { group_ = group; }

  EngineMetrics& metrics() { return metrics_; }
  EngineLoop& loop() { return loop_; }
  void set_ready() { ready_ = true; }
  // Seconds on the group's clock (heartbeats and the lost-node check).
  double group_now() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_).count();
  }
  // The group's lost node, as an error line; nothing while it is whole.
  std::optional<std::string> group_lost() {
    std::lock_guard lock(group_mu_);
    return group_ ? group_->lost(group_now()) : std::nullopt;
  }

  // Registers an adapter read from `path` (checked here: its files, its
  // rank), then in the engine core; `done` gets the outcome on `executor`.
  void add_adapter(const std::string& name, const std::string& path,
                   boost::asio::any_io_executor executor, std::function<void(Status)> done);

  boost::asio::awaitable<void> handle(http::Exchange& ex);

 private:
  struct ServedAdapter {
    uint32_t id = 0;
    std::string path;
  };

  // vLLM registers the two routes only with VLLM_ALLOW_RUNTIME_LORA_UPDATING.
  bool runtime_lora_updates() const;

  // The adapter a request's `model` names: 0 for the base model, nullopt
  // for a name neither is.
  std::optional<uint32_t> model_id(const std::string& model);

  std::string models_json();

  // POST /tokenize as vLLM answers it: {"prompt"} or {"messages"} (through
  // the chat template the chat endpoint applies) to {"count",
  // "max_model_len","tokens"}. The gateway asks it for the token ids this
  // engine's KV events are matched against.
  http::Response tokenize(std::string_view body);
  // --fault-delay: the wait before a generation or /tokenize starts.
  boost::asio::awaitable<void> injected_delay();

  // POST /v1/load_lora_adapter {"lora_name","lora_path"} and
  // /v1/unload_lora_adapter {"lora_name"}, answered as vLLM does.
  boost::asio::awaitable<void> change_adapter(http::Exchange& ex, bool load);

  // Calls `start` with a `done` that it (or what it starts) calls once, at
  // once or later on `executor`; resumes here with what `done` got.
  static boost::asio::awaitable<Status> completion(
      const std::function<void(std::function<void(Status)>)>& start,
      boost::asio::any_io_executor executor);

  // Runs `fn` on the engine thread between steps; resumes here with its Status.
  boost::asio::awaitable<Status> on_engine(std::function<Status(engine::EngineCore&)> fn,
                                           boost::asio::any_io_executor executor);

  // The side channel: a decode engine reads the KV a prefill left held here
  // (and so frees it). Only what the engine id and request id name.
  boost::asio::awaitable<void> read_held_kv(http::Exchange& ex);

  // A decode's prompt KV, read from the prefill its params name. Ok: the
  // core receives it instead of computing it.
  boost::asio::awaitable<Status> receive_kv(const KvTransferParams& params,
                                            const std::vector<engine::TokenId>& prompt,
                                            engine::BlockHash root);

  static boost::asio::awaitable<void> respond_error(http::Exchange& ex, openai::ApiError error);

  boost::asio::awaitable<void> generate(http::Exchange& ex, openai::Endpoint endpoint);

  boost::asio::awaitable<void> embed(http::Exchange& ex, openai::CompletionRequest request);

  const EngineSimOptions& options_;
  const std::string model_name_;
  std::mutex adapters_mu_;
  std::map<std::string, ServedAdapter> adapters_;  // by name
  uint32_t next_adapter_id_ = 1;
  const std::string model_root_;
  EngineMetrics metrics_;
  EngineLoop loop_;
  const std::optional<KvTransferSettings> kv_;
  std::unique_ptr<KvReader> kv_reader_;  // a consumer's
  std::string side_host_;
  uint16_t side_port_ = 0;
  // A uniform draw in [0, 1) for fault injection (one I/O thread calls it).
  double fault_draw() {
    fault_state_ = fault_state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(fault_state_ >> 11) * 0x1.0p-53;
  }
  uint64_t fault_state_ = 0x853c49e6748fea9bULL;
  std::atomic<bool> ready_{false};
  GroupMembers* group_ = nullptr;  // guarded by group_mu_ with what it points to
  std::mutex group_mu_;
  std::chrono::steady_clock::time_point epoch_ = std::chrono::steady_clock::now();
  const uint64_t id_salt_ =
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) *
      0x9e3779b97f4a7c15ULL;
};

}  // namespace loadstar::enginesim
