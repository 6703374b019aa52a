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
#include "gateway/gateway_impl.h"
#include "gateway/respond.h"
#include "openai/protocol.h"

namespace loadstar::gateway {

using nlohmann::json;

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double steady_s() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

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
  text += waiting_room.metrics(steady_ms());
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
    std::lock_guard lock(w.usage_mu);
    TenantLoad& u = w.usage[{tenant->name(), model}];
    ++u.requests;
    u.errors += code >= 500;
    u.prompt_tokens += usage.prompt_tokens;
    u.completion_tokens += usage.completion_tokens;
    u.cost += actual;
  }
}

LoadReport Gateway::Impl::load_report() {
  const int64_t now_ms = steady_ms();
  LoadReport report;
  for (const auto& e : tables.reported(now_ms))
    report.endpoints.push_back(endpoint_load(*e, now_ms, chooser.bytes_per_token()));
  // The counters first: a request turned away between the two reads is
  // then missed for one report, rather than counted twice (held or queued,
  // and turned away) by an autoscaler that keeps the highest arrivals count.
  report.turned_away = waiting_room.turned_away();
  for (const auto& [service, n] : holds.turned_away()) report.turned_away[service] += n;
  for (const auto& [service, n] : holds.by_service()) report.held[service] = n;
  for (const auto& [service, q] : waiting_room.queued(now_ms)) {
    report.queued[service] = q.requests;
    if (q.overdue > 0) report.queued_overdue[service] = q.overdue;
  }
  report.wanted = pool_demand.recent(now_ms);
  report.instance = started;
  std::map<std::pair<std::string, std::string>, TenantLoad> usage;
  for (const auto& w : workers) {
    std::lock_guard lock(w->usage_mu);
    for (const auto& [key, u] : w->usage) {
      TenantLoad& sum = usage[key];
      sum.requests += u.requests;
      sum.errors += u.errors;
      sum.prompt_tokens += u.prompt_tokens;
      sum.completion_tokens += u.completion_tokens;
      sum.cost += u.cost;
    }
  }
  for (auto& [key, u] : usage) {
    u.tenant = key.first;
    u.model = key.second;
    report.tenants.push_back(std::move(u));
  }
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
