#include "gateway/gateway.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include "common/scope_exit.h"
#include "common/strings.h"
#include "gateway/adapter_loader.h"
#include "gateway/adapter_routing.h"
#include "gateway/disaggregation.h"
#include "gateway/hold.h"
#include "gateway/kv_events_feed.h"
#include "gateway/load_report.h"
#include "gateway/peer_load.h"
#include "gateway/published_tables.h"
#include "gateway/request_peek.h"
#include "gateway/respond.h"
#include "gateway/scraper.h"
#include "gateway/selection.h"
#include "gateway/shared_limits.h"
#include "gateway/shared_prefixes.h"
#include "gateway/stats.h"
#include "gateway/upstream.h"
#include "gateway/waiting_room.h"
#include "http/server.h"
#include "openai/protocol.h"

namespace loadstar::gateway {

namespace asio = boost::asio;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

double steady_s() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

// What a worker thread owns. Only that thread touches it; others post to its
// io_context.
struct Worker {
  Worker(const GatewayOptions& options, HoldCounts& holds)
      : upstream(io, UpstreamOptions{.connect_timeout_s = options.connect_timeout_s,
                                     .idle_timeout_s = options.upstream_idle_timeout_s}),
        held(io, table, holds, options.on_demand) {}
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard;
  std::shared_ptr<const RoutingTable> table = std::make_shared<RoutingTable>();
  GatewayStats stats;
  Upstream upstream;  // idle keep-alive connections per replica
  HeldRequests held;  // a new table wakes them
  EndpointChooser::Scratch picks;
  std::vector<Endpoint*> unsaturated;   // scratch of flow control's filter
  std::vector<Endpoint*> canary;        // scratch of a canary's split
  std::vector<Endpoint*> with_adapter;  // scratch of serving_adapter
  std::mt19937_64 rng{std::random_device{}()};
  std::thread thread;
};

thread_local Worker* current_worker = nullptr;

// /metrics and /loadstar/v1/load are for Loadstar and its operators: the
// internal token when the gateway has one, else loopback callers only.
bool internal_caller(const GatewayOptions& options, const http::Request& req) {
  return options.internal_token ? options.internal_token->admits(req) : req.from_loopback();
}

http::Response refuse_internal(const GatewayOptions& options, std::string_view path) {
  if (options.internal_token) return http::unauthorized(path);
  openai::ApiError e{
      403,
      fmt::format("{} answers only loopback callers (the gateway has no internal token)", path),
      {}};
  return {403, "application/json", openai::error_body(e)};
}

asio::awaitable<GatewayStats> copy_stats(Worker* w) {
  co_return w->stats;
}

}  // namespace

struct Gateway::Impl {
  GatewayOptions options;
  std::vector<std::unique_ptr<Worker>> workers;
  std::unique_ptr<http::Server> server;
  std::atomic<int64_t> in_flight{0};
  std::atomic<int64_t> retries_in_flight{0};
  EndpointChooser chooser;
  HoldCounts holds;
  EngineScraper scraper;
  AdapterLoader adapters;                // LoRA adapters loaded on demand
  PublishedTables tables;                // for the load report
  std::unique_ptr<SharedLimits> shared;  // tenant limits in Redis, when configured
  WaitingRoom waiting_room;              // flow control: saturated services' queues
  PoolDemand pool_demand;                // prefill pools requests found empty
  // Picks shared with other gateways through Redis, when configured, and
  // the current endpoints by replica name, to apply theirs.
  std::unique_ptr<SharedPrefixes> shared_prefixes;
  PeerLoad peers;  // other gateways' load on each replica, and ours to report
  KvEventsFeed kv_events{chooser.kv_blocks()};  // engines' own word on their caches
  std::atomic<uint64_t> request_ids{0};
  std::string instance;  // names this gateway's requests in the shared store

  explicit Impl(GatewayOptions o)
      : options(std::move(o)),
        chooser(options.prefix, options.scrape_interval_s),
        scraper(options.scrape_interval_s) {}

