#include "gateway/gateway.h"

#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <xxhash.h>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "common/scope_exit.h"
#include "common/strings.h"
#include "gateway/engine_load.h"
#include "gateway/request_peek.h"
#include "gateway/stats.h"
#include "http/client.h"
#include "http/server.h"
#include "openai/protocol.h"

namespace loadstar::gateway {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

namespace {

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Worker {
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard;
  std::shared_ptr<const RoutingTable> table = std::make_shared<RoutingTable>();
  GatewayStats stats;
  // Idle keep-alive connections per upstream "host:port", used LIFO.
  std::unordered_map<std::string, std::vector<std::unique_ptr<tcp::socket>>> idle;
  // Timers of held requests; a new table cancels them so they look again.
  std::vector<asio::steady_timer*> held;
  std::mt19937_64 rng{std::random_device{}()};
  uint64_t turn = 0;
  std::thread thread;
};

thread_local Worker* current_worker = nullptr;

// The most recently used idle connection that is still open, or null. A
// connection the peer has closed (or that has unsolicited bytes waiting, such
// as a 408) reads as ready; an open, quiet one would block.
std::unique_ptr<tcp::socket> take_idle(std::vector<std::unique_ptr<tcp::socket>>& pool) {
  while (!pool.empty()) {
    std::unique_ptr<tcp::socket> conn = std::move(pool.back());
    pool.pop_back();
    char byte;
    const ssize_t n = ::recv(conn->native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return conn;
  }
  return nullptr;
}

asio::awaitable<GatewayStats> copy_stats(Worker* w) {
  co_return w->stats;
}

int64_t steady_ms_of(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

int64_t steady_ms() {
  return steady_ms_of(Clock::now());
}

double steady_s() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

// How a forwarding attempt ended.
enum class Attempt { kDone, kRetry, kClientGone };

// What one request learned from its engine's usage reports.
struct RequestUsage {
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
};

// Adds the engine-reported usage of a JSON body or event.
void add_usage(std::string_view text, RequestUsage& usage) {
  if (auto u = peek_usage(text)) {
    usage.prompt_tokens += u->prompt_tokens;
    usage.completion_tokens += u->completion_tokens;
  }
}

// The endpoints a backend can be sent to now.
void backend_candidates(const RoutingTable& table, const RoutingTable::Backend& backend,
                        const std::vector<const Endpoint*>& tried, bool skip_ejected,
                        int64_t now_ms, std::vector<Endpoint*>& out) {
  out.clear();
  auto usable = [&](const Endpoint* e) {
    if (std::find(tried.begin(), tried.end(), e) != tried.end()) return false;
    return !skip_ejected || e->ejected_until_ms.load(std::memory_order_relaxed) <= now_ms;
  };
  if (backend.external) {
    if (usable(backend.external.get())) out.push_back(backend.external.get());
    return;
  }
  auto it = table.services.find(backend.service);
  if (it == table.services.end()) return;
  for (const auto& e : it->second.ready)
    if (usable(e.get())) out.push_back(e.get());
}

// The message of an OpenAI-shaped error body, if it is one (for logs and
// the final error when every attempt failed).
std::string openai_error_message(std::string_view body) {
  json doc = json::parse(body, nullptr, false);
  if (doc.is_object() && doc.contains("error") && doc["error"].is_object() &&
      doc["error"].contains("message") && doc["error"]["message"].is_string())
    return doc["error"]["message"].get<std::string>().substr(0, 200);
  return {};
}

// Rate-limit headers in OpenAI's names.
void add_rate_limit_headers(const RateLimitState& s, std::vector<http::Header>& headers) {
  auto number = [](double v) { return std::to_string(static_cast<int64_t>(v)); };
  if (s.limit_requests) {
    headers.push_back({"x-ratelimit-limit-requests", number(*s.limit_requests)});
    headers.push_back({"x-ratelimit-remaining-requests", number(*s.remaining_requests)});
    headers.push_back({"x-ratelimit-reset-requests", reset_duration(*s.reset_requests_s)});
  }
  if (s.limit_tokens) {
    headers.push_back({"x-ratelimit-limit-tokens", number(*s.limit_tokens)});
    headers.push_back({"x-ratelimit-remaining-tokens", number(*s.remaining_tokens)});
    headers.push_back({"x-ratelimit-reset-tokens", reset_duration(*s.reset_tokens_s)});
  }
}

enum class HoldResult { kReady, kTimeout, kOverflow, kClientGone };

}  // namespace

struct Gateway::Impl {
  GatewayOptions options;
  std::vector<std::unique_ptr<Worker>> workers;
  std::unique_ptr<http::Server> server;
  std::atomic<int64_t> in_flight{0};
  std::atomic<int64_t> retries_in_flight{0};
  PrefixIndex prefixes;
  PrefixIndex sessions{
      PrefixIndexOptions{.block_bytes = 1, .max_blocks = 1, .default_endpoint_blocks = 1u << 16}};
  // Prompt bytes per token, learned from the engines' usage reports: turns
  // an engine's KV size in tokens into prefix-index blocks.
  std::atomic<double> bytes_per_token{4};
  // The latest table, for the scraper; and held requests per model.
  std::mutex mu;
  std::shared_ptr<const RoutingTable> latest = std::make_shared<RoutingTable>();
  // Endpoints that left the table (a replica being drained), with when: the
  // load report keeps counting them while requests are in flight there, and
  // for a while after (a worker may still pick one from its previous table),
  // so the controller does not stop an engine under a running stream.
  struct Retired {
    std::shared_ptr<Endpoint> endpoint;
    int64_t at_ms = 0;
  };
  std::vector<Retired> retired;
  static constexpr int64_t kRetiredReportMs = 5000;
  // Drops the retired endpoints that are done (under `mu`).
  void prune_retired(int64_t now_ms) {
    std::erase_if(retired, [now_ms](const Retired& r) {
      return r.endpoint->in_flight.load() == 0 && now_ms - r.at_ms > kRetiredReportMs;
    });
  }
  std::unordered_map<std::string, uint32_t> held_count;
  std::unordered_map<std::string, uint32_t> held_by_service;  // services they wait for
  std::condition_variable scraper_wake;
  bool stopping = false;
  std::thread scraper;

  explicit Impl(GatewayOptions o) : options(std::move(o)), prefixes(options.prefix) {}

  asio::awaitable<void> handle(http::Exchange& ex);
  asio::awaitable<void> proxy(Worker& w, http::Exchange& ex);
  asio::awaitable<int> route(Worker& w, http::Exchange& ex, const RequestPeek& peek,
                             ModelStats& stats, RequestUsage& usage,
                             const std::vector<http::Header>& extra_headers,
                             Clock::time_point start);
  asio::awaitable<HoldResult> hold(Worker& w, http::Exchange& ex, const std::string& model,
                                   const RoutingTable::Service& service,
                                   const std::vector<std::string>& demand);
  asio::awaitable<Attempt> forward(Worker& w, http::Exchange& ex, Endpoint& endpoint,
                                   const std::string& body, std::string_view authorization,
                                   bool client_wants_usage, bool may_retry, ModelStats& stats,
                                   RequestUsage& usage,
                                   const std::vector<http::Header>& extra_headers,
                                   Clock::time_point start, bool held, int64_t& prefill, int& code,
                                   int& upstream_status, std::string& failure);
  void note_outcome(Worker& w, Endpoint& endpoint, bool failed);
  // What this gateway sees of each ready replica and of held requests, for
  // a controller in another process (Kubernetes mode): see gateway.h.
  std::string load_report();
  // How many prefix-index blocks the endpoint's KV cache holds (0: unknown).
  size_t prefix_capacity(const Endpoint& endpoint) const {
    const double tokens = endpoint.kv_capacity_tokens.load(std::memory_order_relaxed);
    return static_cast<size_t>(tokens * bytes_per_token.load(std::memory_order_relaxed) /
                               static_cast<double>(options.prefix.block_bytes));
  }
  void scrape_loop();
  asio::awaitable<std::string> collect_metrics();
  std::string models_json(const RoutingTable& table) const;
};

namespace {

asio::awaitable<void> send_error(http::Exchange& ex, int status, std::string message,
                                 std::string param = {}, std::vector<http::Header> headers = {},
                                 double retry_after_s = 1) {
  openai::ApiError error{status, std::move(message), std::move(param)};
  http::Response response{status, "application/json", openai::error_body(error),
                          std::move(headers)};
  if (status == 503 || status == 429)
    response.headers.push_back({"Retry-After", std::to_string(retry_after_seconds(retry_after_s))});
  co_await ex.respond(std::move(response));
}

}  // namespace

std::string Gateway::Impl::models_json(const RoutingTable& table) const {
  json data = json::array();
  std::vector<std::pair<std::string, size_t>> models;
  for (const auto& [name, svc] : table.services) models.push_back({name, svc.ready.size()});
  for (const auto& [name, route] : table.routes) {
    size_t ready = 0;
    for (const auto& b : route.backends) {
      if (b.external) {
        ++ready;
      } else if (auto it = table.services.find(b.service); it != table.services.end()) {
        ready += it->second.ready.size();
      }
    }
    models.push_back({name, ready});
  }
  std::sort(models.begin(), models.end());
  for (const auto& [name, ready] : models) {
    data.push_back({{"id", name},
                    {"object", "model"},
                    {"created", unix_now()},
                    {"owned_by", "loadstar"},
                    {"ready_replicas", ready}});
  }
  return json({{"object", "list"}, {"data", data}}).dump();
}

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
  std::string text = render_metrics(merged);
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
    if (table.tenants && !table.tenants->empty() &&
        !table.tenants->find(req.header("Authorization")).tenant) {
      co_await send_error(ex, 401, "A valid API key is required to list models.");
      co_return;
    }
    response = {200, "application/json", models_json(table)};
  } else if (req.method == "GET" && path == "/health") {
    response = {200, "text/plain", "ok\n"};
  } else if (req.method == "GET" && path == "/metrics") {
    std::string text = co_await collect_metrics();
    response = {200, "text/plain; version=0.0.4; charset=utf-8", std::move(text)};
  } else if (req.method == "GET" && path == "/loadstar/v1/load") {
    response = {200, "application/json", load_report()};
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
  if (!table->routes.count(model) && !table->services.count(model)) {
    co_await send_error(ex, 404, fmt::format("The model `{}` does not exist.", model), "model");
    co_return;
  }

  // Admission on an estimate: ~4 bytes a prompt token, and the output asked for.
  double estimate = 0;
  std::vector<http::Header> headers;
  if (tenant) {
    const double input = std::ceil(static_cast<double>(peek->prompt.size()) / 4);
    const double output =
        req.path() == "/v1/embeddings"
            ? 0
            : static_cast<double>(peek->max_tokens.value_or(options.default_output_estimate));
    estimate = tenant->cost(input, output);
    auto decision = tenant->admit(steady_s(), estimate);
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
  ScopeExit abandoned([&stats, &tenant, estimate] {
    --stats.in_flight;
    if (tenant) tenant->finish(steady_s(), estimate, estimate);
  });
  RequestUsage usage;
  const int code = co_await route(w, ex, *peek, stats, usage, headers, start);
  abandoned.dismiss();
  ++stats.requests_by_code[code];
  stats.duration.observe(seconds_since(start));
  stats.prompt_tokens += usage.prompt_tokens;
  stats.completion_tokens += usage.completion_tokens;
  --stats.in_flight;
  if (usage.prompt_tokens > 16 && peek->prompt.size() > 64) {
    const double ratio =
        static_cast<double>(peek->prompt.size()) / static_cast<double>(usage.prompt_tokens);
    const double old = bytes_per_token.load(std::memory_order_relaxed);
    bytes_per_token.store(0.98 * old + 0.02 * std::clamp(ratio, 1.0, 16.0),
                          std::memory_order_relaxed);
  }
  if (tenant) {
    const double actual = tenant->cost(static_cast<double>(usage.prompt_tokens),
                                       static_cast<double>(usage.completion_tokens));
    tenant->finish(steady_s(), estimate, actual);
    TenantStats& t = w.stats.tenants[{tenant->name(), model}];
    ++t.requests_by_code[code];
    t.prompt_tokens += usage.prompt_tokens;
    t.completion_tokens += usage.completion_tokens;
    t.cost += actual;
  }
}

asio::awaitable<int> Gateway::Impl::route(Worker& w, http::Exchange& ex, const RequestPeek& peek,
                                          ModelStats& stats, RequestUsage& usage,
                                          const std::vector<http::Header>& extra_headers,
                                          Clock::time_point start) {
  const std::string& model = peek.model;
  const http::Request& req = ex.request();
  const std::vector<uint64_t> blocks =
      hash_prefix_blocks(peek.prompt, options.prefix.block_bytes, options.prefix.max_blocks);
  std::shared_ptr<const RoutingTable> table = w.table;
  RoutingTable::Backend direct;
  direct.service = model;
  std::vector<const RoutingTable::Backend*> backends;
  auto resolve = [&] {
    backends.clear();
    if (auto r = table->routes.find(model); r != table->routes.end()) {
      for (const auto& b : r->second.backends) backends.push_back(&b);
    } else if (table->services.count(model)) {
      backends.push_back(&direct);
    }
  };
  resolve();
  const bool open_gateway = !table->tenants || table->tenants->empty();
  const std::string_view client_authorization = open_gateway ? req.header("Authorization") : "";

  int code = 0;
  int upstream_status = 0;
  std::string failure;
  std::vector<const Endpoint*> tried;
  std::vector<Endpoint*> candidates;
  std::vector<CandidateView> views;
  std::vector<uint64_t> ids;
  std::vector<uint32_t> matched;
  Attempt outcome = Attempt::kRetry;
  bool held = false;
  double held_s = 0;
  uint32_t first_priority = backends.empty() ? 0 : backends.front()->priority;
  for (unsigned attempt = 0; attempt < options.max_attempts && outcome == Attempt::kRetry;) {
    if (backends.empty()) {
      code = 404;
      co_await send_error(ex, 404, fmt::format("The model `{}` does not exist.", model), "model");
      co_return code;
    }
    // The lowest priority group with a usable endpoint; within it, a backend
    // drawn by weight. Ejected endpoints are skipped unless nothing else is left.
    const int64_t now_ms = steady_ms();
    const RoutingTable::Backend* backend = nullptr;
    for (int pass = 0; pass < 2 && !backend; ++pass) {
      for (size_t g = 0; g < backends.size() && !backend;) {
        size_t g_end = g;
        uint64_t total = 0;
        std::vector<std::pair<const RoutingTable::Backend*, uint64_t>> usable;
        while (g_end < backends.size() && backends[g_end]->priority == backends[g]->priority) {
          backend_candidates(*table, *backends[g_end], tried, pass == 0, now_ms, candidates);
          if (!candidates.empty() && backends[g_end]->weight > 0) {
            total += backends[g_end]->weight;
            usable.push_back({backends[g_end], total});
          }
          ++g_end;
        }
        if (total > 0) {
          const uint64_t draw = w.rng() % total;
          for (const auto& [b, upto] : usable)
            if (draw < upto) {
              backend = b;
              break;
            }
        }
        g = g_end;
      }
    }
    if (!backend) {
      // Nothing to send to. Before any attempt, wait for a replica of a
      // service backend (scaled to zero, or starting); otherwise give up.
      std::vector<std::string> demand;
      const RoutingTable::Service* service = nullptr;
      for (const auto* b : backends)
        if (!b->external)
          if (auto it = table->services.find(b->service);
              it != table->services.end() && it->second.may_get_replicas) {
            demand.push_back(b->service);
            if (!service) service = &it->second;
          }
      if (attempt > 0 || held || !service) break;
      held = true;
      ++stats.held;
      const Clock::time_point hold_start = Clock::now();
      const HoldResult result = co_await hold(w, ex, model, *service, demand);
      held_s = std::chrono::duration<double>(Clock::now() - hold_start).count();
      if (result == HoldResult::kClientGone) co_return 499;
      if (result == HoldResult::kOverflow) {
        ++stats.hold_overflows;
        code = 503;
        co_await send_error(ex, 503,
                            fmt::format("no ready replica for model `{}` and too many requests are "
                                        "waiting for one; retry later",
                                        model),
                            {}, {}, service->hold_timeout_s / 4);
        co_return code;
      }
      if (result == HoldResult::kTimeout) {
        ++stats.hold_timeouts;
        code = 503;
        co_await send_error(ex, 503,
                            fmt::format("no replica of model `{}` became ready within {}s; retry "
                                        "later",
                                        model, service->hold_timeout_s));
        co_return code;
      }
      table = w.table;
      resolve();
      first_priority = backends.empty() ? 0 : backends.front()->priority;
      continue;
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
    if (backend->priority != first_priority) ++stats.fallbacks;
    ++stats.backend_requests[backend->label()];

    // Pick the endpoint.
    backend_candidates(*table, *backend, tried, true, now_ms, candidates);
    if (candidates.empty()) backend_candidates(*table, *backend, tried, false, now_ms, candidates);
    Endpoint* endpoint = candidates.front();
    int64_t prefill = static_cast<int64_t>(peek.prompt.size());
    if (!backend->external && candidates.size() > 1) {
      const RoutingTable::Service& svc = table->services.at(backend->service);
      const PickerConfig& picker = svc.picker;
      views.assign(candidates.size(), {});
      ids.resize(candidates.size());
      matched.assign(candidates.size(), 0);
      const bool scored = picker.kind == PickerKind::kScored;
      std::vector<uint64_t> session;
      if (scored && !picker.session_header.empty() && picker.weights.session > 0)
        if (auto value = req.header(picker.session_header); !value.empty())
          session.push_back(XXH3_64bits(value.data(), value.size()));
      if (scored) {
        for (size_t i = 0; i < candidates.size(); ++i) ids[i] = candidates[i]->id;
        prefixes.match(blocks, ids, matched);
      }
      std::vector<uint32_t> session_matched(candidates.size(), 0);
      if (!session.empty()) sessions.match(session, ids, session_matched);
      const int64_t fresh_after =
          now_ms - static_cast<int64_t>(options.scrape_interval_s * 5000) - 1000;
      for (size_t i = 0; i < candidates.size(); ++i) {
        const Endpoint& e = *candidates[i];
        CandidateView& v = views[i];
        v.in_flight = e.in_flight.load(std::memory_order_relaxed);
        v.pending_prefill = static_cast<double>(e.pending_prefill.load(std::memory_order_relaxed));
        v.uncached = static_cast<double>(peek.prompt.size()) -
                     static_cast<double>(
                         std::min(peek.prompt.size(), matched[i] * options.prefix.block_bytes));
        v.has_engine_metrics = e.metrics_at_ms.load(std::memory_order_relaxed) > fresh_after;
        v.waiting = e.waiting.load(std::memory_order_relaxed);
        v.kv_usage = e.kv_usage.load(std::memory_order_relaxed);
        v.prefix_blocks = matched[i];
        v.session_match = session_matched[i] > 0;
      }
      const PickDecision decision = pick(picker, views, blocks.size(), w.turn++);
      endpoint = candidates[decision.index];
      prefill = static_cast<int64_t>(views[decision.index].uncached);
      stats.prefix_blocks_matched += matched[decision.index];
      if (scored) {
        stats.prefix_blocks_total += blocks.size();
        prefixes.record(blocks, endpoint->id, prefix_capacity(*endpoint));
        if (!session.empty()) sessions.record(session, endpoint->id);
      }
    } else if (!backend->external) {
      prefixes.record(blocks, endpoint->id, prefix_capacity(*endpoint));
    }
    tried.push_back(endpoint);

    const std::string body = upstream_body(req.body, peek, backend->model);
    const std::string_view authorization =
        backend->external ? std::string_view(backend->authorization) : client_authorization;
    const bool may_retry = attempt + 1 < options.max_attempts;
    endpoint->in_flight.fetch_add(1, std::memory_order_relaxed);
    endpoint->requests.fetch_add(1, std::memory_order_relaxed);
    endpoint->pending_prefill.fetch_add(prefill, std::memory_order_relaxed);
    if (attempt > 0) ++retries_in_flight;
    std::vector<http::Header> headers = extra_headers;
    headers.push_back({"x-loadstar-endpoint", endpoint->replica});
    // A request that waited for a replica to start says how long.
    if (held) headers.push_back({"x-loadstar-held-seconds", fmt::format("{:.3f}", held_s)});
    outcome = co_await forward(w, ex, *endpoint, body, authorization, peek.include_usage, may_retry,
                               stats, usage, headers, start, held, prefill, code, upstream_status,
                               failure);
    endpoint->pending_prefill.fetch_sub(prefill, std::memory_order_relaxed);  // if still counted
    if (attempt > 0) --retries_in_flight;
    endpoint->in_flight.fetch_sub(1, std::memory_order_relaxed);
    if (outcome != Attempt::kClientGone)
      note_outcome(w, *endpoint, upstream_status == 0 || upstream_status >= 500);
    ++attempt;
  }
  if (outcome == Attempt::kRetry) {
    if (tried.empty()) {
      code = 503;
      co_await send_error(ex, 503,
                          fmt::format("no ready replica for model `{}`; retry later", model));
    } else {
      code = 502;
      spdlog::warn("gateway: request for `{}` failed on {} replica(s), the last {}: {}", model,
                   tried.size(), tried.back()->replica, failure);
      co_await send_error(ex, 502,
                          fmt::format("upstream failure for model `{}`: {}", model, failure));
    }
  }
  if (code == 0) code = 499;  // the client went away before a status was sent (nginx's convention)
  co_return code;
}

void Gateway::Impl::note_outcome(Worker& w, Endpoint& endpoint, bool failed) {
  if (!failed) {
    endpoint.consecutive_failures.store(0, std::memory_order_relaxed);
    return;
  }
  const uint32_t n = endpoint.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n < options.outlier_consecutive_failures) return;
  endpoint.consecutive_failures.store(0, std::memory_order_relaxed);
  const uint32_t times = std::min<uint32_t>(10, endpoint.ejections.fetch_add(1) + 1);
  endpoint.ejected_until_ms.store(
      steady_ms() + static_cast<int64_t>(options.outlier_base_ejection_s * 1000 * times),
      std::memory_order_relaxed);
  ++w.stats.ejections;
  spdlog::warn("gateway: ejecting {} ({}) for {}s after {} consecutive failures", endpoint.replica,
               endpoint.key, options.outlier_base_ejection_s * times, n);
}

asio::awaitable<HoldResult> Gateway::Impl::hold(Worker& w, http::Exchange& ex,
                                                const std::string& model,
                                                const RoutingTable::Service& service,
                                                const std::vector<std::string>& demand) {
  const uint32_t max_held = service.hold_max_requests;
  const double timeout_s = service.hold_timeout_s;
  {
    std::lock_guard lock(mu);
    uint32_t& n = held_count[model];
    if (n >= max_held) co_return HoldResult::kOverflow;
    ++n;
    for (const auto& s : demand) ++held_by_service[s];
  }
  if (options.on_demand)
    for (const auto& s : demand) options.on_demand(s);
  asio::steady_timer timer(w.io);
  auto gone = std::make_shared<bool>(false);
  ex.on_client_closed([gone, &timer] {
    *gone = true;
    timer.cancel();
  });
  w.held.push_back(&timer);
  const auto deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  HoldResult result = HoldResult::kTimeout;
  while (Clock::now() < deadline) {
    // Wake at least once a second to say again that a request is waiting:
    // a replica may take longer to start than the service's idle window,
    // and the autoscaler must not take it away meanwhile.
    timer.expires_at(std::min(deadline, Clock::now() + std::chrono::seconds(1)));
    co_await timer.async_wait(kUseTuple);
    if (*gone) {
      result = HoldResult::kClientGone;
      break;
    }
    // Woken by a new table: anything to send to now?
    const RoutingTable& table = *w.table;
    bool ready = false;
    if (auto r = table.routes.find(model); r != table.routes.end()) {
      for (const auto& b : r->second.backends) {
        if (b.external) ready = true;
        if (auto it = table.services.find(b.service); it != table.services.end())
          ready |= !it->second.ready.empty();
      }
    } else if (auto it = table.services.find(model); it != table.services.end()) {
      ready = !it->second.ready.empty();
    } else {
      ready = true;  // gone: let the caller answer 404
    }
    if (ready) {
      result = HoldResult::kReady;
      break;
    }
    if (options.on_demand)
      for (const auto& s : demand) options.on_demand(s);
  }
  ex.on_client_closed([] {});
  w.held.erase(std::find(w.held.begin(), w.held.end(), &timer));
  std::lock_guard lock(mu);
  --held_count[model];
  for (const auto& s : demand) --held_by_service[s];
  co_return result;
}

std::string Gateway::Impl::load_report() {
  const int64_t now_ms = steady_ms();
  std::vector<std::shared_ptr<Endpoint>> reported;
  nlohmann::json held = nlohmann::json::object();
  {
    std::lock_guard lock(mu);
    std::unordered_set<std::string>
        names;  // a replica is reported once (its counters are cumulative)
    for (const auto& [name, svc] : latest->services)
      for (const auto& e : svc.ready)
        if (names.insert(e->replica).second) reported.push_back(e);
    prune_retired(now_ms);  // drained ones are forgotten; draining ones still count
    for (auto r = retired.rbegin(); r != retired.rend(); ++r)  // the latest first
      if (names.insert(r->endpoint->replica).second) reported.push_back(r->endpoint);
    for (const auto& [service, n] : held_by_service)
      if (n > 0) held[service] = n;
  }
  nlohmann::json endpoints = nlohmann::json::array();
  for (const auto& e : reported) {
    nlohmann::json ttft = nlohmann::json::array();
    for (const auto& c : e->ttft_counts) ttft.push_back(c.load(std::memory_order_relaxed));
    const int64_t at = e->metrics_at_ms.load(std::memory_order_relaxed);
    endpoints.push_back({{"service", e->service},
                         {"replica", e->replica},
                         {"address", e->key},
                         {"requests", e->requests.load(std::memory_order_relaxed)},
                         {"in_flight", e->in_flight.load(std::memory_order_relaxed)},
                         {"waiting", e->waiting.load(std::memory_order_relaxed)},
                         {"kv_usage", e->kv_usage.load(std::memory_order_relaxed)},
                         {"metrics_age_s", at > 0 ? (now_ms - at) / 1000.0 : -1.0},
                         {"ttft_counts", std::move(ttft)}});
  }
  return nlohmann::json({{"endpoints", std::move(endpoints)}, {"held", std::move(held)}}).dump();
}

void Gateway::Impl::scrape_loop() {
  if (options.scrape_interval_s <= 0) return;
  std::unique_lock lock(mu);
  while (!stopping) {
    std::shared_ptr<const RoutingTable> table = latest;
    lock.unlock();
    for (const auto& [name, svc] : table->services) {
      if (svc.picker.kind != PickerKind::kScored) continue;
      for (const auto& e : svc.ready) {
        http::ClientRequest request;
        request.host = e->host;
        request.port = e->port;
        request.target = "/metrics";
        request.timeout_s = std::max(0.5, options.scrape_interval_s * 5);
        auto response = http::fetch(request);
        if (!response.ok() || response->status != 200) continue;
        const EngineLoad load = parse_engine_load(response->body);
        e->waiting.store(load.waiting.value_or(0), std::memory_order_relaxed);
        e->kv_usage.store(load.kv_usage.value_or(0), std::memory_order_relaxed);
        if (load.kv_capacity_tokens)
          e->kv_capacity_tokens.store(*load.kv_capacity_tokens, std::memory_order_relaxed);
        if (load.waiting || load.kv_usage) e->metrics_at_ms.store(steady_ms());
      }
    }
    lock.lock();
    scraper_wake.wait_for(
        lock, std::chrono::milliseconds(static_cast<int64_t>(options.scrape_interval_s * 1000)),
        [this] { return stopping; });
  }
}

asio::awaitable<Attempt> Gateway::Impl::forward(
    Worker& w, http::Exchange& ex, Endpoint& endpoint, const std::string& body,
    std::string_view authorization, bool client_wants_usage, bool may_retry, ModelStats& stats,
    RequestUsage& usage, const std::vector<http::Header>& extra_headers, Clock::time_point start,
    bool held, int64_t& prefill, int& code, int& upstream_status, std::string& failure) {
  upstream_status = 0;
  const http::Request& req = ex.request();
  const std::string& key = endpoint.key;
  // If the client hangs up, closing the upstream connection tells the engine
  // to abort the request (and free its KV cache). The watchdog closes it too
  // when the upstream stays silent too long. Upstream connections are plain
  // sockets: Beast's tcp_stream re-arms a timer on every read, which costs
  // two timerfd syscalls per streamed event.
  struct Watch {
    tcp::socket* conn = nullptr;
    bool client_gone = false;
    bool timed_out = false;
  };
  auto watch = std::make_shared<Watch>();
  asio::steady_timer watchdog(w.io);
  auto arm_watchdog = [&watchdog, watch](std::chrono::milliseconds after) {
    watchdog.expires_after(after);
    watchdog.async_wait([watch](boost::system::error_code ec) {
      if (ec || !watch->conn) return;
      watch->timed_out = true;
      boost::system::error_code ignored;
      watch->conn->close(ignored);
    });
  };
  ex.on_client_closed([watch] {
    watch->client_gone = true;
    boost::system::error_code ignored;
    if (watch->conn) watch->conn->close(ignored);
  });
  const auto idle =
      std::chrono::milliseconds(static_cast<int64_t>(options.upstream_idle_timeout_s * 1000));
  // The request head is formatted directly: a proxy forwarding a JSON body
  // needs no header container.
  std::string head = fmt::format(
      "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n"
      "Content-Length: {}\r\n",
      req.target, key, body.size());
  if (!authorization.empty()) head += fmt::format("Authorization: {}\r\n", authorization);
  head += "\r\n";
  const std::array<asio::const_buffer, 2> request_buffers = {asio::buffer(head),
                                                             asio::buffer(body)};
  std::unique_ptr<tcp::socket> conn;
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.body_limit(boost::none);
  beast::flat_buffer buffer;
  // A pooled connection may have been closed by the replica while it sat
  // idle (engines close keep-alive connections after a few seconds; the
  // close can cross the request on the wire). Such an attempt fails before
  // any response byte and is sent once more on a fresh connection to the
  // same replica, as Go's http.Transport and Envoy do for reused connections.
  for (bool fresh_retry_left = true;;) {
    conn = fresh_retry_left ? take_idle(w.idle[key]) : nullptr;
    const bool reused = conn != nullptr;
    watch->timed_out = false;
    if (reused) {
      watch->conn = conn.get();
      arm_watchdog(idle);
    } else {
      conn = std::make_unique<tcp::socket>(w.io);
      watch->conn = conn.get();
      boost::system::error_code ec;
      auto address = asio::ip::make_address(endpoint.host, ec);
      arm_watchdog(
          std::chrono::milliseconds(static_cast<int64_t>(options.connect_timeout_s * 1000)));
      tcp::endpoint target(address, endpoint.port);
      auto [cec] = co_await conn->async_connect(target, kUseTuple);
      if (ec || cec) {
        watch->conn = nullptr;
        failure = fmt::format("connect to replica {} ({}): {}", endpoint.replica, key,
                              watch->timed_out ? "timed out" : (ec ? ec : cec).message());
        co_return Attempt::kRetry;
      }
      conn->set_option(tcp::no_delay(true), ec);
      arm_watchdog(idle);
    }
    auto [wec, wn] = co_await asio::async_write(*conn, request_buffers, kUseTuple);
    boost::system::error_code hec = wec;
    if (!wec) {
      auto [rec, rn] = co_await bhttp::async_read_header(*conn, buffer, parser, kUseTuple);
      hec = rec;
    }
    if (!hec) break;
    watch->conn = nullptr;
    if (watch->client_gone) co_return Attempt::kClientGone;
    if (reused && fresh_retry_left && !watch->timed_out && buffer.size() == 0 &&
        !parser.got_some()) {
      fresh_retry_left = false;
      ++stats.reconnects;
      spdlog::debug("gateway: pooled connection to replica {} ({}) was closed ({}); resending",
                    endpoint.replica, key, hec.message());
      continue;  // the parser has seen nothing: it starts over as it is
    }
    // Nothing has reached the client: another replica may answer.
    failure = fmt::format("replica {} ({}): {}", endpoint.replica, key,
                          watch->timed_out ? "idle timeout" : hec.message());
    co_return Attempt::kRetry;
  }
  const int status = parser.get().result_int();
  upstream_status = status;
  const std::string content_type(parser.get()[bhttp::field::content_type]);
  const bool sse = content_type.starts_with("text/event-stream");
  char chunk[16384];
  boost::system::error_code read_error;
  bool client_ok = true;

  if (!sse) {
    std::string payload;
    while (!parser.is_done()) {
      parser.get().body().data = chunk;
      parser.get().body().size = sizeof(chunk);
      auto [rec, rn] = co_await bhttp::async_read(*conn, buffer, parser, kUseTuple);
      if (rec == bhttp::error::need_buffer) rec = {};
      payload.append(chunk, sizeof(chunk) - parser.get().body().size);
      if (rec) {
        read_error = rec;
        break;
      }
    }
    watch->conn = nullptr;
    if (watch->client_gone) co_return Attempt::kClientGone;
    if (read_error) {
      code = 502;
      co_await send_error(ex, 502,
                          fmt::format("replica {} failed mid-response: {}", endpoint.replica,
                                      watch->timed_out ? "idle timeout" : read_error.message()));
      co_return Attempt::kDone;
    }
    const bool reusable = parser.keep_alive();
    if (may_retry && (status == 429 || status >= 500)) {
      // Refused or failed, and nothing reached the client: try elsewhere.
      auto message = openai_error_message(payload);
      failure = fmt::format("replica {} ({}) answered {}{}{}", endpoint.replica, key, status,
                            message.empty() ? "" : ": ", message);
      if (reusable) w.idle[key].push_back(std::move(conn));
      co_return Attempt::kRetry;
    }
    code = status;
    stats.ttft.observe(seconds_since(start));
    if (held) stats.held_ttft.observe(seconds_since(start));
    if (status == 200) endpoint.observe_ttft(seconds_since(start), steady_ms_of(start));
    if (status == 200) add_usage(payload, usage);
    http::Response response{status, content_type, std::move(payload), extra_headers};
    co_await ex.respond(std::move(response));
    if (reusable) w.idle[key].push_back(std::move(conn));
    co_return Attempt::kDone;
  }

  // SSE: forward every complete event as soon as it arrives (read_some: a
  // plain read would wait for the body buffer to fill).
  code = status;
  std::string content_type_copy = content_type;
  std::vector<http::Header> stream_headers = extra_headers;
  client_ok =
      co_await ex.begin_stream(status, std::move(content_type_copy), std::move(stream_headers));
  std::string pending;
  std::string out;  // the events of one read, reused
  bool first_token = true;
  Clock::time_point last_event = start;
  // Re-arming the watchdog costs a timerfd syscall, so it is renewed at
  // most once a second, not per event.
  Clock::time_point armed = Clock::now();
  while (client_ok && !parser.is_done()) {
    if (Clock::now() - armed > std::chrono::seconds(1)) {
      arm_watchdog(idle);
      armed = Clock::now();
    }
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof(chunk);
    auto [ec, rn] = co_await bhttp::async_read_some(*conn, buffer, parser, kUseTuple);
    boost::system::error_code rec =
        ec == bhttp::error::need_buffer ? boost::system::error_code() : ec;
    pending.append(chunk, sizeof(chunk) - parser.get().body().size);
    // Beast hands over one chunk (one event) per read; parse the rest of
    // what is already buffered without touching the socket, so events that
    // arrived together leave together, in one write.
    while (!rec && !parser.is_done() && buffer.size() > 0) {
      parser.get().body().data = chunk;
      parser.get().body().size = sizeof(chunk);
      boost::system::error_code pec;
      const size_t used = parser.put(buffer.data(), pec);
      buffer.consume(used);
      const size_t got = sizeof(chunk) - parser.get().body().size;
      pending.append(chunk, got);
      if (pec == bhttp::error::need_more) break;  // a partial chunk: wait for the socket
      if (pec && pec != bhttp::error::need_buffer) rec = pec;
      if (used == 0 && got == 0) break;
    }
    out.clear();
    size_t pos = 0, end;
    while ((end = pending.find("\n\n", pos)) != std::string::npos) {
      std::string_view event(pending.data() + pos, end - pos);
      const size_t event_end = end + 2;
      bool forward_event = true;
      if (event.starts_with("data: {") && event.find(R"("choices":[])") != std::string_view::npos &&
          event.find(R"("usage":{)") != std::string_view::npos) {
        add_usage(event.substr(6), usage);
        forward_event = client_wants_usage;
      } else if (event.starts_with("data: {")) {
        const auto now = Clock::now();
        if (first_token) {
          stats.ttft.observe(std::chrono::duration<double>(now - start).count());
          if (held) stats.held_ttft.observe(std::chrono::duration<double>(now - start).count());
          endpoint.observe_ttft(std::chrono::duration<double>(now - start).count(),
                                steady_ms_of(start));
          first_token = false;
          // Its prefill is done: no longer part of the endpoint's queue.
          endpoint.pending_prefill.fetch_sub(prefill, std::memory_order_relaxed);
          prefill = 0;
        } else {
          stats.inter_token.observe(std::chrono::duration<double>(now - last_event).count());
        }
        last_event = now;
      }
      if (forward_event) out.append(pending, pos, event_end - pos);
      pos = event_end;
    }
    pending.erase(0, pos);
    if (!out.empty()) client_ok = co_await ex.write_chunk(out);
    if (rec) {
      read_error = rec;
      break;
    }
  }
  watch->conn = nullptr;
  if (!client_ok || watch->client_gone)
    co_return Attempt::kClientGone;  // conn is dropped, not pooled
  if (read_error) {
    // The replica died mid-stream: end the stream with an error event rather
    // than leave the client hanging.
    code = 502;
    openai::ApiError error{502,
                           fmt::format("replica {} failed mid-stream: {}", endpoint.replica,
                                       watch->timed_out ? "idle timeout" : read_error.message()),
                           {}};
    std::string tail = "data: " + openai::error_body(error) + "\n\ndata: [DONE]\n\n";
    const bool ok = co_await ex.write_chunk(tail);
    if (ok) co_await ex.end_stream();
    co_return Attempt::kDone;
  }
  const bool reusable = parser.keep_alive();
  co_await ex.end_stream();
  if (reusable) w.idle[key].push_back(std::move(conn));
  co_return Attempt::kDone;
}

Result<std::unique_ptr<Gateway>> Gateway::create(GatewayOptions options) {
  auto impl = std::make_unique<Impl>(options);
  std::vector<asio::io_context*> contexts;
  for (unsigned i = 0; i < std::max(1u, options.workers); ++i) {
    impl->workers.push_back(std::make_unique<Worker>());
    contexts.push_back(&impl->workers.back()->io);
  }
  http::ServerOptions server_options;
  server_options.host = options.host;
  server_options.port = options.port;
  server_options.max_body_bytes = options.max_body_bytes;
  server_options.error_body = openai::error_body_for;
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
  Impl* impl = impl_.get();
  impl_->scraper = std::thread([impl] { impl->scrape_loop(); });
  for (auto& worker : impl_->workers) {
    Worker* w = worker.get();
    w->guard.emplace(w->io.get_executor());
    w->thread = std::thread([w] {
      current_worker = w;
      w->io.run();
    });
  }
}

void Gateway::stop(double grace_s) {
  if (impl_->workers.empty() || !impl_->workers.front()->thread.joinable()) return;
  impl_->server->stop();
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->scraper_wake.notify_all();
  if (impl_->scraper.joinable()) impl_->scraper.join();
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
  std::unordered_set<uint64_t> live;
  for (const auto& [name, svc] : table->services)
    for (const auto& e : svc.ready) live.insert(e->id);
  std::shared_ptr<const RoutingTable> previous;
  {
    std::lock_guard lock(impl_->mu);
    previous = std::exchange(impl_->latest, table);
    const int64_t now_ms = steady_ms();
    stamp_ttft_epochs(*previous, *table, now_ms);
    std::erase_if(impl_->retired, [&](const auto& r) { return live.count(r.endpoint->id) > 0; });
    impl_->prune_retired(now_ms);
    for (const auto& [name, svc] : previous->services)
      for (const auto& e : svc.ready)
        if (!live.count(e->id)) impl_->retired.push_back({e, now_ms});
  }
  // Endpoints that are gone take what the prefix index knew with them.
  for (const auto& [name, svc] : previous->services)
    for (const auto& e : svc.ready)
      if (!live.count(e->id)) {
        impl_->prefixes.forget(e->id);
        impl_->sessions.forget(e->id);
      }
  for (auto& worker : impl_->workers) {
    Worker* w = worker.get();
    asio::post(w->io, [w, table] {
      w->table = table;
      for (asio::steady_timer* held : w->held) held->cancel();  // look again
    });
  }
}

}  // namespace loadstar::gateway
