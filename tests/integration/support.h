// Helpers for integration tests: the real `loadstar` binary run as a child
// process on loopback port 0, and a blocking HTTP client to talk to it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/process.h"
#include "http/client.h"

namespace loadstar::testing {

// A scratch directory removed when the test binary exits.
const std::filesystem::path& scratch_dir();

// Runs `loadstar args...` to completion; returns its exit status and output.
int run_loadstar(const std::vector<std::string>& args, std::string* output = nullptr);

// The value of the sample `name{...labels...}` on http://127.0.0.1:PORT/metrics
// (`labels` is a substring the label set must contain; "" takes the first
// sample of that name); NaN when absent or unreachable.
double scrape_metric(uint16_t port, const std::string& name, const std::string& labels = "");
// The same, from Prometheus text already fetched.
double metric_in(const std::string& text, const std::string& name, const std::string& labels = "");

// scrape_metric, polled until it reads `expected` or 5 s pass; returns the
// last value read. A response reaches the client before the server's
// coroutine resumes to count it, so a scrape right after a response can run
// ahead of the count.
double settled_metric(uint16_t port, const std::string& name, const std::string& labels,
                      double expected);

// A file's bytes; empty when it cannot be read.
std::string read_file(const std::filesystem::path& path);

// Debian's nginx serving `dir`/root over HTTPS on 127.0.0.1:`port`, with a
// certificate made for 127.0.0.1 (`dir`/cert.pem: the CA to trust);
// `http_extra` goes into its http block. Returns once it answers.
Result<Subprocess> start_https_nginx(const std::filesystem::path& dir, uint16_t port,
                                     const std::string& http_extra = "access_log off;");

// Runs `command` with /bin/sh; returns its exit status and its output.
std::pair<int, std::string> run_shell(const std::string& command);

// A TCP port free on `ip` now (for a process that must be told its port
// before it starts).
uint16_t free_port(const std::string& ip = "127.0.0.1");

// This machine's first IPv4 address on an interface that is up and not
// loopback (where the API server accepts an address, e.g. in Endpoints);
// empty when there is none.
std::string non_loopback_ipv4();

// A synthetic model of `size` (e.g. "16MiB") under scratch_dir(), made once per name.
std::filesystem::path synth_model(const std::string& name, const std::string& size);
// A LoRA adapter of `base` with `rank` under scratch_dir(), made once per name.
std::filesystem::path synth_adapter(const std::string& name, const std::filesystem::path& base,
                                    int rank);

class EngineSim {
 public:
  // Starts engine-sim on port 0 and waits until /health answers 200.
  static std::unique_ptr<EngineSim> start(const std::filesystem::path& model_dir,
                                          std::vector<std::string> extra_args = {});
  ~EngineSim();

  uint16_t port() const { return port_; }
  Subprocess& process() { return process_; }
  http::ClientResponse get(const std::string& target);
  http::ClientResponse post(const std::string& target, const std::string& body);
  // The value of the sample `name{labels}` on /metrics ("" labels: the first
  // sample of that name); NaN when absent.
  double metric(const std::string& name, const std::string& labels = "");
  std::string metrics_text();
  std::string log() const;

 private:
  Subprocess process_;
  uint16_t port_ = 0;
  std::filesystem::path log_path_;
};

}  // namespace loadstar::testing

namespace loadstar::testing {

// The quickstart's resources: a 16 MiB synthetic Model `tiny` and an
// engine-sim InferenceService `chat` with `replicas` and those engine args.
// `engine_fields`: more fields of spec.engine, each followed by ", " (e.g.
// "kvEvents: true, ").
std::string quickstart(int replicas, const std::string& engine_args = R"("--time-scale", "10")",
                       const std::string& engine_fields = "");

// `loadstar up` on ports 0 with its own data directory.
class Up {
 public:
  static std::unique_ptr<Up> start(const std::string& yaml,
                                   std::vector<std::string> extra_args = {},
                                   std::filesystem::path data_dir = {});
  ~Up();
  uint16_t port() const { return port_; }
  uint16_t admin_port() const { return admin_port_; }
  const std::filesystem::path& data_dir() const { return data_dir_; }
  Subprocess& process() { return process_; }
  // GET /api/v1/replicas as JSON text.
  std::string replicas_json();
  // Waits until `count` replicas of `service` are Ready (throws after 30 s).
  void wait_ready(const std::string& service, int count);
  http::ClientResponse post(const std::string& target, const std::string& body,
                            std::vector<http::Header> headers = {});
  std::string log() const;

 private:
  Subprocess process_;
  uint16_t port_ = 0;
  uint16_t admin_port_ = 0;
  std::filesystem::path data_dir_;
  std::filesystem::path log_path_;
};

}  // namespace loadstar::testing