  // How a request ended: the status counted, and the engine's usage.
  struct Routed {
    int code = 0;
    Usage usage;
  };
  asio::awaitable<void> handle(http::Exchange& ex);
  asio::awaitable<void> proxy(Worker& w, http::Exchange& ex);
  asio::awaitable<Routed> route(Worker& w, http::Exchange& ex, const RequestPeek& peek,
                                ModelStats& stats, const std::vector<http::Header>& extra_headers,
                                Clock::time_point start, const TenantLimiter* tenant);
  // Flow control before an attempt at a service whose replicas may all be
  // saturated: true to go on; false when the request was answered (503) or
  // its client left, with the status in `code`.
  asio::awaitable<bool> wait_for_room(Worker& w, http::Exchange& ex, const std::string& service,
                                      const TenantLimiter* tenant, int& code);
  // Lets queued requests go where there is room, every 20 ms (worker 0).
  asio::awaitable<void> flow_ticks(Worker& w);
  // Outlier detection's bookkeeping after an attempt.
  void note_outcome(Worker& w, Endpoint& endpoint, bool failed);
  // What this gateway sees of each ready replica and of held requests, for
  // a controller in another process (Kubernetes mode): see gateway.h.
  LoadReport load_report();
  asio::awaitable<std::string> collect_metrics();
};

asio::awaitable<std::string> Gateway::Impl::collect_metrics() {
  GatewayStats merged;
  for (auto& worker : workers) {
    Worker* w = worker.get();
    if (w == current_worker) {
      merged.merge(w->stats);
      continue;
    }
    // Copy that worker's stats on its own thread; resume here after.
    GatewayStats copy = co_await asio::co_spawn(w->io, copy_stats(w), asio::use_awaitable);
    merged.merge(copy);
  }
  if (shared) {
    merged.shared_limits = shared->up() ? 1 : 0;
    merged.shared_limits_errors = shared->errors();
  }
  merged.connections = server->connections();
  merged.max_connections = server->max_connections();
  merged.refused_connections = server->refused_connections();
  std::string text = render_metrics(merged);
  text += waiting_room.metrics();
  text += kv_events.metrics();
  if (shared_prefixes)
    text += fmt::format(
        "# HELP loadstar_gateway_shared_prefixes_up Whether picks are shared with other "
        "gateways through Redis.\n"
        "# TYPE loadstar_gateway_shared_prefixes_up gauge\n"
        "loadstar_gateway_shared_prefixes_up {}\n"
        "# HELP loadstar_gateway_shared_prefixes_total Picks shared through Redis: published, "
        "received from other gateways, dropped (Redis down or behind).\n"
        "# TYPE loadstar_gateway_shared_prefixes_total counter\n"
        "loadstar_gateway_shared_prefixes_total{{direction=\"published\"}} {}\n"
        "loadstar_gateway_shared_prefixes_total{{direction=\"received\"}} {}\n"
        "loadstar_gateway_shared_prefixes_total{{direction=\"dropped\"}} {}\n"
        "# HELP loadstar_gateway_peer_requests_in_flight Requests other gateways last reported "
        "in flight on this gateway's replicas (what its picker adds to its own).\n"
        "# TYPE loadstar_gateway_peer_requests_in_flight gauge\n"
        "loadstar_gateway_peer_requests_in_flight {}\n",
        shared_prefixes->up() ? 1 : 0, shared_prefixes->published(), shared_prefixes->received(),
        shared_prefixes->dropped(), peers.peer_in_flight());
  text += fmt::format(
      "# HELP loadstar_gateway_adapter_loads_total LoRA adapters loaded into replicas on demand.\n"
      "# TYPE loadstar_gateway_adapter_loads_total counter\n"
      "loadstar_gateway_adapter_loads_total {}\n"
      "# HELP loadstar_gateway_adapter_load_failures_total On-demand adapter loads that failed.\n"
      "# TYPE loadstar_gateway_adapter_load_failures_total counter\n"
      "loadstar_gateway_adapter_load_failures_total {}\n",
      adapters.loads(), adapters.failures());
  if (options.extra_metrics) text += options.extra_metrics();
  co_return text;
}

