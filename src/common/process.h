// A child process: started with argv, optionally with its output sent to a
// file, stopped with a signal. The child dies with its parent (PDEATHSIG), so a
// killed Loadstar leaves no engine behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace loadstar {

struct ProcessOptions {
  std::vector<std::string> argv;
  // Where stdout and stderr go; empty inherits the parent's.
  std::string output_path;
  // Extra environment entries, "NAME=value".
  std::vector<std::string> env;
  // Where it starts; empty: the parent's working directory.
  std::string working_dir;
};

class Subprocess {
 public:
  static Result<Subprocess> start(const ProcessOptions& options);

  Subprocess() = default;
  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&& other) noexcept;
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  // Kills (SIGKILL) and reaps a child still running.
  ~Subprocess();

  pid_t pid() const { return pid_; }
  bool running();
  // Sends `signal`; no effect once the child has been reaped.
  void signal(int signal);
  // Sends `signal` to the child's process group (it leads its own), which
  // reaches what a shell it runs started too.
  void signal_group(int signal);
  // Waits up to `timeout` for exit; returns the exit status (128+signal for a
  // signal), or nullopt if it is still running.
  std::optional<int> wait_for(std::chrono::milliseconds timeout);
  // SIGTERM, then SIGKILL after `grace`; returns the exit status.
  int stop(std::chrono::milliseconds grace = std::chrono::milliseconds(5000));

 private:
  bool try_reap(int flags);

  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

}  // namespace loadstar
