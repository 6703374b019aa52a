#include "http/server.h"

#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <mutex>
#include <variant>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/read_size.hpp>
#include <boost/beast/http/status.hpp>
#include "common/strings.h"

namespace loadstar::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using TlsStream = asio::ssl::stream<tcp::socket>;
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

namespace {

// The TCP socket under a connection.
tcp::socket& lowest(tcp::socket& socket) {
  return socket;
}
tcp::socket& lowest(TlsStream& stream) {
  return stream.next_layer();
}

std::string default_error_body(int status, std::string_view message) {
  std::string out = R"({"error":{"message":")";
  append_json_escaped(out, message);
  out += fmt::format(R"(","code":{}}}}})", status);
  return out;
}

}  // namespace

std::string_view Request::header(std::string_view name) const {
  for (const Header& h : headers)
    if (iequals(h.name, name)) return h.value;
  return {};
}

bool is_loopback_host(std::string_view host) {
  if (host.starts_with("::ffff:")) host.remove_prefix(7);
  return host == "localhost" || host.starts_with("127.") || host == "::1";
}

bool Request::from_loopback() const {
  return remote_address != "localhost" && is_loopback_host(remote_address);
}

std::string_view Request::path() const {
  std::string_view t = target;
  return t.substr(0, t.find('?'));
}

struct Exchange::Impl {
  std::variant<tcp::socket*, TlsStream*> stream;
  Request request;
  bool keep_alive = true;
  bool complete = false;   // the whole response has been written
  bool streaming = false;  // a chunked response has begun
  std::string head;        // its header, when deferred to the first chunk
  bool failed = false;     // a write failed: the client is gone
  // on_client_closed's watch: at most one read is outstanding for it; a
  // new callback replaces the one it calls.
  struct ClientWatch {
    std::function<void()> callback;
    bool pending = false;  // its read is outstanding
    char peek = 0;
  };
  std::shared_ptr<ClientWatch> watch;
};

const Request& Exchange::request() const {
  return impl_->request;
}

asio::any_io_executor Exchange::executor() const {
  return std::visit([](auto* s) { return s->get_executor(); }, impl_->stream);
}

namespace {

// A header line may carry neither CR nor LF (they would end it early).
bool header_safe(std::string_view text) {
  return text.find_first_of("\r\n") == std::string_view::npos;
}

// A response head's status line and Server field, with room for the rest.
std::string head_start(int status) {
  std::string head;
  head.reserve(256);
  const fmt::format_int code(status);
  head.append("HTTP/1.1 ").append(code.data(), code.size()).append(" ");
  head.append(bhttp::obsolete_reason(static_cast<bhttp::status>(status)));
  head.append("\r\nServer: loadstar\r\n");
  return head;
}

// A chunked response's head, formatted directly: a relay has no use for a
// header container (Beast's allocates each field).
std::string stream_head(int status, std::string_view content_type,
                        const std::vector<Header>& headers, bool keep_alive) {
  std::string head = head_start(status);
  head.append("Content-Type: ")
      .append(header_safe(content_type) ? content_type : "application/octet-stream")
      .append("\r\nCache-Control: no-cache\r\n");
  for (const Header& h : headers) {
    // The framing and the fields above are the server's.
    if (!header_safe(h.name) || !header_safe(h.value) || h.name.empty() ||
        iequals(h.name, "Content-Length") || iequals(h.name, "Transfer-Encoding") ||
        iequals(h.name, "Content-Type") || iequals(h.name, "Cache-Control") ||
        iequals(h.name, "Server"))
      continue;
    head.append(h.name).append(": ").append(h.value).append("\r\n");
  }
  if (!keep_alive) head += "Connection: close\r\n";
  head += "Transfer-Encoding: chunked\r\n\r\n";
  return head;
}

// The framing of one chunk: its size line, and the CRLF after its data.
struct ChunkFrame {
  explicit ChunkFrame(size_t size) {
    auto r = fmt::format_to_n(line.data(), line.size() - 2, "{:x}", size);
    line[r.size] = '\r';
    line[r.size + 1] = '\n';
    length = r.size + 2;
  }
  asio::const_buffer size_line() const { return asio::buffer(line.data(), length); }
  std::array<char, 20> line{};
  size_t length = 0;
};
constexpr std::string_view kCrlf = "\r\n";
constexpr std::string_view kLastChunk = "0\r\n\r\n";

}  // namespace