asio::awaitable<void> Gateway::Impl::handle(http::Exchange& ex) {
  Worker& w = *current_worker;
  const http::Request& req = ex.request();
  const std::string_view path = req.path();
  const bool post = req.method == "POST";
  if (post &&
      (path == "/v1/chat/completions" || path == "/v1/completions" || path == "/v1/embeddings")) {
    ++in_flight;
    ScopeExit done([this] { --in_flight; });
    co_await proxy(w, ex);
    co_return;
  }
  http::Response response;
  if (req.method == "GET" && path == "/v1/models") {
    // Listing models needs a key too when tenants are declared (as OpenAI's does).
    const RoutingTable& table = *w.table;
    const TenantLimiter* tenant = nullptr;
    if (table.tenants && !table.tenants->empty()) {
      tenant = table.tenants->find(req.header("Authorization")).tenant;
      if (!tenant) {
        co_await send_error(ex, 401, "A valid API key is required to list models.");
        co_return;
      }
    }
    response = {200, "application/json", models_json(table, tenant, unix_now())};
  } else if (req.method == "GET" && path == "/health") {
    response = {200, "text/plain", "ok\n"};
  } else if ((path == "/metrics" || path.starts_with("/loadstar/")) &&
             !internal_caller(options, req)) {
    response = refuse_internal(options, path);
  } else if (req.method == "GET" && path == "/metrics") {
    std::string text = co_await collect_metrics();
    response = {200, "text/plain; version=0.0.4; charset=utf-8", std::move(text)};
  } else if (req.method == "GET" && path == "/loadstar/v1/load") {
    response = {200, "application/json", load_report_json(load_report())};
  } else {
    openai::ApiError e{404, fmt::format("no route for {} {}", req.method, path), {}};
    response = {404, "application/json", openai::error_body(e)};
  }
  co_await ex.respond(std::move(response));
}

asio::awaitable<void> Gateway::Impl::proxy(Worker& w, http::Exchange& ex) {
  const Clock::time_point start = Clock::now();
  const http::Request& req = ex.request();
  auto peek = peek_request(req.body);
  if (!peek.ok()) {
    const bool model_error = peek.error().message.starts_with("model:");
    co_await send_error(ex, 400, peek.error().message, model_error ? "model" : "");
    co_return;
  }
  const std::string& model = peek->model;
  std::shared_ptr<const RoutingTable> table = w.table;

  // Who is calling. Keys are compared by digest only, and never logged.
  TenantLimiter* tenant = nullptr;
  if (table->tenants && !table->tenants->empty()) {
    const std::string_view authorization = req.header("Authorization");
    auto found = table->tenants->find(authorization);
    if (!found.tenant) {
      const char* reason = authorization.empty() ? "missing"
                           : found.revoked       ? "revoked"
                                                 : "unknown";
      ++w.stats.auth_failures[reason];
      std::string message =
          authorization.empty()
              ? "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
          : found.revoked ? "This API key has been revoked."
                          : "Incorrect API key provided.";
      co_await send_error(ex, 401, std::move(message));
      co_return;
    }
    tenant = found.tenant;
  }
  // A model the tenant may not call answers as one that does not exist, so
  // that keys cannot probe other tenants' model names.
  if ((!table->routes.count(model) && !table->services.count(model)) ||
      (tenant && !tenant->may_call(model))) {
    if (tenant) ++w.stats.tenants[{tenant->name(), model}].requests_by_code[404];
    co_await send_error(
        ex, 404,
        fmt::format("The model `{}` does not exist or you do not have access to it.", model),
        "model");
    co_return;
  }

  // Admission on an estimate: ~4 bytes a prompt token, and the output asked for.
  double estimate = 0;
  std::string shared_id;  // set when the shared store admitted it
  std::vector<http::Header> headers;
  if (tenant) {
    const double input = std::ceil(static_cast<double>(peek->prompt.size()) / 4);
    const double output =
        req.path() == "/v1/embeddings"
            ? 0
            : static_cast<double>(peek->max_tokens.value_or(options.default_output_estimate));
    estimate = tenant->cost(input, output);
    // Across gateway replicas when they share a Redis; this replica's own
    // buckets when not, or while Redis does not answer.
    std::optional<TenantLimiter::Decision> shared_decision;
    if (shared) {
      shared_id = fmt::format("{}-{}", instance, request_ids.fetch_add(1));
      // Named, not temporaries in the co_await: GCC 12 destroys some of
      // those twice.
      std::string name = tenant->name();
      TenantLimits limits = tenant->limits();
      auto pending = shared->admit(std::move(name), std::move(limits), estimate, shared_id);
      shared_decision = co_await std::move(pending);
      if (!shared_decision) shared_id.clear();
    }
    auto decision =
        shared_decision ? std::move(*shared_decision) : tenant->admit(steady_s(), estimate);
    add_rate_limit_headers(decision.state, headers);
    if (!decision.admitted) {
      ++w.stats
            .rate_limited[{tenant->name(), decision.reason.substr(0, decision.reason.find(" ("))}];
      ++w.stats.tenants[{tenant->name(), model}].requests_by_code[429];
      co_await send_error(
          ex, 429,
          fmt::format("Rate limit reached for tenant '{}' on {}. Please try again "
                      "in {}.",
                      tenant->name(), decision.reason, reset_duration(decision.retry_after_s)),
          {}, std::move(headers), decision.retry_after_s);
      co_return;
    }
  }

  ModelStats& stats = w.stats.models[model];
  ++stats.in_flight;
  // A request that ends in an exception (the server answers 500) still
  // leaves the gauge and gives the tenant its concurrency back, charged
  // what it reserved.
  // Where the request's slot and estimate are given back.
  auto finish_tenant = [this, tenant, estimate, &shared_id](double actual) {
    if (!tenant) return;
    if (!shared_id.empty())
      shared->finish(tenant->name(), tenant->limits(), estimate, actual, shared_id);
    else
      tenant->finish(steady_s(), estimate, actual);
  };
  ScopeExit abandoned([&stats, &finish_tenant, estimate] {
    --stats.in_flight;
    finish_tenant(estimate);
  });
  const Routed routed = co_await route(w, ex, *peek, stats, headers, start, tenant);
  abandoned.dismiss();
  const int code = routed.code;
  const Usage& usage = routed.usage;
  ++stats.requests_by_code[code];
  stats.duration.observe(seconds_since(start));
  stats.prompt_tokens += usage.prompt_tokens;
  stats.completion_tokens += usage.completion_tokens;
  --stats.in_flight;
  chooser.learn_bytes_per_token(peek->prompt.size(), usage.prompt_tokens);
  if (tenant) {
    const double actual = tenant->cost(static_cast<double>(usage.prompt_tokens),
                                       static_cast<double>(usage.completion_tokens));
    finish_tenant(actual);
    TenantStats& t = w.stats.tenants[{tenant->name(), model}];
    ++t.requests_by_code[code];
    t.prompt_tokens += usage.prompt_tokens;
    t.completion_tokens += usage.completion_tokens;
    t.cost += actual;
  }
}

