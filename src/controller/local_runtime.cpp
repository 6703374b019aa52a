#include "controller/local_runtime.h"

#include <signal.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "agent/agent.h"
#include "api/disaggregation.h"
#include "common/strings.h"
#include "common/units.h"
#include "http/client.h"
#include "model/gguf.h"
#include "model/model_dir.h"

namespace loadstar::controller {

namespace fs = std::filesystem;

LocalRuntime::~LocalRuntime() {
  for (auto& [name, e] : engines_) e.process.stop(std::chrono::milliseconds(0));
}

Result<fs::path> LocalRuntime::prepare_model(const api::Model& model, const std::string& version) {
  const std::string& source = model.spec.source;
  // A synthetic model is written once per source: models/NAME for
  // synth://NAME, models/NAME@OTHER for synth://OTHER, so that a Model whose
  // source changes (a new version, rolled out) gets new bytes, and the old
  // version's replicas keep theirs.
  const std::string synth_name = source.starts_with("synth://") ? source.substr(8) : "";
  const fs::path cached = options_.data_dir / "cache" / "models" /
                          (synth_name.empty() || synth_name == model.metadata.name
                               ? model.metadata.name
                               : fmt::format("{}@{}", model.metadata.name, synth_name));
  std::error_code ec;
  const bool gguf = model.spec.format == "gguf";
  if (!gguf && fs::exists(cached / "config.json", ec)) return cached;
  if (gguf && fs::exists(cached / "model.gguf", ec)) return cached;
  if (source.starts_with("synth://") && gguf) {
    auto vocab = model::find_vocab("llama-bpe");
    if (!vocab.ok()) return make_error(ErrorCode::kUnavailable, "{}", vocab.error().message);
    spdlog::info("writing synthetic GGUF model '{}' ({} bytes) to {}", model.metadata.name,
                 model.spec.size_bytes.value_or(0), cached.string());
    auto report = model::synth_gguf({.size_bytes = model.spec.size_bytes.value_or(64ull << 20),
                                     .output = cached / "model.gguf",
                                     .vocab = *vocab,
                                     .name = synth_name});
    if (!report.ok())
      return make_error(ErrorCode::kIo, "cannot write synthetic model: {}", report.error().message);
    return cached;
  }
  if (source.starts_with("synth://")) {
    spdlog::info("writing synthetic model '{}' ({} bytes) to {}", model.metadata.name,
                 model.spec.size_bytes.value_or(0), cached.string());
    model::SynthOptions synth;
    synth.size_bytes = model.spec.size_bytes.value_or(0);
    synth.output = cached;
    synth.name = synth_name;
    auto report = model::synth_model(synth);
    if (!report.ok())
      return make_error(ErrorCode::kIo, "cannot write synthetic model: {}", report.error().message);
    return cached;
  }
  if (source.starts_with("file://")) {
    fs::path path = source.substr(7);
    if (gguf && (fs::is_regular_file(path, ec) || fs::is_directory(path, ec))) return path;
    // A model has config.json; an adapter (PEFT) adapter_config.json.
    const char* marker = model.spec.adapter_of.empty() ? "config.json" : "adapter_config.json";
    if (fs::exists(path / marker, ec)) return path;
    return make_error(ErrorCode::kNotFound, "{} directory {} has no {}",
                      model.spec.adapter_of.empty() ? "model" : "adapter", path.string(), marker);
  }
  if (!options_.agent)
    return make_error(ErrorCode::kUnavailable,
                      "fetching {} needs a node agent, and this controller has none", source);
  // Staged by the agent: ready, or Pending with its progress. A failed
  // staging is tried again after 30 s.
  if (!version.empty())
    if (auto dir = options_.agent->cache().version_dir(model.metadata.name, version)) return *dir;
  auto progress = options_.agent->progress(model.metadata.name);
  if (!progress || progress->source != source || progress->want_version != version ||
      (progress->state == agent::StageState::kFailed && progress->elapsed_s > 30) ||
      (progress->state == agent::StageState::kReady && !fs::exists(progress->dir, ec)))
    progress = options_.agent->stage(model.metadata.name, source, false, version);
  // One staging per model at a time: another version's may be under way.
  if (progress->want_version != version && progress->state != agent::StageState::kReady &&
      progress->state != agent::StageState::kFailed)
    return make_error(ErrorCode::kUnavailable, "staging {} (another version first)", source);
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

std::optional<fs::path> find_engine_program(const std::string& engine, const std::string& program) {
  std::string env = "LOADSTAR_";
  for (char c : engine) env += std::isalnum(static_cast<unsigned char>(c)) ? std::toupper(c) : '_';
  env += "_BIN";
  std::error_code ec;
  if (const char* path = std::getenv(env.c_str()); path && *path)
    return fs::is_regular_file(path, ec) ? std::optional<fs::path>(path) : std::nullopt;
  std::vector<fs::path> dirs;
  if (const char* path = std::getenv("PATH"))
    for (std::string_view rest = path; !rest.empty();) {
      const size_t colon = rest.find(':');
      dirs.emplace_back(rest.substr(0, colon));
      rest = colon == std::string_view::npos ? "" : rest.substr(colon + 1);
    }
  if (program == "llama-server")
    if (const char* home = std::getenv("HOME"); home && *home)
      for (const auto& v : fs::directory_iterator(fs::path(home) / ".cache" / "loadstar-llama", ec))
        dirs.push_back(v.path() / "bin");
  for (const auto& dir : dirs)
    if (!dir.empty() && access((dir / program).c_str(), X_OK) == 0) return dir / program;
  return std::nullopt;
}

std::string last_error_line(const fs::path& log) {
  std::ifstream in(log, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff from = std::max<std::streamoff>(0, size - 16384);
  in.seekg(from);
  std::string tail(static_cast<size_t>(size - from), '\0');
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  if (from > 0)  // cut mid-line
    if (auto nl = tail.find('\n'); nl != std::string::npos) tail.erase(0, nl + 1);
  return last_error_line_of(tail);
}

namespace {

// A port nothing listens on now (the engine binds it a moment later).
Result<uint16_t> free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return make_error(ErrorCode::kIo, "socket: {}", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  if (!ok) return make_error(ErrorCode::kIo, "cannot find a free port: {}", std::strerror(errno));
  return ntohs(addr.sin_port);
}

// The one .gguf file a llama.cpp engine reads: the path itself, or the only
// one in its directory.
Result<fs::path> gguf_file(const fs::path& model) {
  std::error_code ec;
  if (fs::is_regular_file(model, ec)) return model;
  std::vector<fs::path> found;
  for (const auto& entry : fs::recursive_directory_iterator(model, ec))
    if (entry.path().extension() == ".gguf") found.push_back(entry.path());
  if (found.size() == 1) return found.front();
  return make_error(ErrorCode::kInvalidArgument, "{} holds {} .gguf files; llama.cpp needs one",
                    model.string(), found.size());
}

}  // namespace

Result<std::string> LocalRuntime::adapter_path(const api::Model& adapter) {
  LS_ASSIGN_OR_RETURN(fs::path dir, prepare_model(adapter));
  if (adapter.spec.format == "gguf") {
    LS_ASSIGN_OR_RETURN(dir, gguf_file(dir));
  }
  return fs::absolute(dir).string();
}

std::optional<std::string> LocalRuntime::missing(const engines::Engine& engine) {
  auto cached = missing_.find(engine.name);
  if (cached != missing_.end()) return cached->second;
  std::optional<std::string> why;
  if (!find_engine_program(engine.name, engine.program)) {
    why = fmt::format("engine '{}' cannot run on this machine: no `{}` found; {}", engine.name,
                      engine.program, engine.install_hint);
  } else if (!engine.local_check.empty()) {
    ProcessOptions check;
    check.argv = engine.local_check;
    check.output_path = "/dev/null";
    auto p = Subprocess::start(check);
    const auto code = p.ok() ? p->wait_for(std::chrono::seconds(30)) : std::nullopt;
    if (!code || *code != 0)
      why = fmt::format("engine '{}' cannot run on this machine (`{}` failed); {}", engine.name,
                        fmt::join(engine.local_check, " "), engine.install_hint);
  }
  missing_[engine.name] = why;
  return why;
}

Status LocalRuntime::launch(const EngineLaunch& launch) {
  if (engines_.count(launch.replica))
    return make_error(ErrorCode::kUnavailable, "its previous engine is still stopping");
  const api::InferenceService& svc = *launch.service;
  const engines::Engine* engine = engines::find(svc.spec.engine.name);
  if (!engine)
    return make_error(ErrorCode::kInvalidArgument, "unknown engine '{}'", svc.spec.engine.name);
  if (!launch.members.empty() && !engine->group_worker_command.empty())
    return make_error(ErrorCode::kInvalidArgument,
                      "spec.multiNode: {} spans nodes through Ray, whose cluster Loadstar forms "
                      "in Kubernetes mode only (locally: sglang or engine-sim)",
                      engine->name);
  // Never a stand-in: an engine that is not here leaves the replica Pending
  // and says what to install.
  if (engine->program != "loadstar")
    if (auto why = missing(*engine)) return make_error(ErrorCode::kUnavailable, "{}", *why);
  if (launch.model->spec.format != engine->model_format)
    return make_error(ErrorCode::kInvalidArgument,
                      "engine '{}' serves {} models; Model '{}' is {} (spec.format)", engine->name,
                      engine->model_format, launch.model->metadata.name, launch.model->spec.format);
  auto model_dir = prepare_model(*launch.model, launch.model_version);
  if (!model_dir.ok()) {
    Error e = std::move(model_dir).error();
    e.code = ErrorCode::kUnavailable;  // Pending until the model is there
    return e;
  }
  fs::path model_path = fs::absolute(*model_dir);
  if (engine->model_is_file) {
    LS_ASSIGN_OR_RETURN(model_path, gguf_file(model_path));
  }
  const fs::path run_dir = options_.data_dir / "run";
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  Engine e;
  e.health_path = engine->health_path;
  e.stop_grace_s = std::min(options_.stop_grace_s, engine->stop_grace_s);
  e.log = run_dir / (launch.replica + ".log");
  engines::LaunchSpec spec;
  spec.model = model_path.string();
  spec.served_name = api::served_name(svc);
  spec.kv_role = api::kv_role(svc);
  if (svc.spec.prefill) spec.kv_link = svc.spec.prefill->link;
  spec.gpus = launch.shares.empty() ? 0 : static_cast<uint32_t>(launch.shares.size());
  spec.context_length = svc.spec.engine.context_length;
  spec.max_sequences = svc.spec.engine.max_sequences;
  spec.threads = svc.spec.engine.threads;
  spec.prefix_cache = svc.spec.engine.prefix_cache;
  spec.extra_args = svc.spec.engine.args;
  if (svc.spec.lora) {
    // Adapters are staged like models (Pending until they are there); on
    // demand, the gateway loads them later (adapter_path).
    spec.lora_on_demand = svc.spec.lora->on_demand;
    for (const api::Model& adapter :
         spec.lora_on_demand ? std::vector<api::Model>{} : launch.adapters) {
      auto path = adapter_path(adapter);
      if (!path.ok()) {
        Error e = std::move(path).error();
        e.code = ErrorCode::kUnavailable;
        e.message = fmt::format("adapter {}: {}", adapter.metadata.name, e.message);
        return e;
      }
      spec.adapters.push_back({adapter.metadata.name, *path});
    }
    spec.max_loras = svc.spec.lora->max_loras;
    spec.max_cpu_loras = svc.spec.lora->max_cpu_loras;
    spec.max_lora_rank = svc.spec.lora->max_rank;
  }
  if (svc.spec.engine.kv_events && engine->kv_events) {
    LS_ASSIGN_OR_RETURN(uint16_t events_port, free_port());
    e.kv_events = fmt::format("tcp://127.0.0.1:{}", events_port);
    spec.kv_events_endpoint = e.kv_events;
  }
  ProcessOptions p;
  if (engine->writes_port_file) {
    e.port_file = run_dir / (launch.replica + ".port");
    fs::remove(e.port_file, ec);
    spec.port = 0;
  } else {
    LS_ASSIGN_OR_RETURN(spec.port, free_port());
    e.port = spec.port;
  }
  // A multi-node replica: the other nodes run the same engine at their
  // rank, joined to the leader's group address.
  if (!launch.members.empty()) {
    spec.nnodes = static_cast<uint32_t>(launch.members.size() + 1);
    spec.master_addr = "127.0.0.1";
    e.master_is_port = engine->writes_port_file;  // engine-sim's group port is its HTTP port
    if (!e.master_is_port) {
      LS_ASSIGN_OR_RETURN(spec.master_port, free_port());
    }
  }
  p.argv.push_back(engine->program == "loadstar"
                       ? options_.loadstar_bin
                       : find_engine_program(engine->name, engine->program)->string());
  p.argv.insert(p.argv.end(), engine->subcommand.begin(), engine->subcommand.end());
  for (auto& flag : engine->flags(spec)) p.argv.push_back(std::move(flag));
  if (engine->writes_port_file) {
    p.argv.push_back("--port-file");
    p.argv.push_back(e.port_file.string());
  }
  p.output_path = e.log.string();
  // Engines read the model from here; none downloads behind the agent.
  p.env = {"HF_HUB_OFFLINE=1"};
  if (spec.lora_on_demand) p.env.push_back(engines::kRuntimeLoraEnv);
  if (!launch.members.empty()) {
    for (uint32_t rank = 1; rank < spec.nnodes; ++rank) {
      engines::LaunchSpec member = spec;
      member.node_rank = rank;
      member.gpus = static_cast<uint32_t>(launch.members[rank - 1].shares.size());
      if (!engine->writes_port_file) {
        LS_ASSIGN_OR_RETURN(member.port, free_port());
      }
      Engine::Member m;
      m.options = p;
      m.options.argv.resize(1 + engine->subcommand.size());
      for (auto& flag : engine->flags(member)) m.options.argv.push_back(std::move(flag));
      m.options.output_path =
          (run_dir / fmt::format("{}-node{}.log", launch.replica, rank)).string();
      e.members.push_back(std::move(m));
    }
  }
  LS_ASSIGN_OR_RETURN(e.process, Subprocess::start(p));
  spdlog::info("replica {}: started {} (pid {}): {}", launch.replica, engine->name, e.process.pid(),
               fmt::join(p.argv, " "));
  engines_.emplace(launch.replica, std::move(e));
  return ok_status();
}

void LocalRuntime::tend_members(const std::string& replica, Engine& e) {
  if (e.members.empty() || e.stop_sent) return;
  for (size_t i = 0; i < e.members.size(); ++i) {
    Engine::Member& m = e.members[i];
    if (!m.started) {
      if (e.master_is_port && e.port == 0) return;  // the leader has no port yet
      if (e.master_is_port)
        for (size_t a = 0; a + 1 < m.options.argv.size(); ++a)
          if (m.options.argv[a] == "--master-port") m.options.argv[a + 1] = std::to_string(e.port);
      auto started = Subprocess::start(m.options);
      if (!started.ok()) {
        e.group_failure =
            fmt::format("node {} could not start: {}", i + 1, started.error().message);
      } else {
        m.process = std::move(started).value();
        m.started = true;
        spdlog::info("replica {}: node {} started (pid {})", replica, i + 1, m.process.pid());
        continue;
      }
    } else if (!m.process.running()) {
      const int code = m.process.wait_for(std::chrono::milliseconds(0)).value_or(-1);
      const std::string said = last_error_line(m.options.output_path);
      e.group_failure = fmt::format("node {} exited with status {}{}{} (log: {})", i + 1, code,
                                    said.empty() ? "" : ": ", said, m.options.output_path);
    }
    if (e.group_failure.empty()) continue;
    // One node gone ends the group: the leader and the rest stop, and the
    // replica is restarted as a whole.
    spdlog::warn("replica {}: {}; its group stops", replica, e.group_failure);
    e.process.signal(SIGTERM);
    for (auto& other : e.members)
      if (other.started) other.process.signal(SIGTERM);
    e.stop_sent = Clock::now();
    return;
  }
}

EngineStatus LocalRuntime::status(const std::string& replica) {
  EngineStatus st;
  auto it = engines_.find(replica);
  if (it == engines_.end()) return st;
  Engine& e = it->second;
  st.exists = st.staged = st.started = true;
  st.pid = e.process.pid();
  tend_members(replica, e);
  if (!e.process.running()) {
    const int code = e.process.wait_for(std::chrono::milliseconds(0)).value_or(-1);
    st.exists = false;
    st.exited = !e.stop_sent || !e.group_failure.empty();
    // The engine's own last word first: where the user looks.
    const std::string said = last_error_line(e.log);
    st.message =
        said.empty()
            ? fmt::format("engine exited with status {} (log: {})", code, e.log.string())
            : fmt::format("engine exited with status {}: {} (log: {})", code, said, e.log.string());
    // A group ended by one of its nodes says that node's word.
    if (!e.group_failure.empty()) st.message = "multi-node group ended: " + e.group_failure;
    engines_.erase(it);
    return st;
  }
  if (e.stop_sent && Clock::now() - *e.stop_sent >
                         std::chrono::milliseconds(static_cast<int64_t>(e.stop_grace_s * 1000)))
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
  st.kv_events = e.kv_events;
  if (!e.ready && e.port != 0 && !e.stop_sent) {
    auto health = http::fetch({.port = e.port, .target = e.health_path, .timeout_s = 0.25});
    e.ready = health.ok() && health->status == 200;
  }
  st.ready = e.ready;
  st.message = e.ready ? "" : e.port ? "loading weights" : "waiting for its port";
  return st;
}

void LocalRuntime::stop(const std::string& replica) {
  auto it = engines_.find(replica);
  if (it == engines_.end() || it->second.stop_sent) return;
  it->second.process.signal(SIGTERM);
  for (auto& m : it->second.members)
    if (m.started) m.process.signal(SIGTERM);
  it->second.stop_sent = Clock::now();
}

void LocalRuntime::kill(const std::string& replica) {
  auto it = engines_.find(replica);
  if (it == engines_.end()) return;
  it->second.process.signal(SIGKILL);
  for (auto& m : it->second.members)
    if (m.started) m.process.signal(SIGKILL);
  if (!it->second.stop_sent) it->second.stop_sent = Clock::now();
}

void LocalRuntime::keep_warm(const api::Model& model, uint32_t /*nodes*/,
                             const std::string& model_version) {
  (void)prepare_model(model, model_version);  // one machine: one agent, whatever the count
}

Result<std::string> LocalRuntime::resolve_version(const std::string& source) {
  if (!options_.agent)
    return make_error(ErrorCode::kUnavailable,
                      "resolving {} needs a node agent, and this controller has none", source);
  LS_ASSIGN_OR_RETURN(agent::Manifest manifest, options_.agent->resolve_source(source));
  return manifest.version_id();
}

std::set<std::string, std::less<>> LocalRuntime::models_on(const std::string& /*node*/) {
  std::set<std::string, std::less<>> cached;
  if (options_.agent)
    for (const auto& m : options_.agent->cache().list()) cached.insert(m.name);
  return cached;
}

void LocalRuntime::end_pass(const std::vector<std::string>& models_in_use) {
  // Engines that were told to stop are reaped (and killed after the grace).
  // A group that one of its nodes ended is not: the controller still has to
  // hear why (its next status), and that call kills it after the grace.
  for (auto it = engines_.begin(); it != engines_.end();) {
    const std::string name = it->first;
    ++it;
    const Engine& e = engines_.at(name);
    if (e.stop_sent && e.group_failure.empty()) (void)status(name);
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
