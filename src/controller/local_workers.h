// A Job's workers as child processes of `loadstar up`: the job's command
// run with its spec.env and the gang's environment (workers.h), in the
// job's directory under the data directory, which keeps across attempts
// what the workers leave there:
//
//   DATA/jobs/JOB/checkpoint/       LOADSTAR_CHECKPOINT_DIR: a preempted or
//                                   retried attempt resumes from it
//   DATA/jobs/JOB/worker-N.log      each attempt's output, appended
//   DATA/jobs/JOB/ended             how it ended (a restart does not rerun it)
//
// Children die with the parent (PR_SET_PDEATHSIG).
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "common/process.h"
#include "controller/workers.h"

namespace loadstar::controller {

class LocalWorkers : public WorkerRuntime {
 public:
  explicit LocalWorkers(std::filesystem::path data_dir) : data_dir_(std::move(data_dir)) {}

  Status start(const WorkerLaunch& launch) override;
  WorkerStatus status(const std::string& worker) override;
  void stop(const std::string& worker, double grace_s) override;
  std::string logs_of(const std::string& job) const override;
  // DATA/jobs/JOB/ended: the phase, then the message.
  void record_end(const std::string& job, const std::string& phase,
                  const std::string& message) override;
  std::optional<std::pair<std::string, std::string>> ended(const std::string& job) override;
  void forget(const std::string& job) override;

 private:
  using Clock = std::chrono::steady_clock;
  struct Worker {
    Subprocess process;
    std::filesystem::path log;
    std::optional<Clock::time_point> kill_at;  // SIGKILL then, once stopped
  };
  std::filesystem::path job_dir(const std::string& job) const;

  std::filesystem::path data_dir_;
  std::map<std::string, Worker> workers_;
};

}  // namespace loadstar::controller
