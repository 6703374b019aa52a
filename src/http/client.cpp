#include "http/client.h"

#include <poll.h>

#include <chrono>
#include <optional>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

namespace loadstar::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;

std::string_view ClientResponse::header(std::string_view name) const {
  for (const Header& h : headers) {
    if (h.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i)
      same = std::tolower(static_cast<unsigned char>(h.name[i])) ==
             std::tolower(static_cast<unsigned char>(name[i]));
    if (same) return h.value;
  }
  return {};
}

namespace {

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

beast::tcp_stream& lowest(beast::tcp_stream& s) {
  return s;
}
beast::tcp_stream& lowest(beast::ssl_stream<beast::tcp_stream>& s) {
  return s.next_layer();
}

// How far a body read has come, for run()'s stall check. The body is read
// without the stream's own timeout: beast arms and cancels a timer around
// every read (a timerfd_settime each), which cost a tenth of an agent's CPU
// on a peer transfer read in many small reads; a clock read per read and a
// check every 100 ms cost nothing.
struct BodyWatch {
  bool reading = false;
  std::chrono::steady_clock::time_point last_byte;
};

// Sends the request on a connected stream and reads the response; *reusable
// is set when the response was read whole and the connection stays open.
template <typename Stream>
asio::awaitable<void> talk(Stream& stream, const ClientRequest& request,
                           const std::function<bool(std::string_view)>& on_data,
                           ClientResponse* response, std::optional<Error>* error, BodyWatch* watch,
                           bool* reusable) {
  const auto stall =
      std::chrono::milliseconds(static_cast<int64_t>(request.stall_timeout_s * 1000));
  auto arm = [&] {
    if (stall.count() > 0) lowest(stream).expires_after(stall);
  };
  auto failed = [&](std::string_view what, const boost::system::error_code& ec) {
    std::string reason = ec == beast::error::timeout
                             ? fmt::format("no data for {}s", request.stall_timeout_s)
                             : ec.message();
    *error = make_error(ErrorCode::kUnavailable, "{} {}:{}: {}", what, request.host, request.port,
                        reason);
  };
  bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(request.method), request.target, 11};
  req.set(bhttp::field::host, request.host);
  req.set(bhttp::field::user_agent, "loadstar");
  for (const Header& h : request.headers) req.set(h.name, h.value);
  if (!request.body.empty() && req[bhttp::field::content_type].empty())
    req.set(bhttp::field::content_type, "application/json");
  req.body() = request.body;
  req.prepare_payload();
  arm();
  auto [wec, wn] = co_await bhttp::async_write(stream, req, kUseTuple);
  if (wec) co_return failed("send to", wec);
  // Reads take what the buffer has room for; a new one has 512 bytes (a
  // 30 KB metrics page took 60 reads).
  beast::flat_buffer buffer;
  buffer.reserve(16384);
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.body_limit(boost::none);
  if (request.method == "HEAD") parser.skip(true);
  arm();
  auto [hec, hn] = co_await bhttp::async_read_header(stream, buffer, parser, kUseTuple);
  if (hec) co_return failed("read from", hec);
  response->status = parser.get().result_int();
  for (const auto& field : parser.get())
    response->headers.push_back({std::string(field.name_string()), std::string(field.value())});
  if (request.on_headers) request.on_headers(*response);
  char chunk[65536];
  lowest(stream).expires_never();
  watch->reading = true;
  while (!parser.is_done()) {
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof(chunk);
    watch->last_byte = std::chrono::steady_clock::now();
    auto [rec, rn] = co_await bhttp::async_read_some(stream, buffer, parser, kUseTuple);
    if (rec == bhttp::error::need_buffer) rec = {};
    if (rec) co_return failed("read body from", rec);
    size_t n = sizeof(chunk) - parser.get().body().size;
    if (n > 0 && !on_data(std::string_view(chunk, n))) co_return;
  }
  watch->reading = false;
  *reusable = parser.keep_alive() && buffer.size() == 0;
}

}  // namespace

// One connection (plain or TLS) and the io_context its exchanges run on.
// Members in this order: the streams go before the TLS context, both
// before the io_context.
struct ClientPool::Connection {
  asio::io_context ctx;
  std::optional<asio::ssl::context> tls;
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
  bool reusable = false;  // the last exchange left it open and clean
  bool answered = false;  // the last exchange got a status line
  bool io_error = false;  // the last exchange ended on an I/O error (not a deadline)
  std::chrono::steady_clock::time_point idle_since;

  bool connected() const { return plain.has_value() || secure.has_value(); }
  int fd() {
    return secure ? secure->next_layer().socket().native_handle() : plain->socket().native_handle();
  }
  // Whether an idle connection is still usable: open, with nothing to read
  // (a readable idle socket is a close from the server, or junk).
  bool still_open() {
    if (!connected()) return false;
    pollfd p{.fd = fd(), .events = POLLIN, .revents = 0};
    return ::poll(&p, 1, 0) == 0;
  }
};