// The write, not a coroutine of its own: a frame per write was a share of
// the relay's CPU. `buffers` are copied into the operation (the bytes they
// point at must outlive it).
template <class Buffers>
auto Exchange::write(const Buffers& buffers) {
  return std::visit([&](auto* s) { return asio::async_write(*s, buffers, kUseTuple); },
                    impl_->stream);
}

bool Exchange::wrote(const boost::system::error_code& ec) {
  if (ec) impl_->failed = true;
  return !ec;
}

asio::awaitable<bool> Exchange::begin_stream(int status, std::string content_type,
                                             std::vector<Header> headers, bool defer) {
  impl_->streaming = true;
  impl_->head = stream_head(status, content_type, headers, impl_->keep_alive);
  if (defer) co_return true;
  const std::string head = std::exchange(impl_->head, {});
  auto [ec, n] = co_await write(std::array{asio::buffer(head)});
  co_return wrote(ec);
}

asio::awaitable<bool> Exchange::write_chunk(std::string_view data) {
  if (impl_->failed) co_return false;
  if (data.empty()) co_return true;  // an empty chunk would end the body
  const ChunkFrame frame(data.size());
  const std::string head = std::exchange(impl_->head, {});
  auto [ec, n] =
      co_await write(std::array{asio::buffer(head), frame.size_line(),
                                asio::buffer(data.data(), data.size()), asio::buffer(kCrlf)});
  co_return wrote(ec);
}

asio::awaitable<bool> Exchange::end_stream(std::string_view data) {
  if (impl_->failed) co_return false;
  const std::string head = std::exchange(impl_->head, {});
  impl_->complete = true;
  if (data.empty()) {
    auto [ec, n] = co_await write(std::array{asio::buffer(head), asio::buffer(kLastChunk)});
    co_return wrote(ec);
  }
  const ChunkFrame frame(data.size());
  auto [ec, n] = co_await write(std::array{asio::buffer(head), frame.size_line(),
                                           asio::buffer(data.data(), data.size()),
                                           asio::buffer(kCrlf), asio::buffer(kLastChunk)});
  co_return wrote(ec);
}

asio::awaitable<bool> Exchange::respond(Response response) {
  const int status = response.status;
  // 1xx, 204 and 304 answers have no body and no Content-Length.
  const bool bodiless = status < 200 || status == 204 || status == 304;
  std::string head = head_start(status);
  bool typed = false;  // a Content-Type among the headers replaces the response's
  for (const Header& h : response.headers) {
    if (!header_safe(h.name) || !header_safe(h.value) || h.name.empty() ||
        iequals(h.name, "Content-Length") || iequals(h.name, "Transfer-Encoding"))
      continue;
    typed = typed || iequals(h.name, "Content-Type");
    head.append(h.name).append(": ").append(h.value).append("\r\n");
  }
  if (!typed && header_safe(response.content_type) && !response.content_type.empty())
    head.append("Content-Type: ").append(response.content_type).append("\r\n");
  if (!bodiless) {
    const fmt::format_int length(response.body.size());
    head.append("Content-Length: ").append(length.data(), length.size()).append("\r\n");
  }
  if (!impl_->keep_alive) head += "Connection: close\r\n";
  head += "\r\n";
  // An answer to HEAD says how long its body would be, and sends none (a
  // client reading one would take it for the next response).
  const std::string_view body = bodiless || impl_->request.method == "HEAD"
                                    ? std::string_view()
                                    : std::string_view(response.body);
  auto [ec, n] =
      co_await write(std::array<asio::const_buffer, 2>{asio::buffer(head), asio::buffer(body)});
  impl_->complete = true;
  co_return wrote(ec);
}

