// An HTTP/1.1 server on Asio with C++20 coroutines, parsing requests with
// http/message_head.h. Handlers see plain request and response types and
// may answer whole or stream a chunked body (SSE). Each io_context given to the server gets
// its own acceptor on the same port (SO_REUSEPORT), so worker threads share
// nothing on the request path.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "common/result.h"
#include "http/message_head.h"

namespace boost::asio {
class io_context;
}
namespace boost::system {
class error_code;
}

namespace loadstar::http {

struct Request {
  std::string method;
  std::string target;
  std::string body;
  std::vector<Header> headers;
  // The client's IP address as the server saw it ("" outside a server).
  std::string remote_address;
  // Case-insensitive lookup; empty when absent.
  std::string_view header(std::string_view name) const;
  // The target without its query string.
  std::string_view path() const;
  // Whether the client connected from this machine's loopback (127.0.0.0/8, ::1).
  bool from_loopback() const;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<Header> headers;
};

// One request and its response on a connection. Methods returning bool give
// false when the client is gone; the handler should then stop.
class Exchange {
 public:
  struct Impl;
  explicit Exchange(Impl* impl) : impl_(impl) {}

  const Request& request() const;
  boost::asio::any_io_executor executor() const;

  boost::asio::awaitable<bool> respond(Response response);
  // Starts a chunked response; write_chunk sends each piece as it comes.
  // `data` must stay alive until the returned awaitable completes (callers
  // co_await it at once, so a local buffer they reuse is fine).
  // `defer`: the header leaves with the first chunk (or the end), in one
  // write, for a caller that has that chunk at hand already.
  boost::asio::awaitable<bool> begin_stream(int status, std::string content_type,
                                            std::vector<Header> headers = {}, bool defer = false);
  boost::asio::awaitable<bool> write_chunk(std::string_view data);
  // Ends the body; `data` (if any) goes out as its last chunk in the same write.
  boost::asio::awaitable<bool> end_stream(std::string_view data = {});
  // Calls `callback` (on this exchange's executor) if the client closes the
  // connection before the response is complete. For handlers that wait a
  // long time before writing anything. A later call replaces the callback.
  void on_client_closed(std::function<void()> callback);

 private:
  // The write of `buffers` (a sequence of const buffers) to the client,
  // to co_await; wrote() takes its error: false, and every later write
  // false, once one has failed.
  template <class Buffers>
  auto write(const Buffers& buffers);
  bool wrote(const boost::system::error_code& ec);
  Impl* impl_;
};

using Handler = std::function<boost::asio::awaitable<void>(Exchange&)>;

// Whether a listening address is this machine's loopback ("localhost",
// 127.0.0.0/8, ::1): only local callers can reach it.
bool is_loopback_host(std::string_view host);

// Raises this process's soft descriptor limit to its hard limit (a proxy
// holds two per stream); returns the soft limit now in force.
uint64_t raise_descriptor_limit();
// Connections a server may hold with `descriptors` available when each may
// need one more (the upstream of a proxied request): half of what is left
// after a reserve for files, pools and listeners.
uint32_t connection_budget(uint64_t descriptors);

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: the kernel picks; port() tells which
  uint64_t max_body_bytes = 8u << 20;
  double idle_timeout_s = 120;  // a keep-alive connection with no request is closed after this
  // Once a request's first byte is in, its headers must arrive within
  // header_timeout_s and its body within body_timeout_s (slowloris), as
  // nginx's client_header_timeout and client_body_timeout.
  double header_timeout_s = 30;
  double body_timeout_s = 60;
  uint32_t max_header_bytes = 64 * 1024;  // more: 431
  // Connections served at once; past it a new one gets 503 with
  // Retry-After, before the process runs out of descriptors. 0: from the
  // descriptor limit (see connection_budget).
  uint32_t max_connections = 0;
  // Both set: every connection is HTTPS (TLS 1.2+), with this PEM
  // certificate chain and key; a change to either file is picked up by new
  // connections within a second (certificate rotation without a restart).
  std::string tls_cert_file, tls_key_file;
  // The JSON body of errors the server answers itself (malformed HTTP 400,
  // body over the limit 413, a handler that failed 500), so that they have
  // the same shape as the application's own errors. Default: {"error":{"message":..}}.
  std::function<std::string(int status, std::string_view message)> error_body;
};

class Server {
 public:
  // Binds on construction (so port() is known at once); serving starts with
  // start(). One acceptor per io_context.
  static Result<std::unique_ptr<Server>> create(std::vector<boost::asio::io_context*> contexts,
                                                ServerOptions options, Handler handler);
  ~Server();
  uint16_t port() const;
  // Connections open now (served, not refused); the limit; connections
  // refused (503) at the limit so far.
  uint32_t connections() const;
  uint32_t max_connections() const;
  uint64_t refused_connections() const;
  void start();
  // Stops accepting; connections in progress finish on their own.
  void stop();

  struct State;  // shared with the connections; defined in server.cpp

 private:
  explicit Server(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace loadstar::http