namespace {

using Connection = ClientPool::Connection;

// Opens `c` to the request's host: resolves, checks the addresses, connects
// and, with tls, shakes hands.
asio::awaitable<void> connect(Connection& c, const ClientRequest& request,
                              std::optional<Error>* error) {
  auto executor = co_await asio::this_coro::executor;
  boost::system::error_code ec;
  std::vector<tcp::endpoint> endpoints;
  if (auto address = asio::ip::make_address(request.host, ec); !ec) {
    endpoints.emplace_back(address, request.port);
  } else {
    tcp::resolver resolver(executor);
    auto [rec, results] =
        co_await resolver.async_resolve(request.host, std::to_string(request.port), kUseTuple);
    if (rec) {
      *error = make_error(ErrorCode::kUnavailable, "cannot resolve '{}': {}", request.host,
                          rec.message());
      co_return;
    }
    for (const auto& r : results) endpoints.push_back(r.endpoint());
  }
  if (request.admit_address) {
    std::optional<Error> refused;
    std::erase_if(endpoints, [&](const tcp::endpoint& e) {
      Status s = request.admit_address(e.address().to_string());
      if (!s.ok() && !refused) refused = s.error();
      return !s.ok();
    });
    if (endpoints.empty()) {
      *error = make_error(ErrorCode::kPermissionDenied, "refused to connect to {}: {}",
                          request.host, refused ? refused->message : "no address");
      co_return;
    }
  }
  beast::tcp_stream tcp_stream(executor);
  auto [cec, connected] = co_await tcp_stream.async_connect(endpoints, kUseTuple);
  if (cec) {
    *error = make_error(ErrorCode::kUnavailable, "connect to {}:{}: {}", request.host, request.port,
                        cec.message());
    co_return;
  }
  tcp_stream.socket().set_option(tcp::no_delay(true), ec);
  if (!request.tls) {
    c.plain.emplace(std::move(tcp_stream));
    co_return;
  }
  c.tls.emplace(asio::ssl::context::tls_client);
  if (request.ca_pem.empty()) {
    c.tls->set_default_verify_paths();
  } else {
    boost::system::error_code pem_ec;
    c.tls->add_certificate_authority(asio::buffer(request.ca_pem), pem_ec);
    if (pem_ec) {
      *error = make_error(ErrorCode::kInvalidArgument, "the CA bundle for {} is not PEM: {}",
                          request.host, pem_ec.message());
      co_return;
    }
  }
  c.tls->set_verify_mode(asio::ssl::verify_peer);
  beast::ssl_stream<beast::tcp_stream> stream(std::move(tcp_stream), *c.tls);
  SSL_set_tlsext_host_name(stream.native_handle(), request.host.c_str());
  stream.set_verify_callback(asio::ssl::host_name_verification(request.host));
  auto [hec] = co_await stream.async_handshake(asio::ssl::stream_base::client, kUseTuple);
  if (hec) {
    // An untrusted certificate will not become trusted by retrying.
    const bool untrusted = hec.category() == asio::error::get_ssl_category() &&
                           ERR_GET_REASON(hec.value()) == SSL_R_CERTIFICATE_VERIFY_FAILED;
    *error =
        make_error(untrusted ? ErrorCode::kPermissionDenied : ErrorCode::kUnavailable,
                   "TLS handshake with {}:{}: {}{}", request.host, request.port, hec.message(),
                   untrusted ? " (is the server's CA in the system store or SSL_CERT_FILE?)" : "");
    co_return;
  }
  c.secure.emplace(std::move(stream));
}

asio::awaitable<void> exchange(Connection& c, const ClientRequest& request,
                               const std::function<bool(std::string_view)>& on_data,
                               ClientResponse* response, std::optional<Error>* error,
                               BodyWatch* watch) {
  c.reusable = c.answered = c.io_error = false;
  if (!c.connected()) {
    co_await connect(c, request, error);
    if (*error) co_return;
  }
  bool reusable = false;
  if (c.secure)
    co_await talk(*c.secure, request, on_data, response, error, watch, &reusable);
  else
    co_await talk(*c.plain, request, on_data, response, error, watch, &reusable);
  c.reusable = reusable && !*error;
  c.answered = response->status != 0;
  c.io_error = error->has_value();
}

// One exchange on `c` (opened first when it is not), within the request's
// deadline; `c` stays reusable only when it ended cleanly.
Result<ClientResponse> run(Connection& c, const ClientRequest& request,
                           const std::function<bool(std::string_view)>& on_data) {
  c.ctx.restart();
  ClientResponse response;
  std::optional<Error> error;
  BodyWatch watch;
  asio::co_spawn(c.ctx, exchange(c, request, on_data, &response, &error, &watch), asio::detached);
  using Clock = std::chrono::steady_clock;
  const auto deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(request.timeout_s * 1000));
  const auto stall =
      std::chrono::milliseconds(static_cast<int64_t>(request.stall_timeout_s * 1000));
  // An exchange cut short leaves the stream mid-message: never reused.
  auto abandon = [&] { c.reusable = false; };
  while (!c.ctx.stopped()) {
    const auto now = Clock::now();
    if (now >= deadline) break;
    if (request.cancel && request.cancel->load()) {
      abandon();
      return make_error(ErrorCode::kCancelled, "{} {}:{}{} cancelled", request.method, request.host,
                        request.port, request.target);
    }
    if (watch.reading && stall.count() > 0 && now - watch.last_byte > stall) {
      abandon();
      return make_error(ErrorCode::kUnavailable, "read body from {}:{}: no data for {}s",
                        request.host, request.port, request.stall_timeout_s);
    }
    c.ctx.run_for(std::min<Clock::duration>(std::chrono::milliseconds(100), deadline - now));
  }
  if (!c.ctx.stopped()) {
    abandon();
    return make_error(ErrorCode::kUnavailable, "{} {}:{}{} timed out after {}s", request.method,
                      request.host, request.port, request.target, request.timeout_s);
  }
  if (error) return std::move(*error);
  return response;
}

