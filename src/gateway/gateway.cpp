#include "gateway/gateway.h"

#include <array>
#include <chrono>
#include <optional>
#include <thread>
#include <unordered_map>

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

#include "common/strings.h"
#include "gateway/request_peek.h"
#include "gateway/stats.h"
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
  uint64_t turn = 0;
  std::thread thread;
};

thread_local Worker* current_worker = nullptr;

asio::awaitable<GatewayStats> copy_stats(Worker* w) {
  co_return w->stats;
}

// How a forwarding attempt ended.
enum class Attempt { kDone, kRetry, kClientGone };

}  // namespace

struct Gateway::Impl {
  GatewayOptions options;
  std::vector<std::unique_ptr<Worker>> workers;
  std::unique_ptr<http::Server> server;
  std::atomic<int64_t> in_flight{0};

  asio::awaitable<void> handle(http::Exchange& ex);
  asio::awaitable<void> proxy(Worker& w, http::Exchange& ex);
  asio::awaitable<Attempt> forward(Worker& w, http::Exchange& ex, Endpoint& endpoint,
                                   const std::string& body, bool client_wants_usage,
                                   ModelStats& stats, Clock::time_point start, int& code,
                                   std::string& failure);
  asio::awaitable<std::string> collect_metrics();
  std::string models_json(const RoutingTable& table) const;
};

namespace {

asio::awaitable<void> send_error(http::Exchange& ex, int status, std::string message,
                                 std::string param = {}) {
  openai::ApiError error{status, std::move(message), std::move(param)};
  http::Response response{status, "application/json", openai::error_body(error), {}};
  if (status == 503 || status == 429) response.headers.push_back({"Retry-After", "1"});
  co_await ex.respond(std::move(response));
}

// Adds the engine-reported usage of a JSON body or event to `stats`.
void add_usage(std::string_view text, ModelStats& stats) {
  if (auto usage = peek_usage(text)) {
    stats.prompt_tokens += usage->prompt_tokens;
    stats.completion_tokens += usage->completion_tokens;
  }
}

}  // namespace

std::string Gateway::Impl::models_json(const RoutingTable& table) const {
  json data = json::array();
  std::vector<std::string> names;
  for (const auto& [name, svc] : table.services) names.push_back(name);
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    data.push_back({{"id", name},
                    {"object", "model"},
                    {"created", unix_now()},
                    {"owned_by", "loadstar"},
                    {"ready_replicas", table.services.at(name).ready.size()}});
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
  co_return render_metrics(merged);
}

