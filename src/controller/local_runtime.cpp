#include "controller/local_runtime.h"

#include <signal.h>

#include <fstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "agent/agent.h"
#include "common/units.h"
#include "http/client.h"
#include "model/model_dir.h"

namespace loadstar::controller {

namespace fs = std::filesystem;

LocalRuntime::~LocalRuntime() {
  for (auto& [name, e] : engines_) e.process.stop(std::chrono::milliseconds(0));
}

Result<fs::path> LocalRuntime::prepare_model(const api::Model& model) {
  const fs::path cached = options_.data_dir / "cache" / "models" / model.metadata.name;
  std::error_code ec;
  if (fs::exists(cached / "config.json", ec)) return cached;
  const std::string& source = model.spec.source;
  if (source.starts_with("synth://")) {
    spdlog::info("writing synthetic model '{}' ({} bytes) to {}", model.metadata.name,
                 model.spec.size_bytes.value_or(0), cached.string());
    model::SynthOptions synth;
    synth.size_bytes = model.spec.size_bytes.value_or(0);
    synth.output = cached;
    synth.name = model.metadata.name;
    auto report = model::synth_model(synth);
    if (!report.ok())
      return make_error(ErrorCode::kIo, "cannot write synthetic model: {}", report.error().message);
    return cached;
  }
  if (source.starts_with("file://")) {
    fs::path path = source.substr(7);
    if (fs::exists(path / "config.json", ec)) return path;
    return make_error(ErrorCode::kNotFound, "model directory {} has no config.json", path.string());
  }
  if (!options_.agent)
    return make_error(ErrorCode::kUnavailable,
                      "fetching {} needs a node agent, and this controller has none", source);
  // Staged by the agent: ready, or Pending with its progress. A failed
  // staging is tried again after 30 s.
  auto progress = options_.agent->progress(model.metadata.name);
  if (!progress || progress->source != source ||
      (progress->state == agent::StageState::kFailed && progress->elapsed_s > 30) ||
      (progress->state == agent::StageState::kReady && !fs::exists(progress->dir, ec)))
    progress = options_.agent->stage(model.metadata.name, source);
  switch (progress->state) {
    case agent::StageState::kReady:
      return progress->dir;
    case agent::StageState::kFailed:
      return make_error(ErrorCode::kUnavailable, "staging {} failed: {}", source, progress->error);
    default:
      return make_error(ErrorCode::kUnavailable,
                        "staging {}: {} of {} ({} from the origin, {} from peers)", source,
                        format_bytes(progress->bytes_done), format_bytes(progress->bytes_total),
                        format_bytes(progress->bytes_origin), format_bytes(progress->bytes_peers));
  }
}

Status LocalRuntime::launch(const EngineLaunch& launch) {
  if (engines_.count(launch.replica))
    return make_error(ErrorCode::kUnavailable, "its previous engine is still stopping");
  const api::InferenceService& svc = *launch.service;
  if (svc.spec.engine.name != "engine-sim")
    return make_error(ErrorCode::kUnavailable,
                      "engine '{}' cannot run locally yet (engine-sim can)", svc.spec.engine.name);
  auto model_dir = prepare_model(*launch.model);
  if (!model_dir.ok()) {
    Error e = std::move(model_dir).error();
    e.code = ErrorCode::kUnavailable;  // Pending until the model is there
    return e;
  }
  const fs::path run_dir = options_.data_dir / "run";
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  Engine engine;
  engine.port_file = run_dir / (launch.replica + ".port");
  fs::remove(engine.port_file, ec);
  ProcessOptions p;
  p.argv = {options_.loadstar_bin,
            "engine-sim",
            "--model",
            fs::absolute(*model_dir).string(),
            "--served-model-name",
            svc.metadata.name,
            "--port",
            "0",
            "--port-file",
            engine.port_file.string()};
  for (const auto& a : svc.spec.engine.args) p.argv.push_back(a);
  p.output_path = (run_dir / (launch.replica + ".log")).string();
  LS_ASSIGN_OR_RETURN(engine.process, Subprocess::start(p));
  spdlog::info("replica {}: started engine-sim (pid {})", launch.replica, engine.process.pid());
  engines_.emplace(launch.replica, std::move(engine));
  return ok_status();
}

EngineStatus LocalRuntime::status(const std::string& replica) {
  EngineStatus st;
  auto it = engines_.find(replica);
  if (it == engines_.end()) return st;
  Engine& e = it->second;
  st.exists = st.staged = st.started = true;
  st.pid = e.process.pid();
  if (!e.process.running()) {
    const int code = e.process.wait_for(std::chrono::milliseconds(0)).value_or(-1);
    st.exists = false;
    st.exited = !e.stop_sent;
    st.message = fmt::format("engine exited with status {} (see {}/run/{}.log)", code,
                             options_.data_dir.string(), replica);
    engines_.erase(it);
    return st;
  }
  if (e.stop_sent && Clock::now() - *e.stop_sent > std::chrono::milliseconds(static_cast<int64_t>(
                                                       options_.stop_grace_s * 1000)))
    e.process.signal(SIGKILL);
  if (e.port == 0) {
    std::error_code ec;
    if (fs::exists(e.port_file, ec)) {
      std::ifstream in(e.port_file);
      int port = 0;
      if (in >> port && port > 0 && port < 65536) e.port = static_cast<uint16_t>(port);
    }
  }
  st.host = "127.0.0.1";
  st.port = e.port;
  if (!e.ready && e.port != 0 && !e.stop_sent) {
    auto health = http::fetch({.port = e.port, .target = "/health", .timeout_s = 0.25});
    e.ready = health.ok() && health->status == 200;
  }
  st.ready = e.ready;
  st.message = e.ready ? "" : e.port ? "loading weights" : "waiting for /health";
  return st;
}

void LocalRuntime::stop(const std::string& replica) {
  auto it = engines_.find(replica);
  if (it == engines_.end() || it->second.stop_sent) return;
  it->second.process.signal(SIGTERM);
  it->second.stop_sent = Clock::now();
}

void LocalRuntime::kill(const std::string& replica) {
  auto it = engines_.find(replica);
  if (it == engines_.end()) return;
  it->second.process.signal(SIGKILL);
  if (!it->second.stop_sent) it->second.stop_sent = Clock::now();
}

void LocalRuntime::keep_warm(const api::Model& model, uint32_t /*nodes*/) {
  (void)prepare_model(model);  // one machine: one agent, whatever the count
}

std::set<std::string, std::less<>> LocalRuntime::models_on(const std::string& /*node*/) {
  std::set<std::string, std::less<>> cached;
  if (options_.agent)
    for (const auto& m : options_.agent->cache().list()) cached.insert(m.name);
  return cached;
}

void LocalRuntime::end_pass(const std::vector<std::string>& models_in_use) {
  // Engines that were told to stop are reaped (and killed after the grace).
  for (auto it = engines_.begin(); it != engines_.end();) {
    const std::string name = it->first;
    ++it;
    if (engines_.at(name).stop_sent) (void)status(name);
  }
  if (!options_.agent) return;
  // The models running engines read are not evicted (and count as used now).
  std::map<std::string, int> uses;
  for (const auto& m : models_in_use) ++uses[m];
  if (uses != agent_uses_) {
    options_.agent->cache().set_in_use(uses);
    agent_uses_ = std::move(uses);
  }
}

}  // namespace loadstar::controller
