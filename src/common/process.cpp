#include "common/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace loadstar {

Result<Subprocess> Subprocess::start(const ProcessOptions& options) {
  if (options.argv.empty()) return make_error(ErrorCode::kInvalidArgument, "empty argv");
  // Everything the child needs is prepared before fork: after fork only
  // async-signal-safe calls are allowed.
  std::vector<char*> argv;
  for (const auto& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // The extra entries replace inherited ones of the same name (getenv
  // returns the first match, so appending would not override).
  std::vector<std::string> env_storage;
  auto name_of = [](std::string_view entry) { return entry.substr(0, entry.find('=')); };
  for (char** e = environ; *e; ++e) {
    bool overridden = false;
    for (const auto& extra : options.env) overridden = overridden || name_of(extra) == name_of(*e);
    if (!overridden) env_storage.emplace_back(*e);
  }
  for (const auto& e : options.env) env_storage.push_back(e);
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);
  int out_fd = -1;
  if (!options.output_path.empty()) {
    out_fd = ::open(options.output_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0) {
      return make_error(ErrorCode::kIo, "cannot open {}: {}", options.output_path,
                        std::strerror(errno));
    }
  }
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    if (out_fd >= 0) ::close(out_fd);
    return make_error(ErrorCode::kIo, "fork failed: {}", std::strerror(err));
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
    if (out_fd >= 0) {
      ::dup2(out_fd, STDOUT_FILENO);
      ::dup2(out_fd, STDERR_FILENO);
    }
    // Nothing of the parent's but stdin/stdout/stderr: Asio's sockets are
    // not close-on-exec, and an engine must not hold a gateway's client
    // connections (or its listening sockets) open.
    ::close_range(3, ~0U, 0);
    ::setpgid(0, 0);  // a terminal's Ctrl-C reaches the parent, which stops us in order
    // The parent may block signals to sigwait() for them; the child must not
    // inherit that, or SIGTERM could never stop it.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (!options.working_dir.empty() && ::chdir(options.working_dir.c_str()) != 0) ::_exit(127);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  if (out_fd >= 0) ::close(out_fd);
  Subprocess process;
  process.pid_ = pid;
  return process;
}

Subprocess::Subprocess(Subprocess&& other) noexcept
    : pid_(other.pid_), exit_status_(other.exit_status_) {
  other.pid_ = -1;
}

Subprocess& Subprocess::operator=(Subprocess&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0 && !exit_status_) stop(std::chrono::milliseconds(0));
    pid_ = other.pid_;
    exit_status_ = other.exit_status_;
    other.pid_ = -1;
  }
  return *this;
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && !exit_status_) stop(std::chrono::milliseconds(0));
}

bool Subprocess::try_reap(int flags) {
  if (pid_ <= 0 || exit_status_) return true;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, flags);
  if (r == pid_) {
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return true;
  }
  if (r < 0 && errno == ECHILD) {
    exit_status_ = -1;
    return true;
  }
  return false;
}

bool Subprocess::running() {
  return !try_reap(WNOHANG);
}

void Subprocess::signal(int sig) {
  if (pid_ > 0 && !try_reap(WNOHANG)) ::kill(pid_, sig);
}

void Subprocess::signal_group(int sig) {
  if (pid_ > 0 && !try_reap(WNOHANG)) ::kill(-pid_, sig);
}

std::optional<int> Subprocess::wait_for(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!try_reap(WNOHANG)) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return exit_status_;
}

int Subprocess::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return -1;
  if (grace.count() > 0) {
    signal(SIGTERM);
    if (auto status = wait_for(grace)) return *status;
  }
  signal(SIGKILL);
  try_reap(0);
  return exit_status_.value_or(-1);
}

}  // namespace loadstar