asio::awaitable<void> Gateway::Impl::handle(http::Exchange& ex) {
  Worker& w = *current_worker;
  const http::Request& req = ex.request();
  const std::string_view path = req.path();
  const bool post = req.method == "POST";
  if (post &&
      (path == "/v1/chat/completions" || path == "/v1/completions" || path == "/v1/embeddings")) {
    ++in_flight;
    co_await proxy(w, ex);
    --in_flight;
    co_return;
  }
  http::Response response;
  if (req.method == "GET" && path == "/v1/models") {
    response = {200, "application/json", models_json(*w.table)};
  } else if (req.method == "GET" && path == "/health") {
    response = {200, "text/plain", "ok\n"};
  } else if (req.method == "GET" && path == "/metrics") {
    std::string text = co_await collect_metrics();
    response = {200, "text/plain; version=0.0.4; charset=utf-8", std::move(text)};
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
  // Hold the table for the whole request: endpoints stay alive even if the
  // controller publishes a new table meanwhile.
  std::shared_ptr<const RoutingTable> table = w.table;
  auto svc = table->services.find(model);
  if (svc == table->services.end()) {
    co_await send_error(ex, 404, fmt::format("The model `{}` does not exist.", model), "model");
    co_return;
  }
  // Streams always ask the engine for usage (token accounting); the usage
  // event is passed on only to clients who asked for it.
  const bool client_wants_usage = peek->include_usage;
  const std::string body = upstream_body(req.body, *peek);

  ModelStats& stats = w.stats.models[model];
  ++stats.in_flight;
  int code = 0;
  std::string failure;
  std::vector<const Endpoint*> tried;
  Attempt outcome = Attempt::kRetry;
  for (unsigned attempt = 0; attempt < options.max_attempts && outcome == Attempt::kRetry;
       ++attempt) {
    Endpoint* endpoint = pick_least_outstanding(svc->second.ready, tried, w.turn++);
    if (!endpoint) break;
    tried.push_back(endpoint);
    if (attempt > 0) ++stats.retries;
    endpoint->in_flight.fetch_add(1, std::memory_order_relaxed);
    outcome =
        co_await forward(w, ex, *endpoint, body, client_wants_usage, stats, start, code, failure);
    endpoint->in_flight.fetch_sub(1, std::memory_order_relaxed);
  }
  if (outcome == Attempt::kRetry) {
    if (tried.empty()) {
      code = 503;
      co_await send_error(ex, 503,
                          fmt::format("no ready replica for model `{}`; retry later", model));
    } else {
      code = 502;
      co_await send_error(ex, 502,
                          fmt::format("upstream failure for model `{}`: {}", model, failure));
    }
  }
  if (code == 0) code = 499;  // the client went away before a status was sent (nginx's convention)
  ++stats.requests_by_code[code];
  stats.duration.observe(seconds_since(start));
  --stats.in_flight;
}

asio::awaitable<Attempt> Gateway::Impl::forward(Worker& w, http::Exchange& ex, Endpoint& endpoint,
                                                const std::string& body, bool client_wants_usage,
                                                ModelStats& stats, Clock::time_point start,
                                                int& code, std::string& failure) {
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
  std::unique_ptr<tcp::socket> conn;
  if (auto& pool = w.idle[key]; !pool.empty()) {
    conn = std::move(pool.back());
    pool.pop_back();
    watch->conn = conn.get();
    arm_watchdog(idle);
  } else {
    conn = std::make_unique<tcp::socket>(w.io);
    watch->conn = conn.get();
    boost::system::error_code ec;
    auto address = asio::ip::make_address(endpoint.host, ec);
    arm_watchdog(std::chrono::milliseconds(static_cast<int64_t>(options.connect_timeout_s * 1000)));
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

  // The request head is formatted directly: a proxy forwarding a JSON body
  // needs no header container.
  std::string head = fmt::format(
      "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n"
      "Content-Length: {}\r\n",
      req.target, key, body.size());
  if (auto auth = req.header("Authorization"); !auth.empty())
    head += fmt::format("Authorization: {}\r\n", auth);
  head += "\r\n";
  const std::array<asio::const_buffer, 2> request_buffers = {asio::buffer(head),
                                                             asio::buffer(body)};
  auto [wec, wn] = co_await asio::async_write(*conn, request_buffers, kUseTuple);
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.body_limit(boost::none);
  beast::flat_buffer buffer;
  boost::system::error_code hec = wec;
  if (!wec) {
    auto [rec, rn] = co_await bhttp::async_read_header(*conn, buffer, parser, kUseTuple);
    hec = rec;
  }
  if (hec) {
    watch->conn = nullptr;
    if (watch->client_gone) co_return Attempt::kClientGone;
    // Nothing has reached the client: another replica may answer.
    failure = fmt::format("replica {} ({}): {}", endpoint.replica, key,
                          watch->timed_out ? "idle timeout" : hec.message());
    co_return Attempt::kRetry;
  }
  const int status = parser.get().result_int();
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
    code = status;
    stats.ttft.observe(seconds_since(start));
    if (status == 200) add_usage(payload, stats);
    const bool reusable = parser.keep_alive();
    http::Response response{status, content_type, std::move(payload), {}};
    co_await ex.respond(std::move(response));
    if (reusable) w.idle[key].push_back(std::move(conn));
    co_return Attempt::kDone;
  }

  // SSE: forward every complete event as soon as it arrives (read_some: a
  // plain read would wait for the body buffer to fill).
  code = status;
  std::string content_type_copy = content_type;
  client_ok = co_await ex.begin_stream(status, std::move(content_type_copy));
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
        add_usage(event.substr(6), stats);
        forward_event = client_wants_usage;
      } else if (event.starts_with("data: {")) {
        const auto now = Clock::now();
        if (first_token) {
          stats.ttft.observe(std::chrono::duration<double>(now - start).count());
          first_token = false;
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
  auto impl = std::make_unique<Impl>();
  impl->options = options;
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
  for (auto& worker : impl_->workers) {
    Worker* w = worker.get();
    asio::post(w->io, [w, table] { w->table = table; });
  }
}

}  // namespace loadstar::gateway