asio::awaitable<Gateway::Impl::Routed> Gateway::Impl::route(
    Worker& w, http::Exchange& ex, const RequestPeek& peek, ModelStats& stats,
    const std::vector<http::Header>& extra_headers, Clock::time_point start,
    const TenantLimiter* tenant) {
  const std::string& model = peek.model;
  const http::Request& req = ex.request();
  // An adapter's KV blocks are its own (the engine hashes the adapter in):
  // its prompts are indexed apart from the base model's.
  const auto adapter_route = w.table->routes.find(model);
  const bool adapter = adapter_route != w.table->routes.end() && adapter_route->second.adapter;
  const std::vector<uint64_t> blocks =
      hash_prefix_blocks(peek.prompt, options.prefix.block_bytes, options.prefix.max_blocks,
                         adapter ? std::string_view(model) : std::string_view());
  BackendSelector selector(model);
  selector.resolve(w.table);
  const bool open_gateway = !selector.table().tenants || selector.table().tenants->empty();
  const std::string_view client_authorization = open_gateway ? req.header("Authorization") : "";

  Routed routed;
  std::string failure;
  ForwardOutcome outcome = ForwardOutcome::kRetry;
  bool held = false;
  double held_s = 0;
  // Flow control: the service whose room this request holds a reservation
  // of, until it is counted in an endpoint's in_flight.
  std::string reserved;
  ScopeExit unreserve([this, &reserved] {
    if (!reserved.empty()) waiting_room.dispatched(reserved);
  });
  bool flow_checked = false;
  std::optional<std::vector<uint32_t>> kv_tokens;  // computed for engines with KV events
  for (unsigned attempt = 0; attempt < options.max_attempts && outcome == ForwardOutcome::kRetry;) {
    if (selector.backends().empty()) {
      routed.code = 404;
      co_await send_error(ex, 404, fmt::format("The model `{}` does not exist.", model), "model");
      co_return routed;
    }
    const int64_t now_ms = steady_ms();
    const RoutingTable::Backend* backend = selector.choose_backend(now_ms, w.rng);
    if (!backend) {
      // Nothing to send to. Before any attempt, wait for a replica of a
      // service backend (scaled to zero, or starting); otherwise give up.
      if (attempt > 0 || held) break;
      BackendSelector::HoldTarget target = selector.hold_target();
      if (!target.service) break;
      held = true;
      HoldRequest hold{.model = model,
                       .services = std::move(target.services),
                       .max_requests = target.service->hold_max_requests,
                       .timeout_s = target.service->hold_timeout_s};
      const Clock::time_point hold_start = Clock::now();
      const HoldResult result = co_await w.held.hold(ex, std::move(hold), stats);
      held_s = seconds_since(hold_start);
      if (result != HoldResult::kReady) {
        routed.code = result == HoldResult::kClientGone ? 499 : 503;  // hold() answered the 503
        co_return routed;
      }
      selector.resolve(w.table);
      continue;
    }
    if (!flow_checked && !backend->external &&
        selector.table().services.at(backend->service).flow.enabled()) {
      // Every replica saturated: wait in the gateway's queue for room.
      flow_checked = true;
      int code = 0;
      const bool go = co_await wait_for_room(w, ex, backend->service, tenant, code);
      if (!go) {
        routed.code = code;
        co_return routed;
      }
      reserved = backend->service;
      if (w.table.get() != &selector.table()) {  // a new table came while it waited
        selector.resolve(w.table);
        continue;
      }
    }
    if (attempt > 0) {
      // The retry budget: retries may be only a share of what is in flight.
      const auto budget = std::max<int64_t>(
          options.retry_budget_min,
          static_cast<int64_t>(options.retry_budget_ratio * static_cast<double>(in_flight.load())));
      if (retries_in_flight.load() >= budget) {
        failure += "; retry budget exhausted";
        break;
      }
      ++stats.retries;
    }
    const RoutingTable::Service* svc =
        backend->external ? nullptr : &selector.table().services.at(backend->service);
    const AdapterPlan lora = adapter_plan(svc, *backend);
    if (lora.load && backend->adapter_path.empty()) {
      routed.code = 503;
      co_await send_error(
          ex, 503,
          fmt::format("The adapter `{}` is not staged for this service yet (its status says "
                      "why); retry shortly.",
                      lora.name),
          {}, {}, 5);
      co_return routed;
    }
    if (backend->priority != selector.first_priority()) ++stats.fallbacks;
    ++stats.backend_requests[backend->label()];

    const PickerConfig* picker =
        backend->external ? nullptr : &selector.table().services.at(backend->service).picker;
    EndpointRequest pick_request{
        .blocks = blocks, .prompt_bytes = peek.prompt.size(), .now_ms = now_ms};
    if (picker && !picker->session_header.empty())
      pick_request.session = req.header(picker->session_header);
    std::span<Endpoint* const> candidates = selector.endpoints(*backend, now_ms);
    uint32_t keep_adapters = 0;
    if (picker) {
      if (!lora.name.empty()) {
        pick_request.adapter = lora.name;
        pick_request.max_loras = svc->max_loras;
        keep_adapters = svc->max_cpu_loras;
        candidates = serving_adapter(*svc, candidates, lora.name, w.with_adapter);
      }
      candidates = canary_split(*svc, candidates,
                                std::uniform_real_distribution<double>(0, 1)(w.rng), w.canary);
      candidates = unsaturated(svc->flow, candidates, now_ms, w.unsaturated);
    }
    // Engines that say what their caches hold are matched by token blocks:
    // the prompt is tokenized (once) as they tokenize it.
    if (picker && !kv_tokens && std::any_of(candidates.begin(), candidates.end(), [](Endpoint* e) {
          return !e->kv_events.empty();
        }))
      kv_tokens = engine_sim_prompt_tokens(
          peek.prompt, req.target.find("/chat/completions") != std::string::npos);
    if (kv_tokens) pick_request.tokens = *kv_tokens;
    pick_request.estimate_cache = svc && svc->prefill;
    const EndpointPick chosen = chooser.choose(picker, candidates, pick_request, w.picks);
    Endpoint* endpoint = chosen.endpoint;
    stats.prefix_blocks_matched += chosen.prefix_blocks_matched;
    stats.prefix_blocks_total += chosen.prefix_blocks_total;
    selector.mark_tried(endpoint);

    std::string body = lora.by_index
                           ? upstream_body_selecting_adapter(req.body, peek, backend->model,
                                                             adapter_index(*endpoint, lora.name))
                           : upstream_body(req.body, peek, backend->model);
    // Disaggregated: a prompt worth it is computed on a prefill replica
    // first, and the decode replica only receives its KV.
    int64_t decode_prefill = chosen.prefill;
    bool disaggregated = false;
    const std::string request_id = svc && svc->prefill ? new_request_id() : std::string();
    if (svc && svc->prefill && picker) {
      Disaggregation d{.pool = &*svc->prefill,
                       .picker = picker,
                       .request = &pick_request,
                       .decode = &chosen,
                       .bytes_per_token = chooser.bytes_per_token(),
                       .target = req.target,
                       .body = body,
                       .authorization = client_authorization,
                       .request_id = request_id,
                       .stats = &stats};
      auto prefilled = prefill_if_worth(w.upstream, ex, chooser, w.picks, d);
      Result<PrefillOutcome> outcome = co_await std::move(prefilled);
      if (!outcome.ok()) {
        routed.code = 499;  // the client went away during the prefill
        co_return routed;
      }
      if (outcome->pool_wanted && pool_demand.want(svc->prefill->service, now_ms) &&
          options.on_demand)
        options.on_demand(svc->prefill->service);
      if (!outcome->decode_body.empty()) {
        body = std::move(outcome->decode_body);
        decode_prefill = 0;
        disaggregated = true;
      }
    }
    endpoint->in_flight.fetch_add(1, std::memory_order_relaxed);
    endpoint->requests.fetch_add(1, std::memory_order_relaxed);
    endpoint->pending_prefill.fetch_add(decode_prefill, std::memory_order_relaxed);
    // Other gateways count it at once (their view of this gateway's load
    // would otherwise lag by up to a report interval), and learn its prefix.
    if (shared_prefixes && picker)
      shared_prefixes->publish(
          {.replica = endpoint->replica,
           .address = endpoint->key,
           .session = chosen.session_recorded,
           .prefill = decode_prefill,
           .blocks = chosen.prefix_recorded ? blocks : std::vector<uint64_t>{}});
    if (!pick_request.adapter.empty()) endpoint->adapters.sent(pick_request.adapter, keep_adapters);
    if (!reserved.empty()) waiting_room.dispatched(std::exchange(reserved, {}));
    if (attempt > 0) ++retries_in_flight;
    ForwardRequest forward;
    forward.endpoint = endpoint;
    forward.body = body;
    forward.authorization =
        backend->external ? std::string_view(backend->authorization) : client_authorization;
    forward.headers = extra_headers;
    forward.headers.push_back({"x-loadstar-endpoint", endpoint->replica});
    // A request that waited for a replica to start says how long.
    if (held) forward.headers.push_back({"x-loadstar-held-seconds", fmt::format("{:.3f}", held_s)});
    forward.client_wants_usage = peek.include_usage;
    forward.may_retry = attempt + 1 < options.max_attempts;
    forward.held = held;
    forward.start = start;
    forward.prefill = decode_prefill;
    forward.stats = &stats;
    if (disaggregated) forward.request_id = request_id;
    // An adapter loaded on demand: into this replica first, if it is not there.
    ForwardResult result;
    Status loaded = ok_status();
    if (lora.load)
      loaded = co_await adapters.ensure(*endpoint, std::string(lora.name), backend->adapter_path);
    if (loaded.ok()) {
      result = co_await w.upstream.forward(ex, std::move(forward));
    } else {
      result.failure = loaded.error().message;
      result.prefill_pending = decode_prefill;
    }
    endpoint->pending_prefill.fetch_sub(result.prefill_pending, std::memory_order_relaxed);
    if (attempt > 0) --retries_in_flight;
    endpoint->in_flight.fetch_sub(1, std::memory_order_relaxed);
    if (!pick_request.adapter.empty()) endpoint->adapters.finished(pick_request.adapter);
    waiting_room.notify(*w.table);  // its room may let a queued request go
    outcome = result.outcome;
    routed.code = result.client_status;
    routed.usage.prompt_tokens += result.usage.prompt_tokens;
    routed.usage.completion_tokens += result.usage.completion_tokens;
    failure = std::move(result.failure);
    if (!loaded.ok() && loaded.error().code != ErrorCode::kUnavailable) {
      // The engine refused the adapter (its files, its rank): the service's
      // configuration is at fault, not the replica. The engine's words go
      // to the log, which may name paths; the client gets the gist.
      spdlog::warn("gateway: {}", loaded.error().message);
      routed.code = 500;
      co_await send_error(
          ex, 500,
          fmt::format("The adapter `{}` could not be loaded; the gateway's log says why.",
                      lora.name));
      co_return routed;
    }
    if (outcome == ForwardOutcome::kOverloaded) {
      ++w.stats.overloaded;
      routed.code = 503;
      spdlog::warn("gateway: out of descriptors ({}); answering 503", failure);
      co_await send_error(ex, 503, "the gateway is at its connection limit; retry shortly", {}, {},
                          1);
      co_return routed;
    }
    if (outcome != ForwardOutcome::kClientGone) {
      const bool failed = result.upstream_status == 0 || result.upstream_status >= 500;
      if (failed || result.client_status >= 500)  // a stream cut midway too
        endpoint->failures.fetch_add(1, std::memory_order_relaxed);
      note_outcome(w, *endpoint, failed);
    }
    ++attempt;
  }
  if (outcome == ForwardOutcome::kRetry) {
    const std::span<const Endpoint* const> tried = selector.tried();
    if (tried.empty()) {
      routed.code = 503;
      co_await send_error(ex, 503,
                          fmt::format("no ready replica for model `{}`; retry later", model));
    } else {
      routed.code = 502;
      spdlog::warn("gateway: request for `{}` failed on {} replica(s), the last {}: {}", model,
                   tried.size(), tried.back()->replica, failure);
      co_await send_error(ex, 502,
                          fmt::format("upstream failure for model `{}`: {}", model, failure));
    }
  }
  // The client went away before a status was sent (nginx's convention).
  if (routed.code == 0) routed.code = 499;
  co_return routed;
}