void Exchange::on_client_closed(std::function<void()> callback) {
  // A new callback replaces the previous one (which may refer to things
  // gone by now: a held request's timer did).
  if (!impl_->watch) impl_->watch = std::make_shared<Impl::ClientWatch>();
  impl_->watch->callback = std::move(callback);
  if (impl_->watch->pending) return;
  impl_->watch->pending = true;
  tcp::socket& socket =
      std::visit([](auto* s) -> tcp::socket& { return lowest(*s); }, impl_->stream);
  // A one-byte peek: it ends with end-of-file (or an error) when the peer
  // closes, and with the byte when data comes (a pipelined request, or a
  // TLS record), which is not a close. A read, not async_wait: Asio re-arms
  // the descriptor in epoll (a syscall) for every wait, while a read is
  // queued as it is, its speculative attempt skipped when the last read
  // found the socket drained.
  socket.async_receive(asio::buffer(&impl_->watch->peek, 1), tcp::socket::message_peek,
                       [watch = impl_->watch](boost::system::error_code ec, size_t) {
                         watch->pending = false;
                         if (ec == asio::error::operation_aborted || !watch->callback) return;
                         auto callback = std::move(watch->callback);
                         watch->callback = nullptr;
                         if (ec) callback();
                       });
}

struct Server::State {
  ServerOptions options;
  Handler handler;
  std::vector<asio::io_context*> contexts;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  uint16_t port = 0;
  uint32_t max_connections = 0;
  std::atomic<uint32_t> connections{0};
  std::atomic<uint32_t> refusing{0};
  std::atomic<uint64_t> refused{0};

  // TLS: the context new connections use, rebuilt when the certificate or
  // key file changes (checked at most once a second); a connection keeps
  // the context it started with.
  std::mutex tls_mu;
  std::shared_ptr<asio::ssl::context> tls;
  std::filesystem::file_time_type cert_mtime, key_mtime;
  std::chrono::steady_clock::time_point tls_checked;
  std::shared_ptr<asio::ssl::context> tls_context();
};

namespace {

Result<std::shared_ptr<asio::ssl::context>> load_tls(const std::string& cert,
                                                     const std::string& key) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                   asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use);
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(cert, ec);
  if (ec) return make_error(ErrorCode::kInvalidArgument, "--tls-cert {}: {}", cert, ec.message());
  ctx->use_private_key_file(key, asio::ssl::context::pem, ec);
  if (ec) return make_error(ErrorCode::kInvalidArgument, "--tls-key {}: {}", key, ec.message());
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1)
    return make_error(ErrorCode::kInvalidArgument, "--tls-key {} does not match --tls-cert {}", key,
                      cert);
  return ctx;
}

}  // namespace

std::shared_ptr<asio::ssl::context> Server::State::tls_context() {
  std::lock_guard lock(tls_mu);
  const auto now = std::chrono::steady_clock::now();
  if (now - tls_checked < std::chrono::seconds(1)) return tls;
  tls_checked = now;
  std::error_code ec1, ec2;
  const auto cert = std::filesystem::last_write_time(options.tls_cert_file, ec1);
  const auto key = std::filesystem::last_write_time(options.tls_key_file, ec2);
  if (ec1 || ec2 || (cert == cert_mtime && key == key_mtime)) return tls;
  auto loaded = load_tls(options.tls_cert_file, options.tls_key_file);
  if (!loaded.ok()) {
    // Mid-rotation (the key written, not yet the certificate): keep serving
    // with the old pair and look again.
    spdlog::warn("TLS reload: {}; keeping the previous certificate", loaded.error().message);
    return tls;
  }
  tls = std::move(*loaded);
  cert_mtime = cert;
  key_mtime = key;
  spdlog::info("TLS: loaded {}", options.tls_cert_file);
  return tls;
}

