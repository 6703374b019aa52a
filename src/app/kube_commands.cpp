// Kubernetes mode: `loadstar controller` (reconcilers over the Kubernetes
// API, replicas as Pods, leader election on a Lease) and `loadstar gateway`
// (the OpenAI front door, routing tables from watched resources and Pods).
// The agent runs as `loadstar agent` in a DaemonSet.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>

#include "app/admin_api.h"
#include "app/commands.h"
#include "app/dashboard.h"
#include "app/front_door_flags.h"
#include "common/digest.h"
#include "common/units.h"
#include "controller/batch_admission.h"
#include "controller/controller.h"
#include "controller/gateway_load.h"
#include "controller/pod_runtime.h"
#include "controller/pod_workers.h"
#include "engines/engines.h"
#include "gateway/gateway.h"
#include "http/bearer.h"
#include "http/server.h"
#include "kube/client.h"
#include "kube/leader.h"
#include "kube/scope.h"
#include "openai/protocol.h"
#include "routing/discovery.h"
#include "scheduler/placement.h"
#include "store/kube_store.h"

namespace loadstar::app {

namespace asio = boost::asio;

namespace {

struct KubeArgs {
  std::string kubeconfig;
  std::string namespace_name;  // empty: the kubeconfig's or the service account's
  double sync_timeout_s = 30;
};

void add_kube_options(CLI::App& app, KubeArgs& args) {
  app.add_option("--kubeconfig", args.kubeconfig,
                 "kubeconfig file (default: $KUBECONFIG, the in-cluster service account, "
                 "~/.kube/config)");
  app.add_option("-n,--namespace", args.namespace_name,
                 "Namespace of Loadstar's resources and replica Pods (default: the context's)");
}

// Blocks SIGINT/SIGTERM for sigwait(); call before any thread starts.
sigset_t block_stop_signals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

Result<kube::Config> kube_config(const KubeArgs& args) {
  LS_ASSIGN_OR_RETURN(kube::Config config, kube::load_config(args.kubeconfig));
  if (!args.namespace_name.empty()) config.namespace_name = args.namespace_name;
  return config;
}

// The internal token from the Secret `name` (key `token`), created with a
// new random token when missing. Agents, gateways and replica Pods' stage
// containers take it from the same Secret.
Result<http::BearerToken> ensure_token_secret(const kube::Client& client,
                                              const std::string& namespace_name,
                                              const std::string& name) {
  const std::string collection = fmt::format("/api/v1/namespaces/{}/secrets", namespace_name);
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto got = client.get(collection + "/" + name);
    if (got.ok()) {
      const auto& data = (*got)["data"];
      auto token = data.is_object() && data.contains("token") && data["token"].is_string()
                       ? base64_decode(data["token"].get<std::string>())
                       : std::nullopt;
      if (!token)
        return make_error(ErrorCode::kInvalidArgument, "Secret {}/{} has no key 'token' (base64)",
                          namespace_name, name);
      return http::BearerToken::from_string(*token,
                                            fmt::format("Secret {}/{}", namespace_name, name));
    }
    if (got.error().code != ErrorCode::kNotFound) return got.error();
    const kube::json secret = {{"apiVersion", "v1"},
                               {"kind", "Secret"},
                               {"metadata",
                                {{"name", name},
                                 {"namespace", namespace_name},
                                 {"labels", {{"app.kubernetes.io/part-of", "loadstar"}}}}},
                               {"type", "Opaque"},
                               {"data", {{"token", base64_encode(http::BearerToken::generate())}}}};
    auto created = client.create(collection, secret);
    if (created.ok()) {
      spdlog::info("created Secret {}/{} with a new internal token", namespace_name, name);
      continue;  // read it back the same way
    }
    if (created.error().code != ErrorCode::kConflict) return created.error();
    // Another controller created it first: read theirs.
  }
  return make_error(ErrorCode::kUnavailable, "Secret {}/{}: could not read it after creating it",
                    namespace_name, name);
}

struct ControllerArgs {
  KubeArgs kube;
  std::string host = "0.0.0.0";
  uint16_t admin_port = 8090;
  bool leader_elect = true;
  std::string lease_name = "loadstar-controller";
  double lease_duration_s = 15;
  std::string identity;
  std::string placement_policy = "loadstar";
  double model_resolve_interval_s = 300;
  std::string node_selector;
  std::string gateway_selector = "app.kubernetes.io/name=loadstar-gateway";
  double drain_timeout_s = 30;
  controller::PodRuntimeOptions pods;
  std::vector<std::string> images_for;  // ENGINE=IMAGE
  std::string token_file;
  std::string namespaces;  // "a,b": follow these besides (or instead of) the home one
  bool all_namespaces = false;
};

// The controller's admin API on its own thread. /healthz and /health answer
// from start() on; the rest needs the internal token and, until serve() hands
// it the controller (this one leads), answers 503.
class ControllerAdmin {
 public:
  explicit ControllerAdmin(const http::BearerToken& token) : token_(token) {}
  ~ControllerAdmin() { stop(); }
  ControllerAdmin(const ControllerAdmin&) = delete;
  ControllerAdmin& operator=(const ControllerAdmin&) = delete;

