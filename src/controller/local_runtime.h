// Engines as child processes of `loadstar up`: models prepared in the data
// directory (synth:// written, file:// used in place, http/hf/s3 staged by
// the embedded agent), `loadstar engine-sim` started on a free port (read
// from its port file), ready when /health answers. Children die with the
// parent (PR_SET_PDEATHSIG).
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/process.h"
#include "controller/runtime.h"

namespace loadstar::agent {
class Agent;
}

namespace loadstar::controller {

struct LocalRuntimeOptions {
  std::filesystem::path data_dir = "var";
  std::string loadstar_bin;
  agent::Agent* agent = nullptr;  // stages http(s)://, hf:// and s3:// models
  double stop_grace_s = 5;        // SIGTERM, then SIGKILL after this
};

class LocalRuntime : public EngineRuntime {
 public:
  explicit LocalRuntime(LocalRuntimeOptions options) : options_(std::move(options)) {}
  ~LocalRuntime() override;

  Status launch(const EngineLaunch& launch) override;
  EngineStatus status(const std::string& replica) override;
  void stop(const std::string& replica) override;
  void kill(const std::string& replica) override;
  void keep_warm(const api::Model& model, uint32_t nodes) override;
  // Every node of this machine holds what its one agent staged.
  std::set<std::string, std::less<>> models_on(const std::string& node) override;
  void end_pass(const std::vector<std::string>& models_in_use) override;

  // The model's directory, or why not yet (staging progress, an error).
  Result<std::filesystem::path> prepare_model(const api::Model& model);

 private:
  using Clock = std::chrono::steady_clock;
  struct Engine {
    Subprocess process;
    std::filesystem::path port_file;
    uint16_t port = 0;
    bool ready = false;
    std::optional<Clock::time_point> stop_sent;
  };
  LocalRuntimeOptions options_;
  std::map<std::string, Engine> engines_;
  std::map<std::string, int> agent_uses_;  // engines per model, as last told to the agent
};

}  // namespace loadstar::controller
