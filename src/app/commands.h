// Each subcommand: adds its options to its CLI11 app and returns its runner.
#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace loadstar::enginesim {
struct EngineSimOptions;
}

namespace loadstar::app {

// engine-sim's options (as `vllm serve` names them), for its command and for
// reading an engine-sim service's args (`loadstar sim autoscale`).
void add_engine_sim_options(CLI::App& app, enginesim::EngineSimOptions& options);

std::function<int()> setup_engine_sim(CLI::App& app);
std::function<int()> setup_model(CLI::App& app);
std::function<int()> setup_validate(CLI::App& app);
std::function<int()> setup_crds(CLI::App& app);
std::function<int()> setup_controller(CLI::App& app);
std::function<int()> setup_gateway(CLI::App& app);
std::function<int()> setup_up(CLI::App& app);
std::function<int()> setup_get(CLI::App& app);
std::function<int()> setup_apply(CLI::App& app);
std::function<int()> setup_describe(CLI::App& app);
std::function<int()> setup_rollout(CLI::App& app);
std::function<int()> setup_events(CLI::App& app);
std::function<int()> setup_usage(CLI::App& app);
std::function<int()> setup_apikey(CLI::App& app);
std::function<int()> setup_sim(CLI::App& app);
std::function<int()> setup_calibrate(CLI::App& app);
std::function<int()> setup_agent(CLI::App& app);
std::function<int()> setup_stage(CLI::App& app);
std::function<int()> setup_load(CLI::App& app);

}  // namespace loadstar::app
