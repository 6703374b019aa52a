// The gateway's insides, shared by its files (private to src/gateway):
// gateway.cpp serves the front door, its internal endpoints and the
// lifecycle; route.cpp takes a request to an engine (backend, endpoint,
// prefill leg, attempts and retries, flow control).
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "common/strings.h"
#include "gateway/adapter_loader.h"
#include "gateway/disaggregation.h"
#include "gateway/first_token_deadlines.h"
#include "gateway/gateway.h"
#include "gateway/hold.h"
#include "gateway/kv_events_feed.h"
#include "gateway/load_report.h"
#include "gateway/peer_load.h"
#include "gateway/published_tables.h"
#include "gateway/request_peek.h"
#include "gateway/scraper.h"
#include "gateway/selection.h"
#include "gateway/shared_limits.h"
#include "gateway/shared_prefixes.h"
#include "gateway/stats.h"
#include "gateway/tenants.h"
#include "gateway/upstream.h"
#include "gateway/waiting_room.h"
#include "http/server.h"

namespace loadstar::gateway {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

inline int64_t steady_ms() {
  return steady_ms_of(Clock::now());
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
  // Each tenant's usage by model (counters), for the load report: written
  // by this worker at each request's end, read by load_report().
  std::mutex usage_mu;
  std::map<std::pair<std::string, std::string>, TenantLoad> usage;
  Upstream upstream;              // idle keep-alive connections per replica
  HeldRequests held;              // a new table wakes them
  FirstTokenDeadlines deadlines;  // this worker's requests awaiting a first token
  bool deadlines_swept = false;   // deadline_ticks runs (from the first watch on)
  EndpointChooser::Scratch picks;
  std::vector<Endpoint*> unsaturated;   // scratch of flow control's filter
  std::vector<Endpoint*> canary;        // scratch of a canary's split
  std::vector<Endpoint*> with_adapter;  // scratch of serving_adapter
  std::mt19937_64 rng{std::random_device{}()};
  std::thread thread;
};

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
  std::string instance;                       // names this gateway's requests in the shared store
  const std::string started = random_uuid();  // this start's id in load reports

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
  // The prompt's token ids as `endpoint`'s engine computes them (vLLM's
  // POST /tokenize, engine_tokens.h), to match the engines' KV events.
  // Empty when the ask failed (counted; the pick then goes by the gateway's
  // own prefix index) or there was nothing to ask; nullopt when the client
  // went away meanwhile.
  asio::awaitable<std::optional<std::vector<uint32_t>>> engine_tokens(
      Worker& w, http::Exchange& ex, Endpoint& endpoint, std::string_view model,
      std::string_view authorization, ModelStats& stats);
  // Flow control before an attempt at a service whose replicas may all be
  // saturated, for a request that arrived at `start`.
  struct Room {
    int code = 0;  // 0: go on; else the request was answered (503) or its client left (499)
    bool counted_overdue = false;  // it waited past its TTFT SLO (WaitingRoom::Admission)
  };
  asio::awaitable<Room> wait_for_room(Worker& w, http::Exchange& ex, const std::string& service,
                                      const TenantLimiter* tenant, Clock::time_point start);
  // Lets queued requests go where there is room, every 20 ms (worker 0).
  asio::awaitable<void> flow_ticks(Worker& w);
  // Counts the worker's requests past their TTFT SLO without a first
  // token, every 100 ms, on a worker from its first watched request on (a
  // gateway whose services have no SLO never runs it).
  asio::awaitable<void> deadline_ticks(Worker& w);
  // Outlier detection's bookkeeping after an attempt.
  void note_outcome(Worker& w, Endpoint& endpoint, bool failed);
  // What this gateway sees of each ready replica and of held requests, for
  // a controller in another process (Kubernetes mode): see gateway.h.
  LoadReport load_report();
  asio::awaitable<std::string> collect_metrics();
};

}  // namespace loadstar::gateway
