// `loadstar up`: gateway, controller and local runtime in one process, and
// the admin API that `loadstar get` and `loadstar apply` talk to.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "agent/agent.h"
#include "agent/agent_api.h"
#include "api/resources.h"
#include "app/admin_api.h"
#include "app/commands.h"
#include "app/dashboard.h"
#include "app/front_door_flags.h"
#include "common/units.h"
#include "controller/controller.h"
#include "controller/load.h"
#include "controller/local_runtime.h"
#include "controller/local_workers.h"
#include "gateway/gateway.h"
#include "http/bearer.h"
#include "http/server.h"
#include "openai/protocol.h"
#include "routing/routing_builder.h"
#include "scheduler/placement.h"
#include "store/store.h"

namespace loadstar::app {

namespace fs = std::filesystem;
namespace asio = boost::asio;
using nlohmann::json;

namespace {

struct UpArgs {
  std::vector<std::string> files;
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  std::string admin_host = "127.0.0.1";
  FrontDoorFlags front_door;
  uint16_t admin_port = 8090;
  std::string token_file;
  std::string data_dir = "var";
  unsigned workers = 2;
  unsigned gateways = 1;
  double scrape_interval_s = 0.1;
  double drain_timeout_s = 30;
  std::string max_body = "8Mi";
  std::string placement_policy = "loadstar";
  double model_resolve_interval_s = 300;
  std::string cache_capacity = "0";
  std::vector<std::string> peers;
};

// Decodes `files` and checks them together with what the store holds.
Result<std::vector<api::Resource>> read_and_check(const std::vector<std::string>& files,
                                                  const store::ResourceStore& store) {
  std::vector<api::Resource> incoming;
  std::string errors;
  for (const auto& f : files) {
    auto resources = api::load_resource_file(f);
    if (!resources.ok()) {
      errors += (errors.empty() ? "" : "\n") + resources.error().message;
      continue;
    }
    for (auto& r : *resources) incoming.push_back(std::move(r));
  }
  if (!errors.empty()) return Error{ErrorCode::kInvalidArgument, errors};
  std::vector<api::Resource> all = incoming;
  std::set<std::pair<std::string, std::string>> names;
  for (const auto& r : incoming)
    names.insert({std::string(api::kind_of(r)), api::metadata_of(r).name});
  for (auto& r : store.list())
    if (!names.count({std::string(api::kind_of(r)), api::metadata_of(r).name}))
      all.push_back(std::move(r));
  LS_RETURN_IF_ERROR(api::check_references(all));
  return incoming;
}

asio::awaitable<void> admin_handle(http::Exchange& ex, controller::Controller* ctl,
                                   store::ResourceStore* store, agent::Agent* agent,
                                   const http::BearerToken* token) {
  const std::string_view path = ex.request().path();
  // The dashboard's page holds no data (its script asks with the token).
  if (auto page = dashboard_response(ex.request())) {
    co_await ex.respond(std::move(*page));
    co_return;
  }
  http::Response response =
      token && path != "/healthz" && path != "/health" && !token->admits(ex.request())
          ? http::unauthorized("the admin API")
          : admin_response(ex.request(), ctl, store, agent);
  co_await ex.respond(std::move(response));
}

std::string self_path() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? "loadstar" : p.string();
}

int run_up(const UpArgs& args) {
  // Signals are taken by sigwait() below; block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto token = http::BearerToken::from_flag_or_env(args.token_file);
  if (!token.ok()) {
    fmt::print(stderr, "{}\n", token.error().message);
    return 2;
  }
  if (!*token && !http::is_loopback_host(args.admin_host)) {
    fmt::print(stderr,
               "--admin-host {}: an admin API reachable from other machines needs --token-file "
               "(or $LOADSTAR_TOKEN): it applies resources and stages any source\n",
               args.admin_host);
    return 2;
  }
  const http::BearerToken* token_ptr = *token ? &**token : nullptr;

  const fs::path data_dir = fs::absolute(args.data_dir);
  auto store = store::LocalStore::open(data_dir / "state");
  if (!store.ok()) {
    spdlog::error("{}", store.error().message);
    return 1;
  }
  auto incoming = read_and_check(args.files, **store);
  if (!incoming.ok()) {
    fmt::print(stderr, "{}\n", incoming.error().message);
    return 2;
  }
  if (Status s = apply_all(**store, *incoming); !s.ok()) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  if ((*store)->list().empty()) {
    fmt::print(
        stderr,
        "nothing to run: pass -f with Model and InferenceService resources (and Tenant, Route)\n");
    return 2;
  }

  // The node agent stages models from http(s)://, hf:// and s3:// sources.
  agent::AgentOptions agent_options;
  agent_options.cache.root = data_dir / "agent";
  agent_options.peers = args.peers;
  if (token_ptr) agent_options.peer_authorization = token_ptr->header().value;
  if (auto capacity = parse_bytes(args.cache_capacity); capacity.ok()) {
    agent_options.cache.capacity_bytes = *capacity;
  } else {
    fmt::print(stderr, "--cache-capacity: {}\n", capacity.error().message);
    return 2;
  }
  auto node_agent = agent::Agent::create(agent_options);
  if (!node_agent.ok()) {
    spdlog::error("agent: {}", node_agent.error().message);
    return 1;
  }

  gateway::GatewayOptions gw_options;
  gw_options.host = args.host;
  gw_options.port = args.port;
  gw_options.workers = args.workers;
  gw_options.scrape_interval_s = args.scrape_interval_s;
  auto max_body = parse_bytes(args.max_body);
  if (!max_body.ok()) {
    fmt::print(stderr, "--max-body-size: {}\n", max_body.error().message);
    return 2;
  }
  gw_options.max_body_bytes = *max_body;
  args.front_door.apply_to(gw_options);
  gw_options.internal_token = *token;
  // Held requests signal demand to the controller through its load source,
  // and the controller's metrics join the gateway's; both exist from here on.
  std::atomic<controller::InProcessLoad*> load_sink{nullptr};
  std::atomic<controller::Controller*> metrics_source{nullptr};
  gw_options.on_demand = [&load_sink](const std::string& service) {
    if (auto* l = load_sink.load()) l->note_demand(service);
  };
  gw_options.extra_metrics = [&metrics_source]() -> std::string {
    auto* c = metrics_source.load();
    return c ? c->scheduler_metrics() : std::string();
  };
  if (auto p = scheduler::PlacementPolicy::parse(args.placement_policy); !p.ok()) {
    fmt::print(stderr, "--placement-policy: {}\n", p.error().message);
    return 2;
  }
  // One gateway, or several side by side (--gateways: each with its own
  // port, connections, counters and prefix index, as replicas behind a load
  // balancer would be; they share picks only through --redis).
  std::vector<std::unique_ptr<gateway::Gateway>> gateways;
  for (unsigned i = 0; i < std::max(1u, args.gateways); ++i) {
    if (i > 0 && gw_options.port != 0) ++gw_options.port;
    auto gw = gateway::Gateway::create(gw_options);
    if (!gw.ok()) {
      spdlog::error("gateway: {}", gw.error().message);
      return 1;
    }
    gateways.push_back(std::move(*gw));
  }
  gateway::Gateway* gateway = gateways.front().get();

  // The controller reads the gateways' load directly, runs engines as child
  // processes, and publishes the routing inputs the gateways' tables are
  // built from (each its own table, so that no counter is shared).
  controller::InProcessLoad load([&gateways] {
    controller::InProcessLoad::Reports reports;
    for (size_t i = 0; i < gateways.size(); ++i)
      reports.emplace_back(fmt::format("gateway-{}", i), gateways[i]->load_report());
    return reports;
  });
  controller::LocalRuntime runtime(
      {.data_dir = data_dir, .loadstar_bin = self_path(), .agent = node_agent->get()});
  // Jobs' workers: child processes, their logs and checkpoints under DATA/jobs.
  controller::LocalWorkers workers(data_dir);
  controller::RealClock clock;
  controller::ControllerOptions ctl_options;
  ctl_options.drain_timeout_s = args.drain_timeout_s;
  ctl_options.placement_policy = args.placement_policy;
  ctl_options.model_resolve_interval_s = args.model_resolve_interval_s;
  std::vector<routing::RoutingBuilder> tables(gateways.size());
  controller::Controller ctl(**store, runtime, &load, clock, ctl_options,
                             [&gateways, &tables](const routing::RoutingInputs& inputs) {
                               for (size_t i = 0; i < gateways.size(); ++i)
                                 gateways[i]->publish(tables[i].build(inputs));
                             });
  ctl.run_jobs(workers);
  load_sink = &load;
  metrics_source = &ctl;

  asio::io_context admin_io(1);
  store::ResourceStore* store_ptr = store->get();
  controller::Controller* ctl_ptr = &ctl;
  agent::Agent* agent_ptr = node_agent->get();
  http::ServerOptions admin_options;
  admin_options.host = args.admin_host;
  admin_options.port = args.admin_port;
  admin_options.error_body = openai::error_body_for;
  auto admin = http::Server::create(
      {&admin_io}, admin_options, [ctl_ptr, store_ptr, agent_ptr, token_ptr](http::Exchange& ex) {
        return admin_handle(ex, ctl_ptr, store_ptr, agent_ptr, token_ptr);
      });
  if (!admin.ok()) {
    spdlog::error("admin API: {}", admin.error().message);
    return 1;
  }

  for (auto& g : gateways) g->start();
  ctl.start();
  (*admin)->start();
  std::thread admin_thread([&admin_io] { admin_io.run(); });

  fmt::print(
      "Loadstar is up.\n"
      "  OpenAI API: {5}://{0}:{1}/v1   (chat/completions, completions, embeddings, models)\n"
      "  metrics:    {5}://{0}:{1}/metrics\n"
      "  admin API:  http://{4}:{2}/api/v1   (loadstar get services | replicas | queues | jobs)\n"
      "  agent API:  http://{4}:{2}/agent/v1 (loadstar stage MODEL)\n"
      "  state:      {3}\n"
      "Press Ctrl-C to stop.\n",
      args.host, gateway->port(), (*admin)->port(), data_dir.string(), args.admin_host,
      args.front_door.tls_cert.empty() ? "http" : "https");
  for (size_t i = 1; i < gateways.size(); ++i)
    fmt::print("  gateway {}:  {}://{}:{}/v1\n", i + 1,
               args.front_door.tls_cert.empty() ? "http" : "https", args.host, gateways[i]->port());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("signal {}: draining replicas and stopping", sig);
  ctl.stop();  // unpublish, drain in-flight requests, stop engines
  for (auto& g : gateways) g->stop(5);
  (*admin)->stop();
  admin_io.stop();
  admin_thread.join();
  spdlog::info("stopped");
  return 0;
}

}  // namespace