asio::awaitable<bool> Gateway::Impl::wait_for_room(Worker& w, http::Exchange& ex,
                                                   const std::string& service,
                                                   const TenantLimiter* tenant, int& code) {
  const RoutingTable::Service& svc = w.table->services.at(service);
  WaitingRoom::Entry entry{.service = service};
  if (tenant) {
    const TenantLimits limits = tenant->limits();
    entry.tenant = tenant->name();
    entry.priority = limits.priority;
    entry.sheddable = limits.sheddable;
  }
  // The table (and so svc) stays alive while this waits.
  std::shared_ptr<const RoutingTable> table = w.table;
  const WaitingRoom::Verdict verdict =
      co_await waiting_room.enter(ex, std::move(entry), svc.flow, svc.ready);
  using V = WaitingRoom::Verdict;
  if (verdict == V::kGo) co_return true;
  if (verdict == V::kClientGone) {
    code = 499;
    co_return false;
  }
  code = 503;
  std::string message =
      verdict == V::kShed ? fmt::format(
                                "every replica of `{}` is saturated and this key's traffic "
                                "is sheddable; retry later",
                                service)
      : verdict == V::kFull
          ? fmt::format("every replica of `{}` is saturated and its queue is full; retry later",
                        service)
      : verdict == V::kEvicted
          ? fmt::format(
                "every replica of `{}` is saturated and higher-priority requests took "
                "this one's place in the queue; retry later",
                service)
          : fmt::format("no replica of `{}` had room within {}s; retry later", service,
                        svc.flow.queue_timeout_s);
  co_await send_error(ex, 503, std::move(message), {}, {}, 1);
  co_return false;
}

