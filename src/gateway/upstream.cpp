#include "gateway/upstream.h"

#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <nlohmann/json.hpp>

#include "common/strings.h"
#include "gateway/respond.h"
#include "http/body_decoder.h"
#include "http/message_head.h"
#include "openai/protocol.h"

namespace loadstar::gateway {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

namespace {

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// Adds the engine-reported usage of a JSON body or event.
void add_usage(std::string_view text, Usage& usage) {
  if (auto u = peek_usage(text)) {
    usage.prompt_tokens += u->prompt_tokens;
    usage.completion_tokens += u->completion_tokens;
  }
}

// The usage event a stream ends with when the client asked for usage (as
// vLLM sends it, and the gateway asks for it): no choices, and a usage
// object. Every event is looked at, so the search goes by '{', which a
// token's event holds two or three of, rather than by '"' (dozens): a
// plain find of the key was 3% of the relay's CPU.
bool is_usage_event(std::string_view event) {
  constexpr std::string_view kUsageKey = R"("usage":)";
  for (size_t at = event.find('{', 1); at != std::string_view::npos; at = event.find('{', at + 1)) {
    if (at < kUsageKey.size() || event.substr(at - kUsageKey.size(), kUsageKey.size()) != kUsageKey)
      continue;
    return event.find(R"("choices":[])") != std::string_view::npos;
  }
  return false;
}

// The message of an OpenAI-shaped error body, if it is one (for logs and
// the final error when every attempt failed).
std::string openai_error_message(std::string_view body) {
  nlohmann::json doc = nlohmann::json::parse(body, nullptr, false);
  if (doc.is_object() && doc.contains("error") && doc["error"].is_object() &&
      doc["error"].contains("message") && doc["error"]["message"].is_string())
    return utf8_clip(doc["error"]["message"].get<std::string>(), 200);
  return {};
}

// The attempt's connection as the callbacks that may close it see it: they
// can outlive the attempt, so they share this rather than point into it.
struct Watch {
  tcp::socket* conn = nullptr;  // null: nothing to close (done, or pooled)
  bool client_gone = false;
  bool timed_out = false;
};

// Connections are pooled by address, and for TLS by what was verified too:
// the name (two HTTPS backends may share an address, as behind a CDN) and
// the CA trusted (a connection verified against one CA is no proof for a
// backend that trusts another).
std::string pool_key(const Endpoint& endpoint) {
  return endpoint.tls ? endpoint.key + "/" + endpoint.tls_name + "/" + endpoint.ca_file
                      : endpoint.key;
}

}  // namespace

// A connection to an engine (plain) or to an external backend over HTTPS.
// Plain sockets, not Beast's tcp_stream: that re-arms a timer on every
// read, which costs two timerfd syscalls per streamed event.
struct Upstream::Conn {
  explicit Conn(asio::io_context& io) : plain(std::in_place, io) { reserve(); }
  Conn(asio::io_context& io, asio::ssl::context& ctx) : tls(std::in_place, io, ctx) { reserve(); }
  tcp::socket& socket() { return tls ? tls->next_layer() : *plain; }
  // Runs an asynchronous operation on whichever stream this is.
  template <class F>
  auto with(F&& f) {
    return tls ? f(*tls) : f(*plain);
  }
  std::optional<tcp::socket> plain;
  std::optional<asio::ssl::stream<tcp::socket>> tls;
  std::chrono::steady_clock::time_point idle_since;  // when it was pooled

  // The buffers of the exchanges on this connection, kept with it: a pooled
  // connection carries many requests, which would otherwise allocate these
  // (4 to 16 KiB each) every time. Reads are given up to 16 KiB: with
  // Beast's default 512 bytes an engine's write of a few SSE events took
  // several reads (and so several writes to the client). Only the pages a
  // read fills become resident.
  static constexpr size_t kReadBuffer = 16384;
  beast::flat_buffer buffer;  // read from the socket, not yet decoded
  std::string events;         // a stream's events, the last one partial
  std::string out;            // the complete events of one read
  // What is read and not yet decoded.
  std::string_view buffered() const {
    return {static_cast<const char*>(buffer.data().data()), buffer.size()};
  }

