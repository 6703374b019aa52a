// A small blocking HTTP/1.1 client for the command line, health probes, the
// node agent's downloads and tests. fetch() opens its own connection for
// each call; a ClientPool keeps connections alive between calls (the
// Kubernetes client, the agent's origin). Each exchange runs on the
// connection's private io_context, so it may be used from any thread that
// can afford to block. Host names are resolved; `tls` speaks HTTPS,
// verifying the server against the system's CAs (SSL_CERT_FILE overrides, as
// in OpenSSL).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "http/server.h"

namespace loadstar::http {

struct ClientResponse;

struct ClientRequest {
  std::string host = "127.0.0.1";  // an IP address or a name
  uint16_t port = 0;
  std::string method = "GET";
  std::string target = "/";
  std::string body;
  std::vector<Header> headers;
  double timeout_s = 30;       // the whole exchange
  double stall_timeout_s = 0;  // > 0: fail when no byte arrives for this long
  bool tls = false;
  // With tls: trust exactly this CA bundle (PEM) instead of the system's.
  std::string ca_pem;
  // Polled while the exchange runs; set, it ends with kCancelled (a long
  // watch can be stopped from another thread).
  const std::atomic<bool>* cancel = nullptr;
  // Called once the status line and headers are in, before any body byte.
  std::function<void(const ClientResponse&)> on_headers;
  // Set: every address the host resolves to is checked before connecting
  // (so a name that resolves somewhere forbidden is caught, not only a
  // literal); refused ones are skipped, and with none left the request fails
  // with kPermissionDenied and the refusal's reason.
  std::function<Status(std::string_view address)> admit_address;
};

struct ClientResponse {
  int status = 0;
  std::vector<Header> headers;
  std::string body;
  std::string_view header(std::string_view name) const;
};

// Sends the request and reads the whole response.
Result<ClientResponse> fetch(const ClientRequest& request);

// Sends the request and hands the body to `on_data` piece by piece as it
// arrives; `on_data` returns false to hang up early. The returned response
// holds status and headers, not the body.
Result<ClientResponse> fetch_streaming(const ClientRequest& request,
                                       const std::function<bool(std::string_view)>& on_data);

// Keeps connections alive between requests, per host, port, TLS and CA: a
// request takes an idle connection (one the server has closed is dropped
// first) or opens one, and hands it back when the response was read whole
// and the server keeps it open. A reused connection that fails before any
// byte of the answer (the server closed it as it was taken) is retried once
// on a new connection, as curl does. Any number of threads may fetch at once;
// each exchange has its own connection. Where addresses are checked
// (admit_address), they are checked when a connection opens.
class ClientPool {
 public:
  struct Options {
    size_t max_idle_per_origin = 8;
    double max_idle_s = 30;  // an idle connection older than this is closed
  };
  ClientPool();
  explicit ClientPool(Options options);
  ~ClientPool();
  ClientPool(const ClientPool&) = delete;
  ClientPool& operator=(const ClientPool&) = delete;

  Result<ClientResponse> fetch(const ClientRequest& request);
  Result<ClientResponse> fetch_streaming(const ClientRequest& request,
                                         const std::function<bool(std::string_view)>& on_data);
  // Connections opened so far (the rest of the requests reused one).
  uint64_t connections_opened() const { return opened_.load(); }

  struct Connection;  // client.cpp

 private:
  std::unique_ptr<Connection> take(const std::string& origin);
  void give_back(const std::string& origin, std::unique_ptr<Connection> connection);

  Options options_;
  std::mutex mu_;
  std::map<std::string, std::vector<std::unique_ptr<Connection>>, std::less<>> idle_;
  std::atomic<uint64_t> opened_{0};
};

}  // namespace loadstar::http