asio::awaitable<void> Gateway::Impl::flow_ticks(Worker& w) {
  asio::steady_timer timer(w.io);
  for (;;) {
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(asio::use_awaitable);
    waiting_room.notify(*w.table);
  }
}

void Gateway::Impl::note_outcome(Worker& w, Endpoint& endpoint, bool failed) {
  const OutlierPolicy policy{.consecutive_failures = options.outlier_consecutive_failures,
                             .base_ejection_s = options.outlier_base_ejection_s};
  const auto ejection = record_outcome(endpoint, failed, policy, steady_ms());
  if (!ejection) return;
  ++w.stats.ejections;
  spdlog::warn("gateway: ejecting {} ({}) for {}s after {} consecutive failures", endpoint.replica,
               endpoint.key, ejection->seconds, ejection->failures);
}

LoadReport Gateway::Impl::load_report() {
  const int64_t now_ms = steady_ms();
  LoadReport report;
  for (const auto& e : tables.reported(now_ms))
    report.endpoints.push_back(endpoint_load(*e, now_ms, chooser.bytes_per_token()));
  for (const auto& [service, n] : holds.by_service()) report.held[service] = n;
  report.queued = waiting_room.queued();
  report.wanted = pool_demand.recent(now_ms);
  return report;
}

LoadReport Gateway::load_report() const {
  return impl_->load_report();
}

