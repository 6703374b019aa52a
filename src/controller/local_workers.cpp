#include "controller/local_workers.h"

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <fstream>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "controller/local_runtime.h"  // last_error_line

namespace fs = std::filesystem;

namespace loadstar::controller {

std::map<std::string, std::string> worker_env(const WorkerLaunch& launch,
                                              const std::string& leader_address) {
  const api::Job& job = *launch.job;
  std::map<std::string, std::string> env = job.spec.env;
  const std::string index = std::to_string(launch.index);
  const std::string workers = std::to_string(job.spec.workers);
  env["LOADSTAR_JOB_NAME"] = job.metadata.name;
  env["LOADSTAR_WORKER_INDEX"] = index;
  env["LOADSTAR_WORKERS"] = workers;
  env["LOADSTAR_ATTEMPT"] = std::to_string(launch.attempt);
  env["LOADSTAR_LEADER_ADDRESS"] = leader_address;
  env["LOADSTAR_NODE"] = launch.node;
  env["LOADSTAR_DEVICES"] = launch.devices;
  env["LWS_LEADER_ADDRESS"] = leader_address;
  env["LWS_GROUP_SIZE"] = workers;
  env["LWS_WORKER_INDEX"] = index;
  env["JOB_COMPLETION_INDEX"] = index;
  std::string cards;
  for (const DeviceShare& s : launch.shares)
    cards += fmt::format("{}{}", cards.empty() ? "" : ",", s.device);
  if (!cards.empty()) env["CUDA_VISIBLE_DEVICES"] = cards;
  return env;
}

namespace {

// `program` as execve needs it: a path as given, else found on PATH.
Result<std::string> resolve_program(const std::string& program) {
  if (program.find('/') != std::string::npos) return program;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    const fs::path candidate = fs::path(dirs.substr(start, end - start)) / program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    start = end + 1;
  }
  return make_error(ErrorCode::kInvalidArgument, "spec.command[0]: '{}' is not on PATH ({})",
                    program, dirs);
}

}  // namespace

fs::path LocalWorkers::job_dir(const std::string& job) const {
  return data_dir_ / "jobs" / job;
}

std::string LocalWorkers::logs_of(const std::string& job) const {
  return fs::absolute(job_dir(job)).string();
}

void LocalWorkers::record_end(const std::string& job, const std::string& phase,
                              const std::string& message) {
  std::error_code ec;
  fs::create_directories(job_dir(job), ec);
  std::ofstream out(job_dir(job) / "ended", std::ios::trunc);
  out << phase << "\n" << message << "\n";
}

std::optional<std::pair<std::string, std::string>> LocalWorkers::ended(const std::string& job) {
  std::ifstream in(job_dir(job) / "ended");
  std::string phase, message;
  if (!in || !std::getline(in, phase) || (phase != "Succeeded" && phase != "Failed"))
    return std::nullopt;
  std::getline(in, message);
  return std::pair{phase, message};
}

void LocalWorkers::forget(const std::string& job) {
  std::error_code ec;
  fs::remove(job_dir(job) / "ended", ec);
}

Status LocalWorkers::start(const WorkerLaunch& launch) {
  if (workers_.count(launch.worker))
    return make_error(ErrorCode::kUnavailable, "worker {} is still stopping", launch.worker);
  const api::Job& job = *launch.job;
  const fs::path dir = fs::absolute(job_dir(job.metadata.name));
  std::error_code ec;
  fs::create_directories(dir / "checkpoint", ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot create {}: {}", dir.string(), ec.message());
  LS_ASSIGN_OR_RETURN(std::string program, resolve_program(job.spec.command.front()));
  ProcessOptions options;
  options.argv = job.spec.command;
  options.argv.front() = program;
  options.working_dir = dir.string();
  for (auto& [name, value] : worker_env(launch, "127.0.0.1"))
    options.env.push_back(name + "=" + value);
  options.env.push_back("LOADSTAR_CHECKPOINT_DIR=" + (dir / "checkpoint").string());
  Worker w;
  w.log = dir / fmt::format("worker-{}.log", launch.index);
  {
    std::ofstream header(w.log, std::ios::app);
    header << fmt::format("--- attempt {} of job {}, worker {}/{}, on {} {}\n", launch.attempt,
                          job.metadata.name, launch.index, job.spec.workers, launch.node,
                          launch.devices.empty() ? "(no GPU)" : launch.devices);
  }
  options.output_path = w.log.string();
  LS_ASSIGN_OR_RETURN(w.process, Subprocess::start(options));
  spdlog::info("job {}: worker {} started (pid {}, log {})", job.metadata.name, launch.index,
               w.process.pid(), w.log.string());
  workers_.emplace(launch.worker, std::move(w));
  return ok_status();
}

WorkerStatus LocalWorkers::status(const std::string& worker) {
  WorkerStatus st;
  auto it = workers_.find(worker);
  if (it == workers_.end()) return st;
  Worker& w = it->second;
  st.exists = true;
  if (w.process.running()) {
    if (w.kill_at && Clock::now() >= *w.kill_at) w.process.signal_group(SIGKILL);
    return st;
  }
  st.exists = false;
  st.exited = true;
  st.exit_code = w.process.wait_for(std::chrono::milliseconds(0)).value_or(-1);
  const std::string said = last_error_line(w.log);
  st.message =
      said.empty()
          ? fmt::format("exited with status {} (log: {})", st.exit_code, w.log.string())
          : fmt::format("exited with status {}: {} (log: {})", st.exit_code, said, w.log.string());
  workers_.erase(it);
  return st;
}

void LocalWorkers::stop(const std::string& worker, double grace_s) {
  auto it = workers_.find(worker);
  if (it == workers_.end() || it->second.kill_at) return;
  it->second.process.signal_group(SIGTERM);
  it->second.kill_at =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace_s * 1000));
}

}  // namespace loadstar::controller