namespace {

// GCC 12 destroys some temporaries of a co_await expression twice: coroutine
// arguments in this file are named locals or trivially destructible.
// An error answer, after which the connection closes. `extra`: more
// header lines, each with its CRLF.
template <class Stream>
asio::awaitable<void> write_simple(Stream& stream, int status, std::string message,
                                   const Server::State* state, std::string_view extra = {}) {
  const std::string body = state->options.error_body ? state->options.error_body(status, message)
                                                     : default_error_body(status, message);
  std::string head = head_start(status);
  const fmt::format_int length(body.size());
  head.append("Content-Type: application/json\r\n").append(extra);
  head.append("Content-Length: ").append(length.data(), length.size());
  head.append("\r\nConnection: close\r\n\r\n");
  auto [ec, n] = co_await asio::async_write(
      stream, std::array<asio::const_buffer, 2>{asio::buffer(head), asio::buffer(body)}, kUseTuple);
  (void)ec;
}

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// A connection's deadline (nginx's client_header_timeout and the like): when
// it passes, the socket is closed and the read waiting on it fails. Moving
// the deadline later is a store: the timer wakes at the earlier time, finds
// the later one and sleeps again. A request that arrives whole in one read
// only moves its connection's deadline later, so serving it costs no timer
// operation (Beast's tcp_stream re-armed a timer for every read).
class Deadline {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Deadline(tcp::socket& socket) : s_(std::make_shared<State>(socket)) {}
  ~Deadline() {
    s_->socket = nullptr;
    s_->timer.cancel();
  }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  void after(std::chrono::milliseconds wait) {
    s_->at = Clock::now() + wait;
    if (s_->at < s_->armed) arm(s_);
  }
  void never() { s_->at = Clock::time_point::max(); }
  // The deadline passed (and the socket was closed for it).
  bool expired() const { return s_->expired; }

 private:
  struct State {
    explicit State(tcp::socket& s) : socket(&s), timer(s.get_executor()) {}
    tcp::socket* socket;  // null once the connection is done
    asio::steady_timer timer;
    Clock::time_point at = Clock::time_point::max();     // when the socket is closed
    Clock::time_point armed = Clock::time_point::max();  // when the timer wakes
    bool expired = false;
  };
  static void arm(const std::shared_ptr<State>& state) {
    state->armed = state->at;
    state->timer.expires_at(state->at);  // cancels the wait for the later time
    state->timer.async_wait([state](boost::system::error_code ec) {
      if (ec || !state->socket) return;  // re-armed, or the connection is done
      state->armed = Clock::time_point::max();
      if (Clock::now() >= state->at) {
        state->expired = true;
        boost::system::error_code ignored;
        state->socket->close(ignored);
      } else if (state->at != Clock::time_point::max()) {
        arm(state);
      }
    });
  }
  std::shared_ptr<State> s_;
};

// Reads a connection's requests from its buffer: each part (the head, the
// body) is parsed from what is buffered first, and only when that is not
// whole is a coroutine started to read more (most requests come whole in
// one read, and a coroutine frame per part was a share of the CPU). The
// first read of a part sets the deadline to its wait from now, so a
// request that came whole in the connection's last read sets none.
// Errors: kOutOfRange, over a limit (431 for the head, 413 for the body);
// kCorrupt, malformed or cut short (400); else the connection closed or
// timed out, and nothing is answered.
template <class Stream>
class RequestReader {
 public:
  RequestReader(Stream& stream, beast::flat_buffer& buffer, Deadline& deadline)
      : stream_(stream), buffer_(buffer), deadline_(deadline) {}

  // The next request's head, from what is buffered; nullopt: read_head.
  Result<std::optional<RequestHead>> head(size_t max_bytes) {
    drop_blank_lines();
    const std::string_view in = buffered();
    // Empty lines before it count toward the head's limit.
    const size_t limit = blank_ < max_bytes ? max_bytes - blank_ : 0;
    // Only bytes not looked through before are searched for the head's
    // end (from 3 before them, which may start one) and for a bare LF, so
    // a head trickling in a byte at a time is not scanned from its start
    // for every byte.
    const size_t from = searched_ < 3 ? 0 : searched_ - 3;
    const bool bare_lf = has_bare_lf(in, searched_);
    searched_ = in.size();
    if (!bare_lf && in.find("\r\n\r\n", from) == std::string_view::npos && in.size() < limit)
      return std::optional<RequestHead>();
    auto head = parse_request_head(in, limit);
    if (head.ok() && *head) {
      buffer_.consume((*head)->size);
      searched_ = 0;
      blank_ = 0;
    }
    return head;
  }
  // Drops the empty lines that may come before a request line (RFC 9112
  // §2.2; some clients send a CRLF after a body) as they arrive: so that
  // they are never looked through again, and a connection holding only
  // them is idle, not in the middle of a request.
  void drop_blank_lines() {
    const std::string_view in = buffered();
    size_t blank = 0;
    while (in.substr(blank, 2) == "\r\n") blank += 2;
    if (blank == 0) return;
    buffer_.consume(blank);
    blank_ += blank;
    searched_ = 0;
  }
  asio::awaitable<Result<std::optional<RequestHead>>> read_head(size_t max_bytes,
                                                                std::chrono::milliseconds wait) {
    for (bool first = true;; first = false) {
      if (Status read = co_await more(Part::kHead, wait, first); !read.ok())
        co_return std::move(read).error();
      auto parsed = head(max_bytes);
      if (!parsed.ok() || *parsed) co_return parsed;
    }
  }