std::function<int()> setup_up(CLI::App& app) {
  auto args = std::make_shared<UpArgs>();
  app.add_option("-f,--filename", args->files,
                 "Resource files to apply at start (Model, InferenceService, Tenant, Route, Node, "
                 "Queue, Job)");
  app.add_option("--host", args->host)->capture_default_str();
  app.add_option("--port", args->port, "Gateway port (OpenAI API)")->capture_default_str();
  app.add_option("--admin-port", args->admin_port, "Admin API port")->capture_default_str();
  args->front_door.add_to(app);
  app.add_option("--admin-host", args->admin_host,
                 "Admin API address (apply, stage, replicas), independent of --host; off "
                 "loopback it needs --token-file")
      ->capture_default_str();
  app.add_option("--token-file", args->token_file,
                 "A token the admin API and the gateway's /metrics require (default "
                 "$LOADSTAR_TOKEN; none: they answer loopback callers only)");
  app.add_option("--data-dir", args->data_dir, "State, model cache and replica logs")
      ->capture_default_str();
  app.add_option("--workers", args->workers, "Gateway worker threads")->capture_default_str();
  app.add_option("--gateways", args->gateways,
                 "Gateways side by side, on --port and the ports after it (each its own "
                 "connections, counters and prefix index, as replicas behind a load balancer; "
                 "they share picks only through --redis)")
      ->check(CLI::Range(1u, 16u))
      ->capture_default_str();
  app.add_option("--scrape-interval", args->scrape_interval_s,
                 "Seconds between reads of each replica's /metrics by the gateway (0: never)")
      ->capture_default_str();
  app.add_option("--max-body-size", args->max_body, "Largest request body the gateway accepts")
      ->capture_default_str();
  app.add_option("--placement-policy", args->placement_policy,
                 "How replicas are placed on nodes: loadstar (FGD + best-fit + locality), fgd, "
                 "best-fit, dot-product, gpu-packing, random, or scorer weights such as "
                 "fragmentation=1,bestFit=0.05,locality=0.5")
      ->capture_default_str();
  app.add_option("--model-resolve-interval", args->model_resolve_interval_s,
                 "Seconds between looks at what an unpinned Model source (hf:// without a "
                 "commit, s3://, http(s)://) holds; new bytes there roll out as a new revision")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--cache-capacity", args->cache_capacity,
                 "Model cache size (e.g. 200Gi); least recently used models are evicted past it "
                 "(0: the disk)")
      ->capture_default_str();
  app.add_option("--peer", args->peers,
                 "A `loadstar agent` to fetch model chunks from before the origin (repeat)");
  app.add_option("--drain-timeout", args->drain_timeout_s,
                 "Seconds a stopping replica may finish requests")
      ->capture_default_str();
  return [args] { return run_up(*args); };
}

}  // namespace loadstar::app