  Status start(const std::string& host, uint16_t port) {
    http::ServerOptions options;
    options.host = host;
    options.port = port;
    options.error_body = openai::error_body_for;
    auto server =
        http::Server::create({&io_}, options, [this](http::Exchange& ex) -> asio::awaitable<void> {
          co_await ex.respond(respond(ex.request()));
        });
    if (!server.ok()) return std::move(server).error();
    server_ = std::move(*server);
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
    return ok_status();
  }
  void serve(controller::Controller* ctl, store::ResourceStore* store) {
    store_ = store;
    ctl_ = ctl;
  }
  uint16_t port() const { return server_ ? server_->port() : 0; }
  void stop() {
    if (!thread_.joinable()) return;
    server_->stop();
    io_.stop();
    thread_.join();
  }

 private:
  http::Response respond(const http::Request& req) {
    const std::string_view path = req.path();
    if (path == "/healthz" || path == "/health") return {200, "text/plain", "ok\n"};
    // The dashboard's page holds no data (its script asks with the token).
    if (auto page = dashboard_response(req)) return std::move(*page);
    if (!token_.admits(req)) return http::unauthorized("the controller's admin API");
    controller::Controller* ctl = ctl_.load();
    if (!ctl)
      return {
          503, "application/json",
          R"({"error":{"message":"this controller is on standby: another one holds the Lease and serves the admin API","code":503}})"};
    return admin_response(req, ctl, store_.load(), nullptr);
  }

