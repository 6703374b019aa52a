// Engines as child processes of `loadstar up`, each launched as the engine
// table says (engines/engines.h): models prepared in the data directory
// (synth:// written as safetensors or GGUF, file:// used in place,
// http/hf/s3 staged by the embedded agent), the engine's program found
// (engine-sim is this binary; llama-server on PATH or in the llama.cpp build
// cache; vllm and sglang on PATH), started on a free port, ready when its
// health endpoint answers 200. An engine that cannot run here leaves its
// replica Pending with what to install; one that exits reports its own last
// error line. Children die with the parent (PR_SET_PDEATHSIG).
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/process.h"
#include "controller/runtime.h"
#include "engines/engines.h"

namespace loadstar::agent {
class Agent;
}

namespace loadstar::controller {

struct LocalRuntimeOptions {
  std::filesystem::path data_dir = "var";
  std::string loadstar_bin;
  agent::Agent* agent = nullptr;  // stages http(s)://, hf:// and s3:// models
  // SIGTERM, then SIGKILL after this or the engine's own grace, whichever
  // is shorter.
  double stop_grace_s = 30;
};

// Where an engine's program is on this machine: $LOADSTAR_<NAME>_BIN
// (LOADSTAR_LLAMA_CPP_BIN, LOADSTAR_VLLM_BIN, ...), then PATH, then (for
// llama-server) the llama.cpp build cache of scripts/llama-server.sh.
std::optional<std::filesystem::path> find_engine_program(const std::string& engine,
                                                         const std::string& program);
// The last line of a log that says what went wrong (error, fatal,
// exception, ...), or its last non-empty line; empty when there is none.
std::string last_error_line(const std::filesystem::path& log);

class LocalRuntime : public EngineRuntime {
 public:
  explicit LocalRuntime(LocalRuntimeOptions options) : options_(std::move(options)) {}
  ~LocalRuntime() override;

  Status launch(const EngineLaunch& launch) override;
  EngineStatus status(const std::string& replica) override;
  void stop(const std::string& replica) override;
  void kill(const std::string& replica) override;
  void keep_warm(const api::Model& model, uint32_t nodes,
                 const std::string& model_version) override;
  Result<std::string> resolve_version(const std::string& source) override;
  Result<std::string> adapter_path(const api::Model& adapter) override;
  // Every node of this machine holds what its one agent staged.
  std::set<std::string, std::less<>> models_on(const std::string& node) override;
  void end_pass(const std::vector<std::string>& models_in_use) override;

  // The model's directory, or why not yet (staging progress, an error).
  // `version`: exactly that version of a versioned source (model_versions.h).
  Result<std::filesystem::path> prepare_model(const api::Model& model,
                                              const std::string& version = "");

 private:
  using Clock = std::chrono::steady_clock;
  struct Engine {
    Subprocess process;
    std::string health_path;
    std::filesystem::path port_file;  // engines that report the port they bound
    std::filesystem::path log;
    uint16_t port = 0;
    std::string kv_events;  // "tcp://127.0.0.1:PORT" when it publishes KV events
    bool ready = false;
    double stop_grace_s = 5;
    std::optional<Clock::time_point> stop_sent;
    // A multi-node replica's other nodes: started once the leader's group
    // port is known (engine-sim's is its HTTP port), each with its log.
    struct Member {
      ProcessOptions options;
      Subprocess process;
      bool started = false;
    };
    std::vector<Member> members;
    bool master_is_port = false;  // the members' --master-port is the leader's port
    std::string group_failure;    // why the group ended: a member's own last error line
  };
  // Starts the members once they can be; ends the group when one ended.
  void tend_members(const std::string& replica, Engine& e);
  // Why `engine` cannot run on this machine; nothing when it can.
  std::optional<std::string> missing(const engines::Engine& engine);
  LocalRuntimeOptions options_;
  std::map<std::string, Engine> engines_;
  std::map<std::string, int> agent_uses_;  // engines per model, as last told to the agent
  std::map<std::string, std::optional<std::string>> missing_;  // by engine, checked once
};

}  // namespace loadstar::controller
