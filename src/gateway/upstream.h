// The way from a gateway worker to the engines: a pool of idle keep-alive
// connections per replica, and one attempt at a request, which sends it and
// relays the answer to the client (a whole body, or SSE event by event).
// Beast stays in upstream.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "gateway/first_token_deadlines.h"
#include "gateway/request_peek.h"
#include "gateway/routing_table.h"
#include "gateway/stats.h"
#include "http/body_decoder.h"
#include "http/server.h"

namespace boost::asio {
class io_context;
namespace ssl {
class context;
}
}  // namespace boost::asio

namespace loadstar::gateway {

// Steady-clock milliseconds of `t`: the unit of Endpoint's TTFT epochs and
// of first-token deadlines.
inline int64_t steady_ms_of(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

struct UpstreamOptions {
  double connect_timeout_s = 2;
  // Silence from an upstream longer than this fails the attempt.
  double idle_timeout_s = 300;
};

// One attempt: what to send where, and what to tell the client.
struct ForwardRequest {
  Endpoint* endpoint = nullptr;
  std::string_view body;              // JSON; must outlive the attempt
  std::string_view authorization;     // sent upstream as is (empty: none)
  std::vector<http::Header> headers;  // added to the client's response
  bool client_wants_usage = false;    // pass a stream's usage event on
  // Another attempt may follow: a 429 or 5xx answer is not relayed.
  bool may_retry = false;
  bool held = false;  // the request waited for a replica: its TTFT also counts as held
  // Watched for its first token against its service's TTFT SLO (null: not
  // watched); settled at the first token.
  FirstTokenDeadlines::Entry* deadline = nullptr;
  std::chrono::steady_clock::time_point start;  // when the request arrived
  // Prompt bytes the caller added to endpoint->pending_prefill; released
  // here at the first streamed token.
  int64_t prefill = 0;
  // Where time to first token, inter-token time and reconnects are counted
  // as they happen (the worker's own statistics).
  ModelStats* stats = nullptr;
  // Sent upstream as x-request-id (empty: none): a disaggregated request's
  // two legs share one, as llm-d's sidecar sends them.
  std::string_view request_id;
};

enum class ForwardOutcome {
  kDone,        // a response (or an error in its place) went to the client
  kRetry,       // nothing reached the client; another endpoint may answer
  kClientGone,  // the client hung up
  // This gateway is out of descriptors: nothing reached the client and no
  // replica is to blame; the client should get 503 with Retry-After.
  kOverloaded,
};

struct ForwardResult {
  ForwardOutcome outcome = ForwardOutcome::kRetry;
  int client_status = 0;    // the status the client got (0: none)
  int upstream_status = 0;  // the engine's (0: it never answered)
  std::string failure;      // why, when the outcome is kRetry
  Usage usage;              // what the engine reported
  // Of ForwardRequest::prefill, what is still counted in the endpoint's
  // pending_prefill (0 once the first token came).
  int64_t prefill_pending = 0;
};

// An exchange on the gateway's own behalf: the engine's answer, whole.
struct CallResult {
  ForwardOutcome outcome = ForwardOutcome::kRetry;  // kDone: an answer came (any status)
  int status = 0;
  std::string body;
  std::string failure;  // why not, otherwise
};

// One per worker, used on that worker's thread only.
// Idle keep-alive connections kept per replica and worker.
inline constexpr size_t kMaxIdlePerReplica = 64;

class Upstream {
 public:
  Upstream(boost::asio::io_context& io, UpstreamOptions options);
  ~Upstream();
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  // Sends the request to request.endpoint on a pooled connection (once more
  // on a fresh one if the replica had closed it) and relays the answer. The
  // client's hanging up, or the engine's silence past the idle timeout,
  // closes the upstream connection, which tells the engine to stop.
  boost::asio::awaitable<ForwardResult> forward(http::Exchange& ex, ForwardRequest request);
  // Sends the request to `target` on request.endpoint and returns the whole
  // answer instead of relaying it (the prefill leg of a disaggregated
  // request). The client's hanging up ends it (kClientGone). `limit`
  // (when set) replaces the idle timeout as the bound on the exchange, and
  // bounds connecting too.
  boost::asio::awaitable<CallResult> call(http::Exchange& ex, ForwardRequest request,
                                          std::string_view target,
                                          std::chrono::milliseconds limit = {});

 private:
  struct Call;  // one attempt's connection, parser and watchdog (upstream.cpp)
  boost::asio::awaitable<bool> send(Call& call, std::string_view target,
                                    const ForwardRequest& request, ForwardResult& result);
  // Reads the response head into call.head (past the buffered bytes it
  // used); why not, if it could not (empty: read).
  boost::asio::awaitable<std::string> read_head(Call& call);
  // Reads the rest of a response's body into `payload`; why not, if it
  // could not (empty: read).
  boost::asio::awaitable<std::string> read_body(Call& call, std::string& payload);
  boost::asio::awaitable<void> relay_body(http::Exchange& ex, Call& call, std::string content_type,
                                          ForwardRequest& request, ForwardResult& result);
  boost::asio::awaitable<void> relay_stream(http::Exchange& ex, Call& call,
                                            std::string content_type, ForwardRequest& request,
                                            ForwardResult& result);
  struct Conn;  // a connection, plain or TLS (upstream.cpp)
  // The most recently used idle connection to `key` that is still open, or null.
  std::unique_ptr<Conn> take_idle(const std::string& key);
  void keep_idle(const std::string& key, std::unique_ptr<Conn> conn);
  // A new connection to the endpoint, TLS set up for an https backend (or an
  // error saying why not).
  Result<std::unique_ptr<Conn>> new_conn(const Endpoint& endpoint);

  boost::asio::io_context& io_;
  const UpstreamOptions options_;
  // Idle keep-alive connections per endpoint key, most recently used last.
  std::unordered_map<std::string, std::vector<std::unique_ptr<Conn>>> idle_;
  // TLS client contexts by CA file ("": the system's CAs).
  std::unordered_map<std::string, std::unique_ptr<boost::asio::ssl::context>> tls_contexts_;
};

}  // namespace loadstar::gateway