  // The body after `head`, decoded from what is buffered; false: read_body.
  Result<bool> body(const RequestHead& head, uint64_t max_bytes) {
    if (!decoding_) {
      decoder_ = head.body_decoder();
      decoding_ = true;
      body_.clear();
      if (!head.chunked) body_.reserve(head.content_length);
    }
    auto used = decoder_.feed(buffered(), body_);
    if (!used.ok()) return std::move(used).error();
    buffer_.consume(*used);
    // A chunk is refused by its size line, before its data is sent.
    if (body_.size() + decoder_.pending() > max_bytes)
      return make_error(ErrorCode::kOutOfRange, "body over the limit");
    return decoder_.done();
  }
  asio::awaitable<Result<bool>> read_body(const RequestHead& head, uint64_t max_bytes,
                                          std::chrono::milliseconds wait) {
    for (bool first = true;; first = false) {
      if (Status read = co_await more(Part::kBody, wait, first); !read.ok())
        co_return std::move(read).error();
      auto done = body(head, max_bytes);
      if (!done.ok() || *done) co_return done;
    }
  }
  // The body decoded, once body() or read_body() said it is whole.
  std::string take_body() {
    decoding_ = false;
    return std::move(body_);
  }

 private:
  std::string_view buffered() const {
    return {static_cast<const char*>(buffer_.data().data()), buffer_.size()};
  }
  enum class Part { kHead, kBody };
  // Reads more of `part`; `first`: its first read, which sets the deadline.
  asio::awaitable<Status> more(Part part, std::chrono::milliseconds wait, bool first) {
    if (first) deadline_.after(wait);
    auto [ec, n] = co_await stream_.async_read_some(
        buffer_.prepare(beast::read_size(buffer_, 65536)), kUseTuple);
    buffer_.commit(n);
    if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated) {
      if (buffer_.size() == 0 && part == Part::kHead)
        co_return make_error(ErrorCode::kUnavailable, "end of stream");
      co_return make_error(ErrorCode::kCorrupt, "partial message: the request {} was cut short",
                           part == Part::kHead ? "head" : "body");
    }
    if (ec)
      co_return make_error(ErrorCode::kUnavailable, "{}",
                           deadline_.expired() ? "timeout" : ec.message());
    co_return Status();
  }

  Stream& stream_;
  beast::flat_buffer& buffer_;
  Deadline& deadline_;
  size_t searched_ = 0;  // bytes of the buffer looked through for a head's end
  size_t blank_ = 0;     // bytes of empty lines dropped before this head
  BodyDecoder decoder_ = BodyDecoder::length(0);
  bool decoding_ = false;  // decoder_ and body_ belong to the request being read
  std::string body_;
};

// A connection over max_connections: its request is read (briefly) and
// answered 503 with Retry-After, then it is closed.
template <class Stream>
asio::awaitable<void> refuse_on(Stream& stream, Deadline& deadline, const Server::State* state) {
  beast::flat_buffer buffer;
  const std::chrono::milliseconds wait(2000);
  RequestReader<Stream> reader(stream, buffer, deadline);
  auto head = reader.head(state->options.max_header_bytes);
  if (head.ok() && !*head) head = co_await reader.read_head(state->options.max_header_bytes, wait);
  if (head.ok()) {
    std::string message = fmt::format("the server is at its limit of {} connections; retry shortly",
                                      state->max_connections);
    co_await write_simple(stream, 503, std::move(message), state, "Retry-After: 1\r\n");
  }
  // Lingering close, as nginx's: stop sending, then read what the client
  // still sends until it closes (briefly), so that closing with unread
  // bytes does not reset the connection before the 503 is read.
  boost::system::error_code ignored;
  lowest(stream).shutdown(tcp::socket::shutdown_send, ignored);
  deadline.after(std::chrono::seconds(1));
  for (char sink[1024];;) {
    auto [rec, rn] = co_await stream.async_read_some(asio::buffer(sink), kUseTuple);
    if (rec) break;
  }
}