Result<std::unique_ptr<Gateway>> Gateway::create(GatewayOptions options) {
  auto impl = std::make_unique<Impl>(options);
  std::vector<asio::io_context*> contexts;
  for (unsigned i = 0; i < std::max(1u, options.workers); ++i) {
    impl->workers.push_back(std::make_unique<Worker>(impl->options, impl->holds));
    contexts.push_back(&impl->workers.back()->io);
  }
  http::ServerOptions server_options;
  server_options.host = options.host;
  server_options.port = options.port;
  server_options.max_body_bytes = options.max_body_bytes;
  server_options.max_connections = options.max_connections;
  server_options.header_timeout_s = options.client_header_timeout_s;
  server_options.body_timeout_s = options.client_body_timeout_s;
  server_options.tls_cert_file = options.tls_cert_file;
  server_options.tls_key_file = options.tls_key_file;
  server_options.error_body = openai::error_body_for;
  if (!options.redis_url.empty()) {
    LS_ASSIGN_OR_RETURN(RedisAddress redis, parse_redis_url(options.redis_url));
    if (redis.password.empty())
      if (const char* pw = std::getenv("LOADSTAR_REDIS_PASSWORD"); pw && *pw) redis.password = pw;
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    impl->instance = fmt::format("{}-{}-{}-{}", host, getpid(), steady_ms(),
                                 reinterpret_cast<uintptr_t>(impl.get()));
    impl->shared = SharedLimits::create(redis);
    Impl* self = impl.get();
    impl->shared_prefixes = SharedPrefixes::create(
        std::move(redis), impl->instance,
        {.pick =
             [self](const DecodedPick& d) {
               self->peers.apply_pick(d.instance, d.pick, steady_ms());
               if (auto e = self->peers.find(d.pick.replica, d.pick.address))
                 self->chooser.record_remote(*e, d.pick.blocks, d.pick.session);
             },
         .load = [self](const DecodedLoad& load) { self->peers.apply(load, steady_ms()); },
         .snapshot = [self] { return self->peers.own(steady_ms()); }});
  }
  Impl* raw = impl.get();
  LS_ASSIGN_OR_RETURN(impl->server,
                      http::Server::create(contexts, server_options,
                                           [raw](http::Exchange& ex) { return raw->handle(ex); }));
  return std::unique_ptr<Gateway>(new Gateway(std::move(impl)));
}