  const http::BearerToken& token_;
  asio::io_context io_{1};
  std::unique_ptr<http::Server> server_;
  std::thread thread_;
  std::atomic<store::ResourceStore*> store_{nullptr};
  std::atomic<controller::Controller*> ctl_{nullptr};
};

int run_controller(ControllerArgs args) {
  for (const auto& entry : args.images_for) {
    const size_t eq = entry.find('=');
    const std::string engine = entry.substr(0, eq);
    if (eq == std::string::npos || eq + 1 == entry.size() || !engines::find(engine)) {
      fmt::print(stderr, "--image-for: '{}' is not ENGINE=IMAGE with ENGINE one of {}\n", entry,
                 engines::names());
      return 2;
    }
    args.pods.engine_images[engine] = entry.substr(eq + 1);
  }
  sigset_t signals = block_stop_signals();
  auto config = kube_config(args.kube);
  if (!config.ok()) {
    fmt::print(stderr, "loadstar controller: {}\n", config.error().message);
    return 2;
  }
  if (auto p = scheduler::PlacementPolicy::parse(args.placement_policy); !p.ok()) {
    fmt::print(stderr, "--placement-policy: {}\n", p.error().message);
    return 2;
  }
  auto scope =
      kube::NamespaceScope::parse(config->namespace_name, args.namespaces, args.all_namespaces);
  if (!scope.ok()) {
    fmt::print(stderr, "loadstar controller: {}\n", scope.error().message);
    return 2;
  }
  kube::Client client(*config);
  spdlog::info("controller: {} at {}:{}, {}{}", config->origin, config->host, config->port,
               scope->describe(),
               scope->single() ? "" : fmt::format(" (home namespace {})", config->namespace_name));
  // The internal token: a file when given, else the Secret (made if missing).
  auto given_token = http::BearerToken::from_flag_or_env(args.token_file);
  if (!given_token.ok()) {
    fmt::print(stderr, "loadstar controller: {}\n", given_token.error().message);
    return 2;
  }
  auto token = *given_token
                   ? Result<http::BearerToken>(std::move(**given_token))
                   : ensure_token_secret(client, config->namespace_name, args.pods.token_secret);
  if (!token.ok()) {
    spdlog::error("internal token: {}", token.error().message);
    return 1;
  }
  args.pods.agent_authorization = token->header().value;
  args.pods.internal_token = token->value();

  // The admin API answers from the start: a standby controller waiting for
  // the Lease is alive (its liveness probe must pass, or the kubelet would
  // restart it every few probes) but serves nothing else until it leads.
  ControllerAdmin admin(*token);
  if (Status s = admin.start(args.host, args.admin_port); !s.ok()) {
    spdlog::error("admin API: {}", s.error().message);
    return 1;
  }

  // Leader election first: only the leader reconciles and creates Pods.
  std::atomic<bool> stop_requested{false};
  std::unique_ptr<kube::LeaderElector> elector;
  if (args.leader_elect) {
    kube::LeaderOptions lo;
    lo.namespace_name = config->namespace_name;
    lo.lease_name = args.lease_name;
    lo.lease_duration_s = args.lease_duration_s;
    lo.renew_interval_s = std::max(0.5, args.lease_duration_s / 3);
    lo.retry_interval_s = std::max(0.5, args.lease_duration_s / 7.5);
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    lo.identity = args.identity.empty() ? fmt::format("{}_{}", host, getpid()) : args.identity;
    elector = std::make_unique<kube::LeaderElector>(client, lo);
    // A signal while waiting ends the wait.
    std::thread waiter([&] {
      int sig = 0;
      sigwait(&signals, &sig);
      stop_requested = true;
    });
    spdlog::info("leader election: '{}' waiting for lease {}/{}", lo.identity,
                 config->namespace_name, lo.lease_name);
    const bool leads = elector->acquire(stop_requested);
    if (!leads) {
      waiter.join();
      return 0;
    }
    fmt::print("leading as {}\n", lo.identity);
    std::fflush(stdout);
    // Losing the lease ends the process: another controller may act now.
    elector->keep_renewing([] {
      spdlog::error("leadership lost; exiting so that only one controller acts");
      std::_Exit(1);
    });
    waiter.detach();  // it ends the process's wait below via stop_requested
  }

  store::KubeStore store(client, *scope, {.node_selector = args.node_selector});
  if (Status s = store.start(args.kube.sync_timeout_s); !s.ok()) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  controller::PodRuntime runtime(client, store, args.pods);
  if (Status s = runtime.start(args.kube.sync_timeout_s); !s.ok()) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  controller::ControllerOptions options;
  options.placement_policy = args.placement_policy;
  options.model_resolve_interval_s = args.model_resolve_interval_s;
  options.drain_timeout_s = args.drain_timeout_s;
  options.resync_s = 1;
  // Gateways learn that a replica is draining through their Pod watch
  // (PodRuntime::unroute marks the Pod), a little later than the in-process
  // table of `loadstar up`: its engine keeps listening this long after.
  options.unroute_grace_s = 2;
  // Autoscaling and scale to zero run on the gateways' load, polled from
  // the gateway Pods; without them services run at spec.replicas.
  std::unique_ptr<controller::GatewayLoadCollector> load;
  if (!args.gateway_selector.empty())
    load = std::make_unique<controller::GatewayLoadCollector>(client, store.scope(),
                                                              args.gateway_selector, *token);
  controller::RealClock clock;
  // Gateways discover ready engines themselves (EndpointDiscovery): nothing to publish.
  // Jobs' workers: Pods bound where the scheduler put them.
  controller::PodWorkers workers(client, store, {.image_pull_policy = args.pods.image_pull_policy});
  if (Status s = workers.start(args.kube.sync_timeout_s); !s.ok()) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  // batch/v1 Jobs labelled with a queue, admitted through the same queues.
  controller::BatchAdmission batch(client, store.scope());
  if (Status s = batch.start(args.kube.sync_timeout_s); !s.ok()) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  controller::Controller ctl(store, runtime, load.get(), clock, options, nullptr);
  ctl.run_jobs(workers);
  ctl.admit(batch);

  ctl.start();
  if (load) load->start();
  admin.serve(&ctl, &store);
  fmt::print("controller reconciling {}; admin API on http://{}:{}/api/v1\n", scope->describe(),
             args.host, admin.port());
  std::fflush(stdout);

  if (elector) {
    while (!stop_requested) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } else {
    int sig = 0;
    sigwait(&signals, &sig);
  }
  spdlog::info("stopping; replica Pods keep running for the next controller");
  if (load) load->stop();
  ctl.stop();
  if (elector) elector->release();
  admin.stop();
  return 0;
}

struct GatewayArgs {
  KubeArgs kube;
  std::string host = "0.0.0.0";
  uint16_t port = 8080;
  unsigned workers = 2;
  double scrape_interval_s = 0.5;
  std::string max_body = "8Mi";
  std::string token_file;
  FrontDoorFlags front_door;
};

int run_gateway(const GatewayArgs& args) {
  sigset_t signals = block_stop_signals();
  auto config = kube_config(args.kube);
  if (!config.ok()) {
    fmt::print(stderr, "loadstar gateway: {}\n", config.error().message);
    return 2;
  }
  auto max_body = parse_bytes(args.max_body);
  if (!max_body.ok()) {
    fmt::print(stderr, "--max-body-size: {}\n", max_body.error().message);
    return 2;
  }
  auto token = http::BearerToken::from_flag_or_env(args.token_file);
  if (!token.ok()) {
    fmt::print(stderr, "loadstar gateway: {}\n", token.error().message);
    return 2;
  }
  kube::Client client(*config);
  gateway::GatewayOptions options;
  options.internal_token = std::move(*token);
  args.front_door.apply_to(options);
  options.host = args.host;
  options.port = args.port;
  options.workers = args.workers;
  options.scrape_interval_s = args.scrape_interval_s;
  options.max_body_bytes = *max_body;
  auto gw = gateway::Gateway::create(options);
  if (!gw.ok()) {
    spdlog::error("gateway: {}", gw.error().message);
    return 1;
  }
  gateway::Gateway* gateway = gw->get();
  // Gateways read; only the controller follows Nodes and writes status.
  store::KubeStore store(client, kube::NamespaceScope(config->namespace_name),
                         {.nodes = false, .write_status = false});
  if (Status s = store.start(args.kube.sync_timeout_s); !s.ok()) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  routing::EndpointDiscovery discovery(client, store,
                                       [gateway](std::shared_ptr<const gateway::RoutingTable> t) {
                                         gateway->publish(std::move(t));
                                       });
  if (Status s = discovery.start(args.kube.sync_timeout_s); !s.ok()) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  gateway->start();
  fmt::print("gateway serving namespace {} on http://{}:{}/v1\n", config->namespace_name, args.host,
             gateway->port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("signal {}: stopping", sig);
  gateway->stop(5);
  return 0;
}

}  // namespace

std::function<int()> setup_controller(CLI::App& app) {
  auto args = std::make_shared<ControllerArgs>();
  add_kube_options(app, args->kube);
  app.add_option("--namespaces", args->namespaces,
                 "Also follow the resources of these namespaces (NS,NS,...; * for all) and run "
                 "their replicas there; names outside --namespace read NAMESPACE/NAME")
      ->envname("LOADSTAR_NAMESPACES");
  app.add_flag("--all-namespaces", args->all_namespaces,
               "Follow every namespace (needs the ClusterRole binding of "
               "deploy/overlays/all-namespaces)");
  app.add_option("--host", args->host, "Admin API address")->capture_default_str();
  app.add_option("--admin-port", args->admin_port, "Admin API port (0: any)")
      ->capture_default_str();
  app.add_flag("--leader-elect,!--no-leader-elect", args->leader_elect,
               "Act only while holding the Lease (several controllers may run)")
      ->capture_default_str();
  app.add_option("--lease-name", args->lease_name)->capture_default_str();
  app.add_option("--lease-duration", args->lease_duration_s,
                 "Seconds a leader that stopped renewing keeps the Lease")
      ->capture_default_str();
  app.add_option("--identity", args->identity, "This candidate's name (default: host_pid)");
  app.add_option("--placement-policy", args->placement_policy, "As for `loadstar up`")
      ->capture_default_str();
  app.add_option("--model-resolve-interval", args->model_resolve_interval_s, "As for `loadstar up`")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--gateway-selector", args->gateway_selector,
                 "Labels of the gateway Pods whose load drives autoscaling and scale to zero "
                 "(empty: services run at spec.replicas)")
      ->capture_default_str();
  app.add_option("--node-selector", args->node_selector,
                 "Label selector of the Nodes replicas may use (default: all)");
  app.add_option("--drain-timeout", args->drain_timeout_s,
                 "Seconds a stopping replica may finish requests")
      ->capture_default_str();
  app.add_option("--engine-image", args->pods.image, "Image of replica Pods (runs `loadstar`)")
      ->capture_default_str();
  app.add_option("--image-for", args->images_for,
                 "ENGINE=IMAGE: run that engine (llama.cpp, vllm, sglang) from IMAGE instead of "
                 "its pinned default (repeat; a service's spec.engine.image wins)");
  app.add_option("--image-pull-policy", args->pods.image_pull_policy)->capture_default_str();
  app.add_option("--engine-port", args->pods.engine_port)->capture_default_str();
  app.add_option("--agent-port", args->pods.agent_port,
                 "Port of the agent DaemonSet on each node (host network)")
      ->capture_default_str();
  app.add_option("--cache-host-path", args->pods.cache_host_path,
                 "The agents' cache directory on each node")
      ->capture_default_str();
  app.add_option("--token-file", args->token_file,
                 "The internal token (default $LOADSTAR_TOKEN, else the Secret --token-secret, "
                 "created when missing)");
  app.add_option("--token-secret", args->pods.token_secret,
                 "Secret (key `token`) holding the internal token that agents, gateways and "
                 "replica Pods read")
      ->capture_default_str();
  return [args] { return run_controller(*args); };
}

std::function<int()> setup_gateway(CLI::App& app) {
  auto args = std::make_shared<GatewayArgs>();
  add_kube_options(app, args->kube);
  app.add_option("--host", args->host)->capture_default_str();
  app.add_option("--port", args->port, "OpenAI API port (0: any)")->capture_default_str();
  app.add_option("--workers", args->workers, "Worker threads")->capture_default_str();
  app.add_option("--scrape-interval", args->scrape_interval_s,
                 "Seconds between reads of each replica's /metrics (0: never)")
      ->capture_default_str();
  app.add_option("--max-body-size", args->max_body)->capture_default_str();
  args->front_door.add_to(app);
  app.add_option("--token-file", args->token_file,
                 "The internal token that /metrics and /loadstar/v1/load callers must present "
                 "(default $LOADSTAR_TOKEN; none: those answer loopback callers only)");
  return [args] { return run_gateway(*args); };
}

}  // namespace loadstar::app