std::string body_over_limit(const Server::State& state) {
  return fmt::format("request body is over the limit of {} bytes", state.options.max_body_bytes);
}

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

// Answers a request that could not be read whole (RequestReader's errors):
// 431 or 413 over a limit, 501 for a transfer coding other than chunked,
// 400 when malformed; nothing when the connection closed or timed out.
template <class Stream>
asio::awaitable<void> refuse_request(Stream& stream, const Error& error, bool in_body,
                                     const Server::State* state) {
  int status = 400;
  std::string message = error.message;
  switch (error.code) {
    case ErrorCode::kOutOfRange:
      status = in_body ? 413 : 431;
      message = in_body ? body_over_limit(*state)
                        : fmt::format("request headers are over the limit of {} bytes",
                                      state->options.max_header_bytes);
      break;
    case ErrorCode::kInvalidArgument:
      status = 501;
      break;
    case ErrorCode::kCorrupt:
      break;
    default:
      co_return;
  }
  co_await write_simple(stream, status, std::move(message), state);
}

template <class Stream>
asio::awaitable<void> serve_on(Stream& stream, Deadline& deadline, std::string remote,
                               std::shared_ptr<Server::State> state) {
  beast::flat_buffer buffer;
  RequestReader<Stream> reader(stream, buffer, deadline);
  const auto idle = millis(state->options.idle_timeout_s);
  const auto header_wait = millis(state->options.header_timeout_s);
  const auto body_wait = millis(state->options.body_timeout_s);
  for (;;) {
    reader.drop_blank_lines();
    // A keep-alive connection may wait `idle` for its next request; once
    // its first byte is in, the rest of the headers get header_timeout_s.
    // A timeout closes the connection without an answer (the socket is
    // closed by then), as nginx does.
    if (buffer.size() == 0) {
      deadline.after(idle);
      auto [fec, fn] = co_await stream.async_read_some(buffer.prepare(4096), kUseTuple);
      if (fec) break;
      buffer.commit(fn);
    } else {
      // A pipelined request: what is written before its handler runs (a
      // 100 Continue, an error) is bounded as its header would be.
      deadline.after(header_wait);
    }
    auto head = reader.head(state->options.max_header_bytes);
    if (head.ok() && !*head)
      head = co_await reader.read_head(state->options.max_header_bytes, header_wait);
    if (!head.ok()) {
      co_await refuse_request(stream, head.error(), false, state.get());
      break;
    }
    const RequestHead& request = **head;
    if (!request.chunked && request.content_length > state->options.max_body_bytes) {
      std::string message = body_over_limit(*state);
      co_await write_simple(stream, 413, std::move(message), state.get());
      break;
    }
    if (request.expect_continue) {
      auto [cec, cn] = co_await asio::async_write(stream, asio::buffer(kContinue), kUseTuple);
      if (cec) break;
    }
    auto body = reader.body(request, state->options.max_body_bytes);
    if (body.ok() && !*body)
      body = co_await reader.read_body(request, state->options.max_body_bytes, body_wait);
    if (!body.ok()) {
      co_await refuse_request(stream, body.error(), true, state.get());
      break;
    }
    deadline.never();
    Exchange::Impl impl{&stream, {}, request.keep_alive};
    impl.request.method = std::move((*head)->method);
    impl.request.target = std::move((*head)->target);
    impl.request.headers = std::move((*head)->headers);
    impl.request.body = reader.take_body();
    impl.request.remote_address = remote;
    Exchange exchange(&impl);
    bool threw = false;
    try {
      co_await state->handler(exchange);
    } catch (const std::exception& e) {
      spdlog::error("handler for {} {} failed: {}", impl.request.method, impl.request.target,
                    e.what());
      threw = true;
    }
    if (impl.watch) {
      impl.watch->callback = nullptr;
      if (impl.watch->pending) {
        boost::system::error_code ignored;
        lowest(stream).cancel(ignored);
      }
    }
    if (!impl.complete) {
      // A cut stream cannot be repaired; one whose header never left (it
      // was deferred to a first chunk that never came) can still be answered.
      if ((impl.streaming && impl.head.empty()) || impl.failed) break;
      std::string message = threw ? "internal error" : "handler sent no response";
      co_await write_simple(stream, 500, std::move(message), state.get());
      break;
    }
    if (impl.failed || !impl.keep_alive) break;
  }
}