 private:
  void reserve() {
    buffer.reserve(kReadBuffer);
    events.reserve(4096);
    out.reserve(4096);
  }
};

// One attempt's upstream connection, response head and watchdog. The
// watchdog closes the connection when the upstream stays silent too long.
struct Upstream::Call {
  Call(asio::io_context& io, std::chrono::milliseconds idle_) : watchdog(io), idle(idle_) {}
  void arm(std::chrono::milliseconds after) {
    watchdog.expires_after(after);
    watchdog.async_wait([watch = watch](boost::system::error_code ec) {
      if (ec || !watch->conn) return;
      watch->timed_out = true;
      boost::system::error_code ignored;
      watch->conn->close(ignored);
    });
  }

  std::shared_ptr<Watch> watch = std::make_shared<Watch>();
  asio::steady_timer watchdog;
  const std::chrono::milliseconds idle;
  std::unique_ptr<Conn> conn;
  http::ResponseHead head;  // of the response being read
};

Upstream::Upstream(asio::io_context& io, UpstreamOptions options) : io_(io), options_(options) {}

Upstream::~Upstream() = default;

std::unique_ptr<Upstream::Conn> Upstream::take_idle(const std::string& key) {
  // A connection the peer has closed (or that has unsolicited bytes
  // waiting, such as a 408) reads as ready; an open, quiet one would block.
  // Looking costs a syscall per request, so only connections idle for a
  // while are looked at: engines close idle ones after seconds (uvicorn
  // after 5), and one closed sooner fails before any response byte and is
  // sent again on a fresh connection (send()).
  constexpr std::chrono::seconds kLookAfter{1};
  std::vector<std::unique_ptr<Conn>>& pool = idle_[key];
  const auto now = std::chrono::steady_clock::now();
  while (!pool.empty()) {
    std::unique_ptr<Conn> conn = std::move(pool.back());
    pool.pop_back();
    if (now - conn->idle_since < kLookAfter) return conn;
    char byte;
    const ssize_t n = ::recv(conn->socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return conn;
  }
  return nullptr;
}

Result<std::unique_ptr<Upstream::Conn>> Upstream::new_conn(const Endpoint& endpoint) {
  if (!endpoint.tls) return std::make_unique<Conn>(io_);
  auto& ctx = tls_contexts_[endpoint.ca_file];
  if (!ctx) {
    auto made = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
    boost::system::error_code ec;
    if (endpoint.ca_file.empty())
      made->set_default_verify_paths(ec);
    else
      made->load_verify_file(endpoint.ca_file, ec);
    if (ec) {
      tls_contexts_.erase(endpoint.ca_file);
      return make_error(ErrorCode::kInvalidArgument, "CA file '{}': {}", endpoint.ca_file,
                        ec.message());
    }
    made->set_verify_mode(asio::ssl::verify_peer);
    ctx = std::move(made);
  }
  auto conn = std::make_unique<Conn>(io_, *ctx);
  SSL_set_tlsext_host_name(conn->tls->native_handle(), endpoint.tls_name.c_str());
  conn->tls->set_verify_callback(asio::ssl::host_name_verification(endpoint.tls_name));
  return conn;
}

void Upstream::keep_idle(const std::string& key, std::unique_ptr<Conn> conn) {
  // Bounded, as nginx's `keepalive`: past it a connection is closed rather
  // than kept, so that pools cannot hold the descriptors new clients need.
  // Bytes left past the last response (an engine that sent more than it
  // framed) would be read as the next request's answer: such a connection
  // is closed, never reused.
  if (conn->buffer.size() != 0) return;
  // A stream of huge events (logprobs of a long prompt) must not leave its
  // buffers' size with the connection for as long as it is pooled.
  constexpr size_t kKeep = 65536;
  if (conn->events.capacity() > kKeep) std::string().swap(conn->events);
  if (conn->out.capacity() > kKeep) std::string().swap(conn->out);
  if (conn->buffer.capacity() > kKeep) conn->buffer.shrink_to_fit();
  auto& pool = idle_[key];
  conn->idle_since = std::chrono::steady_clock::now();
  if (pool.size() < kMaxIdlePerReplica) pool.push_back(std::move(conn));
}

asio::awaitable<ForwardResult> Upstream::forward(http::Exchange& ex, ForwardRequest request) {
  ForwardResult result;
  result.prefill_pending = request.prefill;
  Call call(io_, millis(options_.idle_timeout_s));
  // If the client hangs up, closing the upstream connection tells the engine
  // to abort the request (and free its KV cache).
  ex.on_client_closed([watch = call.watch] {
    watch->client_gone = true;
    boost::system::error_code ignored;
    if (watch->conn) watch->conn->close(ignored);
  });
  const bool answered = co_await send(call, ex.request().target, request, result);
  if (!answered) co_return result;
  result.upstream_status = call.head.status;
  std::string content_type = std::move(call.head.content_type);
  if (content_type.starts_with("text/event-stream")) {
    co_await relay_stream(ex, call, std::move(content_type), request, result);
  } else {
    co_await relay_body(ex, call, std::move(content_type), request, result);
  }
  co_return result;
}

// Sends the request and reads the response head. False when that failed
// (result says why, and whether the client is gone).
asio::awaitable<CallResult> Upstream::call(http::Exchange& ex, ForwardRequest request,
                                           std::string_view target,
                                           std::chrono::milliseconds limit) {
  CallResult out;
  ForwardResult result;
  Call call(io_, limit.count() > 0 ? limit : millis(options_.idle_timeout_s));
  ex.on_client_closed([watch = call.watch] {
    watch->client_gone = true;
    boost::system::error_code ignored;
    if (watch->conn) watch->conn->close(ignored);
  });
  const bool answered = co_await send(call, target, request, result);
  if (!answered) {
    out.outcome = result.outcome;
    out.failure = std::move(result.failure);
    co_return out;
  }
  const std::string read_error = co_await read_body(call, out.body);
  call.watch->conn = nullptr;
  if (call.watch->client_gone) {
    out.outcome = ForwardOutcome::kClientGone;
    co_return out;
  }
  if (!read_error.empty()) {
    out.failure =
        fmt::format("replica {} failed mid-response: {}", request.endpoint->replica, read_error);
    co_return out;
  }
  out.outcome = ForwardOutcome::kDone;
  out.status = call.head.status;
  if (call.head.keep_alive) keep_idle(pool_key(*request.endpoint), std::move(call.conn));
  co_return out;
}

asio::awaitable<std::string> Upstream::read_head(Call& call) {
  Conn& conn = *call.conn;
  for (;;) {
    auto head = http::parse_response_head(conn.buffered());
    if (!head.ok()) co_return head.error().message;
    if (*head) {
      call.head = std::move(**head);
      conn.buffer.consume(call.head.size);
      co_return std::string();
    }
    auto [ec, n] = co_await conn.with([&](auto& stream) {
      return stream.async_read_some(conn.buffer.prepare(Conn::kReadBuffer), kUseTuple);
    });
    conn.buffer.commit(n);
    if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated)
      co_return conn.buffer.size() == 0 ? "end of stream"
                                        : "end of stream within the response head";
    if (ec) co_return ec.message();
  }
}

asio::awaitable<std::string> Upstream::read_body(Call& call, std::string& payload) {
  Conn& conn = *call.conn;
  http::BodyDecoder body = call.head.body_decoder();
  for (;;) {
    auto used = body.feed(conn.buffered(), payload);
    if (!used.ok()) co_return used.error().message;
    conn.buffer.consume(*used);
    if (body.done()) co_return std::string();
    auto [ec, n] = co_await conn.with([&](auto& stream) {
      return stream.async_read_some(conn.buffer.prepare(Conn::kReadBuffer), kUseTuple);
    });
    conn.buffer.commit(n);
    if (ec == asio::error::eof) {
      auto tail = body.feed(conn.buffered(), payload);
      if (!tail.ok()) co_return tail.error().message;
      conn.buffer.consume(*tail);
      auto closed = body.at_close();
      co_return closed.ok() ? std::string() : closed.error().message;
    }
    if (ec) co_return call.watch->timed_out ? "idle timeout" : ec.message();
  }
}

asio::awaitable<bool> Upstream::send(Call& call, std::string_view target,
                                     const ForwardRequest& request, ForwardResult& result) {
  const Endpoint& endpoint = *request.endpoint;
  const std::string& key = endpoint.key;
  // The request head is formatted directly: a proxy forwarding a JSON body
  // needs no header container.
  const std::string_view host = endpoint.authority.empty() ? key : endpoint.authority;
  std::string head;
  head.reserve(128 + target.size() + host.size() + request.authorization.size() +
               request.request_id.size());
  head.append("POST ").append(target).append(" HTTP/1.1\r\nHost: ").append(host);
  head.append("\r\nContent-Type: application/json\r\nContent-Length: ");
  const fmt::format_int length(request.body.size());
  head.append(length.data(), length.size()).append("\r\n");
  if (!request.authorization.empty())
    head.append("Authorization: ").append(request.authorization).append("\r\n");
  if (!request.request_id.empty())
    head.append("X-Request-Id: ").append(request.request_id).append("\r\n");
  head.append("\r\n");
  const std::array<asio::const_buffer, 2> request_buffers = {asio::buffer(head),
                                                             asio::buffer(request.body)};
  Watch& watch = *call.watch;
  // A pooled connection may have been closed by the replica while it sat
  // idle (engines close keep-alive connections after a few seconds; the
  // close can cross the request on the wire). Such an attempt fails before
  // any response byte and is sent once more on a fresh connection to the
  // same replica, as Go's http.Transport and Envoy do for reused connections.
  for (bool fresh_retry_left = true;;) {
    call.conn = fresh_retry_left ? take_idle(pool_key(endpoint)) : nullptr;
    const bool reused = call.conn != nullptr;
    watch.timed_out = false;
    if (reused) {
      watch.conn = &call.conn->socket();
      call.arm(call.idle);
    } else {
      auto made = new_conn(endpoint);
      if (!made.ok()) {
        result.failure = fmt::format("backend {}: {}", endpoint.replica, made.error().message);
        co_return false;
      }
      call.conn = std::move(*made);
      watch.conn = &call.conn->socket();
      boost::system::error_code ec;
      auto address = asio::ip::make_address(endpoint.host, ec);
      call.arm(std::min(call.idle, millis(options_.connect_timeout_s)));
      tcp::endpoint target(address, endpoint.port);
      auto [cec] = co_await call.conn->socket().async_connect(target, kUseTuple);
      if (ec || cec) {
        watch.conn = nullptr;
        result.failure = fmt::format("connect to replica {} ({}): {}", endpoint.replica, key,
                                     watch.timed_out ? "timed out" : (ec ? ec : cec).message());
        if (cec == asio::error::no_descriptors || cec.value() == ENFILE ||
            cec == asio::error::no_buffer_space || cec == asio::error::no_memory) {
          // Our limit, not the replica's fault: free the idle pool's
          // descriptors for the next requests, and say so.
          idle_.clear();
          result.outcome = ForwardOutcome::kOverloaded;
        }
        co_return false;
      }
      call.conn->socket().set_option(tcp::no_delay(true), ec);
      if (call.conn->tls) {
        // Still within the connect timeout.
        auto [tec] =
            co_await call.conn->tls->async_handshake(asio::ssl::stream_base::client, kUseTuple);
        if (tec) {
          watch.conn = nullptr;
          result.failure = fmt::format("TLS handshake with {} ({}): {}", endpoint.replica, key,
                                       watch.timed_out ? "timed out" : tec.message());
          co_return false;
        }
      }
      call.arm(call.idle);
    }
    auto [wec, wn] = co_await call.conn->with(
        [&](auto& stream) { return asio::async_write(stream, request_buffers, kUseTuple); });
    std::string head_error = wec ? wec.message() : std::string();
    // Interim responses (103 Early Hints from a hosted backend, a stray 100
    // Continue) are read past: the client gets the final one (RFC 9110
    // 15.2). A 101 fails the attempt: no upgrade was asked for.
    bool interim_seen = false;  // the request reached the replica: never resent
    for (int interim = 0; head_error.empty(); ++interim) {
      head_error = co_await read_head(call);
      if (!head_error.empty() || call.head.status >= 200) break;
      if (call.head.status == 101) {
        head_error = "Protocol error: 101 Switching Protocols, and no upgrade was asked for";
        break;
      }
      if (interim == 8) {
        head_error = "Protocol error: more than 8 interim (1xx) responses";
        break;
      }
      interim_seen = true;
    }
    if (head_error.empty()) co_return true;
    watch.conn = nullptr;
    if (watch.client_gone) {
      result.outcome = ForwardOutcome::kClientGone;
      co_return false;
    }
    if (reused && fresh_retry_left && !watch.timed_out && !interim_seen &&
        call.conn->buffer.size() == 0) {
      fresh_retry_left = false;
      ++request.stats->reconnects;
      spdlog::debug("gateway: pooled connection to replica {} ({}) was closed ({}); resending",
                    endpoint.replica, key, head_error);
      continue;  // nothing of a response has come
    }
    // Nothing has reached the client: another replica may answer.
    result.failure = fmt::format("replica {} ({}): {}", endpoint.replica, key,
                                 watch.timed_out ? "idle timeout" : head_error);
    co_return false;
  }
}

// A whole response: read it all, then answer the client (or leave a 429 or
// 5xx to another attempt).
asio::awaitable<void> Upstream::relay_body(http::Exchange& ex, Call& call, std::string content_type,
                                           ForwardRequest& request, ForwardResult& result) {
  Endpoint& endpoint = *request.endpoint;
  const int status = result.upstream_status;
  std::string payload;
  const std::string read_error = co_await read_body(call, payload);
  call.watch->conn = nullptr;
  if (call.watch->client_gone) {
    result.outcome = ForwardOutcome::kClientGone;
    co_return;
  }
  if (!read_error.empty()) {
    result.outcome = ForwardOutcome::kDone;
    result.client_status = 502;
    std::string message =
        fmt::format("replica {} failed mid-response: {}", endpoint.replica, read_error);
    co_await send_error(ex, 502, std::move(message));
    co_return;
  }
  const bool reusable = call.head.keep_alive;
  if (request.may_retry && (status == 429 || status >= 500)) {
    // Refused or failed, and nothing reached the client: try elsewhere.
    auto message = openai_error_message(payload);
    result.failure = fmt::format("replica {} ({}) answered {}{}{}", endpoint.replica, endpoint.key,
                                 status, message.empty() ? "" : ": ", message);
    if (reusable) keep_idle(pool_key(endpoint), std::move(call.conn));
    co_return;
  }
  result.outcome = ForwardOutcome::kDone;
  result.client_status = status;
  ModelStats& stats = *request.stats;
  stats.ttft.observe(seconds_since(request.start));
  if (request.held) stats.held_ttft.observe(seconds_since(request.start));
  if (status == 200)
    endpoint.observe_ttft(seconds_since(request.start), steady_ms_of(request.start),
                          request.deadline && request.deadline->settle());
  if (status == 200) add_usage(payload, result.usage);
  http::Response response{status, std::move(content_type), std::move(payload),
                          std::move(request.headers)};
  co_await ex.respond(std::move(response));
  if (reusable) keep_idle(pool_key(endpoint), std::move(call.conn));
}

// SSE: forward every complete event as soon as it arrives. The engine's
// socket is read directly and the body's framing decoded here
// (http::BodyDecoder): what one read brings leaves in one write. Once the
// stream has begun there is no retry: a failure ends it with an error event.
asio::awaitable<void> Upstream::relay_stream(http::Exchange& ex, Call& call,
                                             std::string content_type, ForwardRequest& request,
                                             ForwardResult& result) {
  Endpoint& endpoint = *request.endpoint;
  ModelStats& stats = *request.stats;
  Conn& conn = *call.conn;
  const Clock::time_point start = request.start;
  const int status = result.upstream_status;
  result.client_status = status;
  http::BodyDecoder body = call.head.body_decoder();
  const bool keep_alive = call.head.keep_alive;
  std::vector<http::Header> headers = std::move(request.headers);
  // Events that came in with the engine's header leave with ours, in one
  // write; otherwise the header goes at once (a long prefill may follow,
  // and the client should see the answer begin).
  bool client_ok = co_await ex.begin_stream(status, std::move(content_type), std::move(headers),
                                            conn.buffer.size() > 0);
  bool ended = false;
  std::string failure;  // why the engine's side ended early
  std::string& pending = conn.events;
  std::string& out = conn.out;
  pending.clear();
  bool first_token = true;
  Clock::time_point last_event = start;
  Clock::time_point now = Clock::now();
  // Re-arming the watchdog costs a timerfd syscall, so it is renewed at
  // most once a second, not per event.
  Clock::time_point armed = now;
  bool closed = false;  // the engine closed the connection
  while (client_ok) {
    // What is buffered: the bytes that came with the header, then each read.
    auto used = body.feed(conn.buffered(), pending);
    if (!used.ok()) {
      failure = used.error().message;
      break;
    }
    conn.buffer.consume(*used);
    if (closed && !body.done()) {
      if (auto s = body.at_close(); !s.ok()) failure = s.error().message;
    }
    out.clear();
    size_t pos = 0, end;
    while ((end = pending.find("\n\n", pos)) != std::string::npos) {
      std::string_view event(pending.data() + pos, end - pos);
      const size_t event_end = end + 2;
      bool forward_event = true;
      if (!event.starts_with("data: {")) {
        // a comment, [DONE] or another field: relayed as it is
      } else if (is_usage_event(event)) {
        add_usage(event.substr(6), result.usage);
        forward_event = request.client_wants_usage;
      } else {
        if (first_token) {
          stats.ttft.observe(std::chrono::duration<double>(now - start).count());
          if (request.held)
            stats.held_ttft.observe(std::chrono::duration<double>(now - start).count());
          endpoint.observe_ttft(std::chrono::duration<double>(now - start).count(),
                                steady_ms_of(start),
                                request.deadline && request.deadline->settle());
          first_token = false;
          // Its prefill is done: no longer part of the endpoint's queue.
          endpoint.pending_prefill.fetch_sub(result.prefill_pending, std::memory_order_relaxed);
          result.prefill_pending = 0;
        } else {
          const double gap = std::chrono::duration<double>(now - last_event).count();
          stats.inter_token.observe(gap);
          endpoint.observe_itl(gap);
        }
        last_event = now;
      }
      if (forward_event) out.append(pending, pos, event_end - pos);
      pos = event_end;
    }
    pending.erase(0, pos);
    if (body.done()) {  // the last events and the body's end, in one write
      // All is read from the engine: a client hanging up from here on
      // (once it has the end, say) cuts nothing.
      call.watch->conn = nullptr;
      client_ok = co_await ex.end_stream(out);
      ended = true;
      break;
    }
    if (!out.empty()) client_ok = co_await ex.write_chunk(out);
    if (!failure.empty() || !client_ok) break;
    // The decoder used every byte (the body is not done): the buffer is
    // empty, and a read fills it from the start.
    auto [ec, n] = co_await conn.with([&](auto& stream) {
      return stream.async_read_some(conn.buffer.prepare(Conn::kReadBuffer), kUseTuple);
    });
    conn.buffer.commit(n);
    // One clock reading per read: the events that came in it arrived together.
    now = Clock::now();
    if (now - armed > std::chrono::seconds(1)) {
      call.arm(call.idle);
      armed = now;
    }
    if (ec == asio::error::eof) {
      closed = true;
    } else if (ec) {
      failure = call.watch->timed_out ? "idle timeout" : ec.message();
      // What was read before the error is still relayed (above), then the
      // stream ends with the error.
      if (n == 0) break;
    }
  }
  call.watch->conn = nullptr;
  if (!client_ok || (!ended && call.watch->client_gone)) {
    result.outcome = ForwardOutcome::kClientGone;  // the connection is dropped, not pooled
    co_return;
  }
  result.outcome = ForwardOutcome::kDone;
  if (!ended) {
    // The replica died or broke off mid-stream: end the stream with an
    // error event rather than leave the client hanging.
    if (failure.empty()) failure = "the response ended early";
    result.client_status = 502;
    openai::ApiError error{
        502, fmt::format("replica {} failed mid-stream: {}", endpoint.replica, failure), {}};
    std::string tail = "data: " + openai::error_body(error) + "\n\ndata: [DONE]\n\n";
    const bool ok = co_await ex.write_chunk(tail);
    if (ok) co_await ex.end_stream();
    co_return;
  }
  if (keep_alive && !closed) keep_idle(pool_key(endpoint), std::move(call.conn));
}

}  // namespace loadstar::gateway