Gateway::Gateway(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Gateway::~Gateway() {
  stop(0);
}

uint16_t Gateway::port() const {
  return impl_->server->port();
}

int64_t Gateway::in_flight() const {
  return impl_->in_flight.load();
}

void Gateway::start() {
  impl_->server->start();
  impl_->scraper.start();
  for (auto& worker : impl_->workers) {
    Worker* w = worker.get();
    w->guard.emplace(w->io.get_executor());
    if (w == impl_->workers.front().get())
      asio::co_spawn(w->io, impl_->flow_ticks(*w), asio::detached);
    w->thread = std::thread([w] {
      current_worker = w;
      w->io.run();
    });
  }
}

void Gateway::stop(double grace_s) {
  if (impl_->workers.empty() || !impl_->workers.front()->thread.joinable()) return;
  impl_->server->stop();
  impl_->scraper.stop();
  const auto deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace_s * 1000));
  while (impl_->in_flight.load() > 0 && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (auto& w : impl_->workers) {
    w->guard.reset();
    w->io.stop();
  }
  for (auto& w : impl_->workers)
    if (w->thread.joinable()) w->thread.join();
}

void Gateway::publish(std::shared_ptr<const RoutingTable> table) {
  const std::vector<std::shared_ptr<Endpoint>> gone = impl_->tables.publish(table, steady_ms());
  impl_->scraper.publish(table);
  impl_->peers.set_endpoints(*table);
  impl_->kv_events.publish(*table);
  // Endpoints that are gone take what the prefix index knew with them.
  for (const auto& e : gone) impl_->chooser.forget(e->id);
  for (auto& worker : impl_->workers) {
    Worker* w = worker.get();
    asio::post(w->io, [w, table] {
      w->table = table;
      w->held.wake();  // held requests look again
    });
  }
}

}  // namespace loadstar::gateway