// Runs `serve`-like work on the connection: plain, or over TLS after the
// handshake (10 s at most), ending with TLS's close_notify.
asio::awaitable<bool> handshake(TlsStream& stream, Deadline& deadline) {
  deadline.after(std::chrono::seconds(10));
  auto [ec] = co_await stream.async_handshake(asio::ssl::stream_base::server, kUseTuple);
  co_return !ec;
}

asio::awaitable<void> close_tls(TlsStream& stream, Deadline& deadline) {
  deadline.after(std::chrono::seconds(1));
  auto [ec] = co_await stream.async_shutdown(kUseTuple);
  (void)ec;
}

asio::awaitable<void> session(tcp::socket socket, std::shared_ptr<Server::State> state) {
  struct Count {
    Server::State& s;
    ~Count() { --s.connections; }
  } count{*state};
  boost::system::error_code remote_ec;
  std::string remote = socket.remote_endpoint(remote_ec).address().to_string();
  if (!state->options.tls_cert_file.empty()) {
    std::shared_ptr<asio::ssl::context> tls = state->tls_context();
    TlsStream stream(std::move(socket), *tls);
    Deadline deadline(stream.next_layer());
    if (co_await handshake(stream, deadline)) {
      co_await serve_on(stream, deadline, std::move(remote), state);
      co_await close_tls(stream, deadline);
    }
    boost::system::error_code ignored;
    stream.next_layer().shutdown(tcp::socket::shutdown_both, ignored);
  } else {
    Deadline deadline(socket);
    co_await serve_on(socket, deadline, std::move(remote), state);
    boost::system::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
  }
}

asio::awaitable<void> refuse(tcp::socket socket, std::shared_ptr<Server::State> state) {
  if (!state->options.tls_cert_file.empty()) {
    std::shared_ptr<asio::ssl::context> tls = state->tls_context();
    TlsStream stream(std::move(socket), *tls);
    Deadline deadline(stream.next_layer());
    if (co_await handshake(stream, deadline)) co_await refuse_on(stream, deadline, state.get());
  } else {
    Deadline deadline(socket);
    co_await refuse_on(socket, deadline, state.get());
  }
  --state->refusing;
}

asio::awaitable<void> accept_loop(tcp::acceptor* acceptor, std::shared_ptr<Server::State> state) {
  // Refusals answered at once; each holds a descriptor for a moment.
  const uint32_t refusals = std::max<uint32_t>(16, state->max_connections / 16);
  asio::steady_timer pause(acceptor->get_executor());
  for (;;) {
    // At the limit with that many refusals under way: leave new connections
    // in the listen backlog (they are served or refused in turn) rather
    // than accept and drop them.
    while (state->connections.load() >= state->max_connections &&
           state->refusing.load() >= refusals) {
      pause.expires_after(std::chrono::milliseconds(10));
      co_await pause.async_wait(kUseTuple);
      if (!acceptor->is_open()) co_return;
    }
    auto [ec, socket] = co_await acceptor->async_accept(kUseTuple);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor->is_open()) co_return;
      // Out of descriptors (EMFILE, ENFILE) or memory: keep serving the
      // connections we have, and try again in a moment rather than spin.
      spdlog::warn("accept: {}", ec.message());
      pause.expires_after(std::chrono::milliseconds(50));
      co_await pause.async_wait(kUseTuple);
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    if (state->connections.load() >= state->max_connections) {
      ++state->refused;
      ++state->refusing;
      asio::co_spawn(socket.get_executor(), refuse(std::move(socket), state), asio::detached);
      continue;
    }
    ++state->connections;
    asio::co_spawn(socket.get_executor(), session(std::move(socket), state), asio::detached);
  }
}

}  // namespace

