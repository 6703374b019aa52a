// `loadstar agent` (the node agent as its own process), `loadstar stage`
// (ask an agent to stage a model ahead of need and follow its progress).
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>

#include <fmt/core.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "agent/agent.h"
#include "agent/agent_api.h"
#include "agent/peer_discovery.h"
#include "app/commands.h"
#include "common/units.h"
#include "common/url.h"
#include "http/bearer.h"
#include "http/client.h"
#include "http/server.h"
#include "kube/client.h"

namespace loadstar::app {

namespace asio = boost::asio;
using nlohmann::json;

namespace {

struct AgentArgs {
  std::string cache_dir = "var/agent";
  std::string capacity = "0";
  std::string chunk_size = "16Mi";
  std::string host = "127.0.0.1";
  uint16_t port = 8070;
  std::string port_file;
  std::vector<std::string> peers;
  std::string peer_service, peer_port_name, kubeconfig, namespace_name;
  std::string device_checkpoint;
  std::string self_url;
  int connections = 8;
  int origin_connections = 0;
  int max_attempts = 5;
  double stall_timeout_s = 20;
  double peer_patience_s = 5;
  std::string hf_endpoint, s3_endpoint, s3_region;
  std::string token_file;
  bool insecure_no_token = false;
  std::vector<std::string> source_allow;
  bool no_loopback_sources = false;
};

// Everything but /health needs the internal token when the agent has one;
// a namespace's token derived from it may stage that namespace's models.
bool admitted(const http::Request& request, std::string_view path, const http::BearerToken* token) {
  if (!token || path == "/health" || token->admits(request)) return true;
  auto namespace_name = token->namespace_of(request);
  return namespace_name && agent::namespace_may(*namespace_name, request, path);
}

asio::awaitable<void> serve(http::Exchange& ex, agent::Agent* agent,
                            const http::BearerToken* token) {
  const std::string_view path = ex.request().path();
  http::Response response = admitted(ex.request(), path, token)
                                ? agent::handle_agent_api(*agent, ex.request(), path)
                                : http::unauthorized("the agent's API");
  co_await ex.respond(std::move(response));
}

int run_agent(const AgentArgs& args) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  agent::AgentOptions options;
  options.cache.root = std::filesystem::absolute(args.cache_dir);
  auto capacity = parse_bytes(args.capacity);
  auto chunk = parse_bytes(args.chunk_size);
  if (!capacity.ok() || !chunk.ok()) {
    fmt::print(stderr, "--capacity/--chunk-size: {}\n",
               (!capacity.ok() ? capacity.error() : chunk.error()).message);
    return 2;
  }
  options.cache.capacity_bytes = *capacity;
  options.cache.chunk_bytes = *chunk;
  options.peers = args.peers;
  options.device_checkpoint = args.device_checkpoint;
  options.connections = args.connections;
  options.origin_connections = args.origin_connections;
  options.max_attempts = args.max_attempts;
  options.peer_patience_s = args.peer_patience_s;
  options.source.stall_timeout_s = args.stall_timeout_s;
  options.source.hf_endpoint = args.hf_endpoint;
  options.source.s3_endpoint = args.s3_endpoint;
  options.source.s3_region = args.s3_region;
  for (const auto& p : args.peers)
    if (auto u = parse_url(p); !u.ok() || u->scheme != "http") {
      fmt::print(stderr, "--peer '{}': must be http://HOST:PORT\n", p);
      return 2;
    }
  auto token = http::BearerToken::from_flag_or_env(args.token_file);
  if (!token.ok()) {
    fmt::print(stderr, "{}\n", token.error().message);
    return 2;
  }
  if (!*token && !http::is_loopback_host(args.host) && !args.insecure_no_token) {
    fmt::print(stderr,
               "--host {}: an agent reachable from other machines needs --token-file (or "
               "$LOADSTAR_TOKEN): without it anyone who reaches the port can make it fetch "
               "and serve files (--insecure-no-token accepts that)\n",
               args.host);
    return 2;
  }
  if (*token) options.peer_authorization = (*token)->header().value;
  auto policy = agent::SourcePolicy::create(args.source_allow, !args.no_loopback_sources);
  if (!policy.ok()) {
    fmt::print(stderr, "{}\n", policy.error().message);
    return 2;
  }
  options.source.policy = std::move(*policy);
  const http::BearerToken* token_ptr = *token ? &**token : nullptr;

  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::vector<asio::io_context*> raw;
  for (int i = 0; i < 4; ++i) {
    contexts.push_back(std::make_unique<asio::io_context>(1));
    raw.push_back(contexts.back().get());
  }
  std::unique_ptr<agent::Agent> agent;
  http::ServerOptions server_options;
  server_options.host = args.host;
  server_options.port = args.port;
  agent::Agent* agent_ptr = nullptr;
  auto server = http::Server::create(
      raw, server_options,
      [&agent_ptr, token_ptr](http::Exchange& ex) { return serve(ex, agent_ptr, token_ptr); });
  if (!server.ok()) {
    spdlog::error("agent: {}", server.error().message);
    return 1;
  }
  const uint16_t port = (*server)->port();
  options.self_url =
      args.self_url.empty() ? fmt::format("http://{}:{}", args.host, port) : args.self_url;
  // Peers found through the API: the Endpoints of the DaemonSet's headless
  // Service, read with the agent's service account (or a kubeconfig).
  std::optional<kube::Client> kube_client;
  if (!args.peer_service.empty()) {
    if (args.self_url.empty() && (args.host == "0.0.0.0" || args.host == "::")) {
      fmt::print(stderr,
                 "--peer-service: peers name this agent by --self-url (its address on the "
                 "node's network, e.g. http://$(NODE_IP):{}), and --host {} is not one\n",
                 port, args.host);
      return 2;
    }
    auto config = kube::load_config(args.kubeconfig);
    if (!config.ok()) {
      fmt::print(stderr, "--peer-service: {}\n", config.error().message);
      return 2;
    }
    if (!args.namespace_name.empty()) config->namespace_name = args.namespace_name;
    kube_client.emplace(std::move(*config));
  }
  auto created = agent::Agent::create(options);
  if (!created.ok()) {
    spdlog::error("agent: {}", created.error().message);
    return 1;
  }
  agent = std::move(*created);
  agent_ptr = agent.get();
  std::unique_ptr<agent::PeerDiscovery> discovery;
  if (kube_client) {
    discovery = std::make_unique<agent::PeerDiscovery>(
        *kube_client, kube_client->config().namespace_name, args.peer_service, args.peer_port_name,
        options.self_url, [&agent_ptr, fixed = args.peers](std::vector<std::string> found) {
          for (const auto& p : fixed)
            if (std::find(found.begin(), found.end(), p) == found.end()) found.push_back(p);
          agent_ptr->set_peers(std::move(found));
        });
    if (auto started = discovery->start(30); !started.ok()) {
      spdlog::error("agent: --peer-service {}: {}", args.peer_service, started.error().message);
      return 1;
    }
  }
  (*server)->start();
  std::vector<std::thread> threads;
  for (auto* ctx : raw) threads.emplace_back([ctx] { ctx->run(); });
  if (!args.port_file.empty()) {
    const std::string tmp = args.port_file + ".tmp";
    std::ofstream(tmp) << port << "\n";
    std::filesystem::rename(tmp, args.port_file);
  }
  spdlog::info(
      "agent serving on http://{}:{} (cache {}, capacity {}, chunks of {}, {} peers)", args.host,
      port, options.cache.root.string(),
      options.cache.capacity_bytes ? format_bytes(options.cache.capacity_bytes) : "the disk",
      format_bytes(options.cache.chunk_bytes), options.peers.size());
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("signal {}: stopping the agent", sig);
  discovery.reset();
  (*server)->stop();
  for (auto* ctx : raw) ctx->stop();
  for (auto& t : threads) t.join();
  agent.reset();
  return 0;
}

struct StageArgs {
  std::string model;
  std::string source;
  std::string agent = "http://127.0.0.1:8090/agent";
  std::string version;
  bool pin = false;
  bool no_wait = false;
  double timeout_s = 3600;
  std::string token_file;
};

Result<json> call(const Url& base, const std::vector<http::Header>& headers,
                  const std::string& method, const std::string& path, std::string body = {}) {
  http::ClientRequest request;
  request.headers = headers;
  request.host = base.host;
  request.port = base.port;
  request.method = method;
  std::string prefix = base.target == "/" ? "" : base.target;
  while (prefix.ends_with('/')) prefix.pop_back();
  request.target = prefix + path;
  request.body = std::move(body);
  request.timeout_s = 10;
  auto r = http::fetch(request);
  if (!r.ok())
    return make_error(ErrorCode::kUnavailable, "cannot reach the agent at {}: {}", base.origin(),
                      r.error().message);
  json doc = json::parse(r->body, nullptr, false);
  if (r->status >= 300) {
    std::string message =
        doc.is_object() && doc.contains("error") ? doc["error"].value("message", r->body) : r->body;
    ErrorCode code = ErrorCode::kInvalidArgument;
    if (r->status == 404) code = ErrorCode::kNotFound;
    if (r->status == 401 || r->status == 403) code = ErrorCode::kPermissionDenied;
    return Error{code, message};
  }
  if (doc.is_discarded()) return make_error(ErrorCode::kCorrupt, "the agent answered non-JSON");
  return doc;
}

std::string progress_line(const json& p) {
  const double total = p.value("bytes_total", 0.0);
  const double done = p.value("bytes_done", 0.0);
  return fmt::format(
      "{:<11} {:>9} / {:<9} {:5.1f}%  {:>9}/s  origin {:>9}  peers {:>9}  cached {:>9}  eta {}",
      p.value("state", ""), format_bytes(static_cast<uint64_t>(done)),
      format_bytes(static_cast<uint64_t>(total)), total > 0 ? 100 * done / total : 0.0,
      format_bytes(static_cast<uint64_t>(p.value("rate_bytes_per_second", 0.0))),
      format_bytes(p.value("bytes_origin", uint64_t{0})),
      format_bytes(p.value("bytes_peers", uint64_t{0})),
      format_bytes(p.value("bytes_cached", uint64_t{0})),
      p["eta_seconds"].is_number() ? fmt::format("{:.0f}s", p["eta_seconds"].get<double>()) : "-");
}

int run_stage(const StageArgs& args) {
  auto base = parse_url(args.agent);
  if (!base.ok()) {
    fmt::print(stderr, "--agent: {}\n", base.error().message);
    return 2;
  }
  auto token = http::BearerToken::from_flag_or_env(args.token_file);
  if (!token.ok()) {
    fmt::print(stderr, "loadstar stage: {}\n", token.error().message);
    return 2;
  }
  std::vector<http::Header> headers;
  if (*token) headers.push_back((*token)->header());
  json request = {{"model", args.model}, {"pin", args.pin}};
  if (!args.source.empty()) request["source"] = args.source;
  if (!args.version.empty()) request["version"] = args.version;
  auto started = call(*base, headers, "POST", "/v1/stage", request.dump());
  if (!started.ok()) {
    fmt::print(stderr, "loadstar stage: {}\n", started.error().message);
    return 1;
  }
  fmt::print("staging {} from {}\n", args.model, (*started).value("source", ""));
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(args.timeout_s);
  json p = *started;
  // Asked often (a Pod's init container ends the moment the weights are in
  // place: a poll a second added up to a second to every cold start),
  // printed once a second.
  auto printed = std::chrono::steady_clock::time_point{};
  while (!args.no_wait) {
    std::string state = p.value("state", "");
    // Asked for a version, the agent may answer with another version's
    // staging (one per model at a time): that one's end is not ours.
    if (!args.version.empty() && p.value("want_version", "") != args.version &&
        (state == "ready" || state == "failed"))
      state = "waiting for another version's staging";
    const bool done = state == "ready" || state == "failed";
    if (done || std::chrono::steady_clock::now() - printed >= std::chrono::seconds(1)) {
      fmt::print("{}\n", progress_line(p));
      std::fflush(stdout);
      printed = std::chrono::steady_clock::now();
    }
    if (state == "ready") {
      fmt::print("ready: {}\n", p.value("dir", ""));
      return 0;
    }
    if (state == "failed") {
      fmt::print(stderr, "loadstar stage: {}\n", p.value("error", ""));
      return 1;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      fmt::print(stderr, "loadstar stage: not ready after {}s\n", args.timeout_s);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto now = call(*base, headers, "GET", "/v1/models/" + args.model);
    if (!now.ok()) {
      fmt::print(stderr, "loadstar stage: {}\n", now.error().message);
      return 1;
    }
    p = (*now).contains("staging") ? (*now)["staging"] : json::object();
    const std::string other = p.value("state", "");
    if (!args.version.empty() && p.value("want_version", "") != args.version &&
        other != "resolving" && other != "downloading") {
      // Another version's staging has ended: ask for ours again (the held
      // version answers at once; a new staging starts otherwise).
      auto again = call(*base, headers, "POST", "/v1/stage", request.dump());
      if (!again.ok()) {
        fmt::print(stderr, "loadstar stage: {}\n", again.error().message);
        return 1;
      }
      p = *again;
    }
  }
  return 0;
}

}  // namespace

std::function<int()> setup_agent(CLI::App& app) {
  auto args = std::make_shared<AgentArgs>();
  app.add_option("--cache-dir", args->cache_dir, "Where staged models live")->capture_default_str();
  app.add_option("--capacity", args->capacity,
                 "Cache size (e.g. 500Gi); least recently used models are evicted past it "
                 "(0: the disk's size)")
      ->capture_default_str();
  app.add_option("--chunk-size", args->chunk_size,
                 "Unit of download, verification, resume and peer exchange (same on all agents)")
      ->capture_default_str();
  app.add_option("--host", args->host)->capture_default_str();
  app.add_option("--port", args->port, "0: any free port")->capture_default_str();
  app.add_option("--port-file", args->port_file, "Write the port here once listening");
  app.add_option("--peer", args->peers, "Another agent (http://HOST:PORT); repeat for each");
  app.add_option("--peer-service", args->peer_service,
                 "Find peers through the Kubernetes API: the ready addresses of this Endpoints "
                 "object (the agents' headless Service), followed as agents come and go");
  app.add_option("--peer-port-name", args->peer_port_name,
                 "With --peer-service: the Endpoints port to use (default its only port)");
  app.add_option("--kubeconfig", args->kubeconfig,
                 "With --peer-service (default $KUBECONFIG, else the Pod's service account)");
  app.add_option("-n,--namespace", args->namespace_name,
                 "With --peer-service: the Service's namespace (default the kubeconfig's or the "
                 "service account's)");
  app.add_option("--device-checkpoint", args->device_checkpoint,
                 "The kubelet's device checkpoint on this node "
                 "(/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint): which GPUs it "
                 "handed to which Pod, served at /v1/devices for the controller");
  app.add_option("--self-url", args->self_url,
                 "How peers reach this agent (default http://HOST:PORT)");
  app.add_option("--connections", args->connections, "Chunk fetches in flight per model")
      ->capture_default_str();
  app.add_option("--origin-connections", args->origin_connections,
                 "Of those, at most this many from the origin when there are peers (0: 2 with "
                 "peers, all without)")
      ->capture_default_str();
  app.add_option("--max-attempts", args->max_attempts,
                 "Tries per chunk from the origin before staging fails")
      ->capture_default_str();
  app.add_option("--stall-timeout", args->stall_timeout_s,
                 "Seconds without a byte before a fetch is abandoned and retried")
      ->capture_default_str();
  app.add_option("--peer-patience", args->peer_patience_s,
                 "Seconds to wait for a peer to produce a chunk it owns before fetching it "
                 "from the origin")
      ->capture_default_str();
  app.add_option("--hf-endpoint", args->hf_endpoint, "Hugging Face Hub URL (default $HF_ENDPOINT)");
  app.add_option("--s3-endpoint", args->s3_endpoint, "S3 endpoint URL (default $AWS_ENDPOINT_URL)");
  app.add_option("--s3-region", args->s3_region, "S3 region (default $AWS_REGION)");
  app.add_option("--token-file", args->token_file,
                 "The internal token every caller but /health must present (default "
                 "$LOADSTAR_TOKEN); required off loopback");
  app.add_flag("--insecure-no-token", args->insecure_no_token,
               "Listen off loopback without a token (anyone who reaches the port may stage "
               "and read models)");
  app.add_option("--source-allow", args->source_allow,
                 "Sources this agent may fetch: SCHEME:// or SCHEME://PREFIX (file:///DIR, "
                 "hf://ORG/, s3://BUCKET, https://HOST); repeat; default every scheme");
  app.add_flag("--no-loopback-sources", args->no_loopback_sources,
               "Refuse sources on loopback addresses (a node agent on the host network)");
  return [args] { return run_agent(*args); };
}

std::function<int()> setup_stage(CLI::App& app) {
  auto args = std::make_shared<StageArgs>();
  app.add_option("model", args->model, "Model name")->required();
  app.add_option("--source", args->source,
                 "file://, http(s)://, hf://ORG/NAME[@REV] or s3://BUCKET/PREFIX (with loadstar "
                 "up: default the Model resource's source)");
  app.add_option("--agent", args->agent,
                 "The agent: http://HOST:PORT of `loadstar agent`, or loadstar up's "
                 "http://HOST:ADMIN_PORT/agent")
      ->capture_default_str();
  app.add_option("--version", args->version,
                 "Exactly this version of it (the id the agent's /v1/resolve gives): held, or "
                 "staged if the source still has it, else a failure");
  app.add_flag("--pin", args->pin, "Never evict it");
  app.add_flag("--no-wait", args->no_wait, "Return once staging has started");
  app.add_option("--timeout", args->timeout_s, "Seconds to wait for ready")->capture_default_str();
  app.add_option("--token-file", args->token_file,
                 "The agent's internal token (default $LOADSTAR_TOKEN)");
  return [args] { return run_stage(*args); };
}

}  // namespace loadstar::app