Result<ClientResponse> run(const ClientRequest& request,
                           const std::function<bool(std::string_view)>& on_data) {
  Connection c;
  return run(c, request, on_data);
}

// The pool's key: requests with the same one may share connections.
std::string origin_key(const ClientRequest& request) {
  return fmt::format("{}|{}|{}|{}", request.tls ? "https" : "http", request.host, request.port,
                     std::hash<std::string>{}(request.ca_pem));
}

// Collects a body for fetch().
Result<ClientResponse> with_body(
    const std::function<Result<ClientResponse>(const std::function<bool(std::string_view)>&)>&
        exchange) {
  std::string body;
  auto response = exchange([&](std::string_view data) {
    body.append(data);
    return true;
  });
  if (response.ok()) response->body = std::move(body);
  return response;
}

}  // namespace

Result<ClientResponse> fetch(const ClientRequest& request) {
  return with_body([&](const auto& on_data) { return run(request, on_data); });
}

Result<ClientResponse> fetch_streaming(const ClientRequest& request,
                                       const std::function<bool(std::string_view)>& on_data) {
  return run(request, on_data);
}

ClientPool::ClientPool() : ClientPool(Options{}) {}
ClientPool::ClientPool(Options options) : options_(options) {}
ClientPool::~ClientPool() = default;

std::unique_ptr<Connection> ClientPool::take(const std::string& origin) {
  std::vector<std::unique_ptr<Connection>> closed;  // closed outside the lock
  std::unique_ptr<Connection> c;
  {
    std::lock_guard lock(mu_);
    auto it = idle_.find(origin);
    const auto too_old =
        std::chrono::steady_clock::now() -
        std::chrono::milliseconds(static_cast<int64_t>(options_.max_idle_s * 1000));
    while (it != idle_.end() && !it->second.empty() && !c) {
      std::unique_ptr<Connection> last = std::move(it->second.back());
      it->second.pop_back();
      if (last->idle_since >= too_old && last->still_open())
        c = std::move(last);
      else
        closed.push_back(std::move(last));
    }
  }
  return c;
}

void ClientPool::give_back(const std::string& origin, std::unique_ptr<Connection> c) {
  if (!c->reusable) return;
  c->idle_since = std::chrono::steady_clock::now();
  std::lock_guard lock(mu_);
  auto& idle = idle_[origin];
  if (idle.size() < options_.max_idle_per_origin) idle.push_back(std::move(c));
}

Result<ClientResponse> ClientPool::fetch_streaming(
    const ClientRequest& request, const std::function<bool(std::string_view)>& on_data) {
  const std::string origin = origin_key(request);
  if (auto c = take(origin)) {
    auto response = run(*c, request, on_data);
    // Closed by the server as it was taken (the send or the status line
    // failed, nothing of the answer read): again on a new connection.
    const bool closed_under_us = !response.ok() && c->io_error && !c->answered;
    if (!closed_under_us) {
      give_back(origin, std::move(c));
      return response;
    }
  }
  auto c = std::make_unique<Connection>();
  ++opened_;
  auto response = run(*c, request, on_data);
  give_back(origin, std::move(c));
  return response;
}

Result<ClientResponse> ClientPool::fetch(const ClientRequest& request) {
  return with_body([&](const auto& on_data) { return fetch_streaming(request, on_data); });
}

}  // namespace loadstar::http
