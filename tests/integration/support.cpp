#include "support.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

namespace loadstar::testing {

namespace fs = std::filesystem;

const fs::path& scratch_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("loadstar-it-" + std::to_string(::getpid()));
    fs::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(fs::temp_directory_path() / ("loadstar-it-" + std::to_string(::getpid())), ec);
    });
    return d;
  }();
  return dir;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

int run_loadstar(const std::vector<std::string>& args, std::string* output) {
  static int counter = 0;
  const fs::path out = scratch_dir() / ("run-" + std::to_string(counter++) + ".log");
  ProcessOptions options;
  options.argv = {LOADSTAR_BIN};
  options.argv.insert(options.argv.end(), args.begin(), args.end());
  options.output_path = out.string();
  auto process = Subprocess::start(options);
  if (!process.ok()) return -1;
  auto status = process->wait_for(std::chrono::seconds(120));
  if (output) *output = read_file(out);
  return status.value_or(-1);
}

fs::path synth_model(const std::string& name, const std::string& size) {
  const fs::path dir = scratch_dir() / name;
  if (!fs::exists(dir)) {
    std::string out;
    int rc = run_loadstar(
        {"model", "synth", "--size", size, "--shard-size", "64MiB", "-o", dir.string()}, &out);
    if (rc != 0) throw std::runtime_error("model synth failed: " + out);
  }
  return dir;
}

fs::path synth_adapter(const std::string& name, const fs::path& base, int rank) {
  const fs::path dir = scratch_dir() / ("lora-" + name);
  if (!fs::exists(dir)) {
    std::string out;
    int rc = run_loadstar({"model", "synth", "--lora-of", base.string(), "--rank",
                           std::to_string(rank), "-o", dir.string()},
                          &out);
    if (rc != 0) throw std::runtime_error("model synth --lora-of failed: " + out);
  }
  return dir;
}

std::unique_ptr<EngineSim> EngineSim::start(const fs::path& model_dir,
                                            std::vector<std::string> extra_args) {
  static int counter = 0;
  auto sim = std::make_unique<EngineSim>();
  const std::string tag = std::to_string(counter++);
  const fs::path port_file = scratch_dir() / ("engine-" + tag + ".port");
  sim->log_path_ = scratch_dir() / ("engine-" + tag + ".log");
  ProcessOptions options;
  options.argv = {LOADSTAR_BIN, "engine-sim", "--model",     model_dir.string(),
                  "--port",     "0",          "--port-file", port_file.string()};
  options.argv.insert(options.argv.end(), extra_args.begin(), extra_args.end());
  options.output_path = sim->log_path_.string();
  auto process = Subprocess::start(options);
  if (!process.ok()) throw std::runtime_error(process.error().message);
  sim->process_ = std::move(process).value();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (!sim->process_.running()) throw std::runtime_error("engine-sim exited: " + sim->log());
    if (sim->port_ == 0 && fs::exists(port_file))
      sim->port_ = static_cast<uint16_t>(std::stoi(read_file(port_file)));
    if (sim->port_ != 0) {
      auto health = http::fetch({.port = sim->port_, .target = "/health", .timeout_s = 2});
      if (health.ok() && health->status == 200) return sim;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("engine-sim did not become healthy: " + sim->log());
}

EngineSim::~EngineSim() {
  process_.stop(std::chrono::milliseconds(3000));
}

http::ClientResponse EngineSim::get(const std::string& target) {
  auto r = http::fetch({.port = port_, .target = target});
  if (!r.ok()) throw std::runtime_error(r.error().message);
  return std::move(r).value();
}

http::ClientResponse EngineSim::post(const std::string& target, const std::string& body) {
  auto r = http::fetch(
      {.port = port_, .method = "POST", .target = target, .body = body, .timeout_s = 60});
  if (!r.ok()) throw std::runtime_error(r.error().message);
  return std::move(r).value();
}

std::string EngineSim::metrics_text() {
  return get("/metrics").body;
}

double EngineSim::metric(const std::string& name, const std::string& labels) {
  return scrape_metric(port_, name, labels);
}

double scrape_metric(uint16_t port, const std::string& name, const std::string& labels) {
  auto r = http::fetch({.port = port, .target = "/metrics", .timeout_s = 5});
  if (!r.ok()) return std::nan("");
  return metric_in(r->body, name, labels);
}

double metric_in(const std::string& text, const std::string& name, const std::string& labels) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#' || line.rfind(name, 0) != 0) continue;
    const std::string rest = line.substr(name.size());
    if (rest.empty() || (rest[0] != '{' && rest[0] != ' ')) continue;  // a longer name
    if (!labels.empty() && rest.find(labels) == std::string::npos) continue;
    return std::stod(rest.substr(rest.rfind(' ') + 1));
  }
  return std::nan("");
}

std::string quickstart(int replicas, const std::string& engine_args,
                       const std::string& engine_fields) {
  return fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: tiny}}
spec: {{source: "synth://tiny", size: 16Mi}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  model: tiny
  replicas: {}
  engine: {{name: engine-sim, {}args: [{}]}}
)",
                     replicas, engine_fields, engine_args);
}

double settled_metric(uint16_t port, const std::string& name, const std::string& labels,
                      double expected) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  double value = scrape_metric(port, name, labels);
  while (value != expected && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    value = scrape_metric(port, name, labels);
  }
  return value;
}

std::pair<int, std::string> run_shell(const std::string& command) {
  std::FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string output;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) output.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