Result<std::unique_ptr<Server>> Server::create(std::vector<asio::io_context*> contexts,
                                               ServerOptions options, Handler handler) {
  auto state = std::make_shared<State>();
  state->options = std::move(options);
  state->handler = std::move(handler);
  state->contexts = std::move(contexts);
  boost::system::error_code ec;
  auto address = asio::ip::make_address(state->options.host, ec);
  if (ec)
    return make_error(ErrorCode::kInvalidArgument, "'{}' is not an IP address",
                      state->options.host);
  uint16_t port = state->options.port;
  for (asio::io_context* ctx : state->contexts) {
    auto acceptor = std::make_unique<tcp::acceptor>(*ctx);
    tcp::endpoint endpoint(address, port);
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec && state->contexts.size() > 1)
      acceptor->set_option(asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true),
                           ec);
    if (!ec) acceptor->bind(endpoint, ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return make_error(ErrorCode::kUnavailable, "cannot listen on {}:{}: {}", state->options.host,
                        port, ec.message());
    }
    port = acceptor->local_endpoint().port();
    state->acceptors.push_back(std::move(acceptor));
  }
  state->port = port;
  if (state->options.tls_cert_file.empty() != state->options.tls_key_file.empty())
    return make_error(ErrorCode::kInvalidArgument, "--tls-cert and --tls-key go together");
  if (!state->options.tls_cert_file.empty()) {
    LS_ASSIGN_OR_RETURN(state->tls,
                        load_tls(state->options.tls_cert_file, state->options.tls_key_file));
    std::error_code ignored;
    state->cert_mtime = std::filesystem::last_write_time(state->options.tls_cert_file, ignored);
    state->key_mtime = std::filesystem::last_write_time(state->options.tls_key_file, ignored);
    state->tls_checked = std::chrono::steady_clock::now();
  }
  state->max_connections = state->options.max_connections
                               ? state->options.max_connections
                               : connection_budget(raise_descriptor_limit());
  return std::unique_ptr<Server>(new Server(std::move(state)));
}

Server::Server(std::shared_ptr<State> state) : state_(std::move(state)) {}

Server::~Server() {
  // The acceptors belong to their io_contexts' reactors; they must go while
  // those still exist (coroutine frames that share State may only be
  // destroyed later, with the io_context).
  for (auto& acceptor : state_->acceptors) acceptor.reset();
}

uint16_t Server::port() const {
  return state_->port;
}

uint32_t Server::connections() const {
  return state_->connections.load();
}

uint32_t Server::max_connections() const {
  return state_->max_connections;
}

uint64_t Server::refused_connections() const {
  return state_->refused.load();
}

uint64_t raise_descriptor_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  // With CAP_SYS_RESOURCE the hard limit may go up to the kernel's
  // fs.nr_open, as nginx's worker_rlimit_nofile does; without, the soft
  // limit goes up to the hard one.
  uint64_t nr_open = 0;
  if (std::FILE* f = std::fopen("/proc/sys/fs/nr_open", "r")) {
    if (std::fscanf(f, "%lu", &nr_open) != 1) nr_open = 0;
    std::fclose(f);
  }
  if (nr_open > limit.rlim_max && limit.rlim_max != RLIM_INFINITY) {
    rlimit wider{static_cast<rlim_t>(nr_open), static_cast<rlim_t>(nr_open)};
    if (setrlimit(RLIMIT_NOFILE, &wider) == 0) return nr_open;
  }
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur == RLIM_INFINITY ? (1u << 20) : limit.rlim_cur;
}

uint32_t connection_budget(uint64_t descriptors) {
  const uint64_t reserve = std::min<uint64_t>(1024, std::max<uint64_t>(32, descriptors / 8));
  if (descriptors <= reserve + 2) return 1;
  return static_cast<uint32_t>(std::min<uint64_t>((descriptors - reserve) / 2, 1u << 30));
}

void Server::start() {
  for (size_t i = 0; i < state_->acceptors.size(); ++i)
    asio::co_spawn(*state_->contexts[i], accept_loop(state_->acceptors[i].get(), state_),
                   asio::detached);
}

void Server::stop() {
  for (size_t i = 0; i < state_->acceptors.size(); ++i) {
    asio::post(*state_->contexts[i], [state = state_, i] {
      boost::system::error_code ignored;
      if (state->acceptors[i]) state->acceptors[i]->close(ignored);
    });
  }
}

}  // namespace loadstar::http
