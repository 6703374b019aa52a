// The single `loadstar` binary: a table of subcommands, each set up on CLI11
// and run after parsing.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "app/commands.h"
#include "common/log.h"
#include "common/strings.h"

namespace {

struct Command {
  const char* name;
  const char* description;
  // Adds the command's options to `app` and returns what runs it.
  std::function<std::function<int()>(CLI::App& app)> setup;
};

const std::vector<Command>& command_table() {
  static const std::vector<Command> table = {
      {"up", "Run gateway, controller and engines on this machine", loadstar::app::setup_up},
      {"apply", "Apply resource files to a running `loadstar up`", loadstar::app::setup_apply},
      {"get", "Show services, replicas or queues of a running `loadstar up`",
       loadstar::app::setup_get},
      {"describe",
       "Show a replica (its cold-start timeline), a service (its scaling events) or a job",
       loadstar::app::setup_describe},
      {"events", "What the controller decided and saw: scaling, rollouts, failed starts",
       loadstar::app::setup_events},
      {"usage",
       "Requests, tokens and cost per tenant, model and hour (the usage ledger; -o csv|json)",
       loadstar::app::setup_usage},
      {"rollout",
       "A service's rollout: status [-w], history, undo [--to-revision N]; a canary's pause, "
       "resume, promote, abort",
       loadstar::app::setup_rollout},
      {"engine-sim", "Run the vLLM-compatible engine simulator", loadstar::app::setup_engine_sim},
      {"model", "Model files: synth (write a synthetic safetensors model), inspect",
       loadstar::app::setup_model},
      {"validate", "Check resource files and report every error", loadstar::app::setup_validate},
      {"controller",
       "Kubernetes mode: reconcile Loadstar's resources into replica Pods (leader-elected)",
       loadstar::app::setup_controller},
      {"gateway", "Kubernetes mode: the OpenAI-compatible gateway, routing by watch",
       loadstar::app::setup_gateway},
      {"crds", "Print the CustomResourceDefinitions of Loadstar's resources (Kubernetes mode)",
       loadstar::app::setup_crds},
      {"apikey", "Make an API key for a Tenant and print its SHA-256 digest",
       loadstar::app::setup_apikey},
      {"sim", "Trace-driven simulations of the scheduler (schedule, queues)",
       loadstar::app::setup_sim},
      {"calibrate",
       "Measure a running engine and fit an engine-sim profile to it (--validate: compare)",
       loadstar::app::setup_calibrate},
      {"agent", "Run the node agent: stage, share (peer to peer) and cache model weights",
       loadstar::app::setup_agent},
      {"stage", "Ask an agent to stage a model ahead of need, and follow its progress",
       loadstar::app::setup_stage},
      {"load", "Read a model directory into memory with io_uring and O_DIRECT; report bandwidth",
       loadstar::app::setup_load},
  };
  return table;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Loadstar: elastic LLM inference on Kubernetes and on one machine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "loadstar 0.1.0");
  app.fallthrough();  // --log-level may follow the subcommand
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")
      ->capture_default_str();
  std::vector<std::pair<CLI::App*, std::function<int()>>> runners;
  for (const auto& command : command_table()) {
    CLI::App* sub = app.add_subcommand(command.name, command.description);
    runners.emplace_back(sub, command.setup(*sub));
  }
  std::vector<std::string> names;
  for (const auto& command : command_table()) names.emplace_back(command.name);
  // An unknown command is named, with the nearest known one.
  if (argc > 1 && argv[1][0] != '-' &&
      std::find(names.begin(), names.end(), argv[1]) == names.end()) {
    const std::string near = loadstar::closest(argv[1], names);
    std::fprintf(stderr, "loadstar: unknown command '%s'%s; `loadstar --help` lists them\n",
                 argv[1], near.empty() ? "" : (" (did you mean '" + near + "'?)").c_str());
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ValidationError& e) {
    // A verb or kind not among a command's choices ("resource: servics not
    // in {services,...}"): the nearest one too.
    std::smatch m;
    const std::string what = e.what();
    if (std::regex_search(what, m, std::regex(R"((\S+) not in \{([^}]*)\})"))) {
      std::vector<std::string> choices;
      std::stringstream list(m[2].str());
      for (std::string c; std::getline(list, c, ',');) choices.push_back(c);
      const std::string near = loadstar::closest(m[1].str(), choices);
      std::fprintf(stderr, "loadstar: %s%s\n", what.c_str(),
                   near.empty() ? "" : (" (did you mean '" + near + "'?)").c_str());
      return 2;
    }
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (auto s = loadstar::init_logging(log_level); !s.ok()) {
    std::fprintf(stderr, "loadstar: %s\n", s.error().message.c_str());
    return 2;
  }
  for (auto& [sub, run] : runners) {
    if (!sub->parsed()) continue;
    // A backstop: each command reports its errors itself, but an answer
    // from another process shaped unlike what this version expects (an
    // older admin API, a wrong port) must end with a message, not an abort.
    try {
      return run();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "loadstar %s: %s\n", sub->get_name().c_str(), e.what());
      return 1;
    }
  }
  return 2;
}