std::string EngineSim::log() const {
  return read_file(log_path_);
}

}  // namespace loadstar::testing

#include <nlohmann/json.hpp>
#include <regex>

namespace loadstar::testing {

std::unique_ptr<Up> Up::start(const std::string& yaml, std::vector<std::string> extra_args,
                              fs::path data_dir) {
  static int counter = 0;
  auto up = std::make_unique<Up>();
  const std::string tag = std::to_string(counter++);
  up->data_dir_ = data_dir.empty() ? scratch_dir() / ("up-" + tag) : data_dir;
  up->log_path_ = scratch_dir() / ("up-" + tag + "-" + std::to_string(counter) + ".log");
  const fs::path file = scratch_dir() / ("up-" + tag + ".yaml");
  std::ofstream(file) << yaml;
  ProcessOptions options;
  options.argv = {LOADSTAR_BIN,   "up", "--port",     "0",
                  "--admin-port", "0",  "--data-dir", up->data_dir_.string()};
  if (!yaml.empty()) {
    options.argv.push_back("-f");
    options.argv.push_back(file.string());
  }
  options.argv.insert(options.argv.end(), extra_args.begin(), extra_args.end());
  options.output_path = up->log_path_.string();
  auto process = Subprocess::start(options);
  if (!process.ok()) throw std::runtime_error(process.error().message);
  up->process_ = std::move(process).value();
  const std::regex api(R"(OpenAI API: https?://127\.0\.0\.1:(\d+)/v1)"),
      admin(R"(admin API:  http://127\.0\.0\.1:(\d+)/)");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string text = up->log();
    std::smatch m1, m2;
    if (std::regex_search(text, m1, api) && std::regex_search(text, m2, admin)) {
      up->port_ = static_cast<uint16_t>(std::stoi(m1[1]));
      up->admin_port_ = static_cast<uint16_t>(std::stoi(m2[1]));
      return up;
    }
    if (!up->process_.running()) throw std::runtime_error("loadstar up exited: " + text);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw std::runtime_error("loadstar up did not start: " + up->log());
}

Up::~Up() {
  process_.stop(std::chrono::milliseconds(10000));
}

std::string Up::log() const {
  return read_file(log_path_);
}

std::string Up::replicas_json() {
  auto r = http::fetch({.port = admin_port_, .target = "/api/v1/replicas", .timeout_s = 5});
  if (!r.ok()) throw std::runtime_error(r.error().message);
  return r->body;
}

void Up::wait_ready(const std::string& service, int count) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    auto doc = nlohmann::json::parse(replicas_json());
    int ready = 0;
    for (const auto& r : doc["items"]) ready += r["service"] == service && r["state"] == "Ready";
    if (ready == count) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw std::runtime_error("replicas of " + service + " not ready: " + replicas_json() + "\n" +
                           log());
}

http::ClientResponse Up::post(const std::string& target, const std::string& body,
                              std::vector<http::Header> headers) {
  auto r = http::fetch({.port = port_,
                        .method = "POST",
                        .target = target,
                        .body = body,
                        .headers = std::move(headers),
                        .timeout_s = 60});
  if (!r.ok()) throw std::runtime_error(r.error().message);
  return std::move(r).value();
}

Result<Subprocess> start_https_nginx(const fs::path& dir, uint16_t port,
                                     const std::string& http_extra) {
  fs::create_directories(dir / "root");
  fs::create_directories(dir / "tmp");
  auto [rc, out] = run_shell(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
      "-addext subjectAltName=IP:127.0.0.1 -keyout " +
      (dir / "key.pem").string() + " -out " + (dir / "cert.pem").string() + " 2>&1");
  if (rc != 0) return make_error(ErrorCode::kInternal, "openssl: {}", out);
  // `user root` only matters when the test runs as root (CI may), where
  // workers would otherwise not be allowed into the scratch directory.
  std::ofstream(dir / "nginx.conf") << fmt::format(R"(daemon off;
user root;
worker_processes 1;
pid {0}/nginx.pid;
error_log {0}/error.log;
events {{ worker_connections 64; }}
http {{
  {2}
  client_body_temp_path {0}/tmp;
  server {{
    listen 127.0.0.1:{1} ssl;
    ssl_certificate {0}/cert.pem;
    ssl_certificate_key {0}/key.pem;
    root {0}/root;
  }}
}}
)",
                                                   dir.string(), port, http_extra);
  ProcessOptions options;
  options.argv = {"/usr/sbin/nginx", "-c", (dir / "nginx.conf").string(), "-p", dir.string()};
  options.output_path = (dir / "nginx.out").string();
  auto nginx = Subprocess::start(options);
  if (!nginx.ok()) return nginx;
  // Plain HTTP to its TLS port is answered (400): nginx is up.
  for (int i = 0; i < 500; ++i) {
    if (http::fetch({.port = port, .target = "/", .timeout_s = 1}).ok()) return nginx;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return make_error(ErrorCode::kUnavailable, "nginx did not answer on port {}: {}", port,
                    read_file(dir / "error.log"));
}

uint16_t free_port(const std::string& ip) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  ::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
  socklen_t len = sizeof addr;
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

std::string non_loopback_ipv4() {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return "";
  std::string out;
  for (ifaddrs* i = list; i && out.empty(); i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_LOOPBACK) ||
        !(i->ifa_flags & IFF_UP))
      continue;
    char text[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, text, sizeof text);
    out = text;
  }
  ::freeifaddrs(list);
  return out;
}

}  // namespace loadstar::testing
