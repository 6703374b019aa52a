// Holding requests while their model has no ready replica but one may come
// (a service scaled to zero, or starting): a request waits, within its
// service's hold limits, until a routing table has somewhere to send it.
// Holding tells the controller (on_demand), once at once and again every
// second, so that a replica is started and not taken away meanwhile.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "gateway/routing_table.h"
#include "gateway/stats.h"
#include "http/server.h"

namespace boost::asio {
class io_context;
}

namespace loadstar::gateway {

enum class HoldResult { kReady, kTimeout, kOverflow, kClientGone };

struct HoldRequest {
  std::string model;
  std::vector<std::string> services;  // the services it waits for
  uint32_t max_requests = 256;        // held at once for the model; beyond: kOverflow
  double timeout_s = 120;
};

// How many requests are held: per model (against its limit) and per service
// they wait for (the load report's demand), and how many of them left
// without a replica. Shared by all workers; its lock is taken only when a
// request starts or stops waiting, and by the report.
class HoldCounts {
 public:
  // Counts the request in, unless its model already has max_requests held
  // (then it is turned away).
  bool enter(const HoldRequest& request);
  // `served`: a replica became ready for it; otherwise it is turned away
  // (timed out, or the client left).
  void leave(const HoldRequest& request, bool served);
  // The services requests wait for now, with how many.
  std::vector<std::pair<std::string, uint32_t>> by_service() const;
  // Per service, the requests that waited (or would have) for it and left
  // without a replica, since the gateway started (a counter).
  std::vector<std::pair<std::string, uint64_t>> turned_away() const;

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, uint32_t> by_model_;
  std::unordered_map<std::string, uint32_t> by_service_;
  std::unordered_map<std::string, uint64_t> turned_away_;
};

// One worker's held requests. Each sleeps on a timer that wake() cancels when
// the worker gets a new routing table, so that it looks again. Used on that
// worker's thread only.
class HeldRequests {
 public:
  using DemandCallback = std::function<void(const std::string& service)>;
  // `table`: the worker's current table, read at every wake. `on_demand`
  // (may be empty) must outlive this and must not block.
  HeldRequests(boost::asio::io_context& io, const std::shared_ptr<const RoutingTable>& table,
               HoldCounts& counts, const DemandCallback& on_demand);
  HeldRequests(const HeldRequests&) = delete;
  HeldRequests& operator=(const HeldRequests&) = delete;

  // Waits until the table has somewhere to send request.model (or no longer
  // knows it), the client hangs up, or request.timeout_s passes. Counts the
  // request in `stats` (held, and why it gave up) and answers 503 when the
  // hold queue is full or the wait timed out.
  boost::asio::awaitable<HoldResult> hold(http::Exchange& ex, HoldRequest request,
                                          ModelStats& stats);
  void wake();

 private:
  boost::asio::awaitable<HoldResult> wait(http::Exchange& ex, const HoldRequest& request);
  void note_demand(const HoldRequest& request) const;

  boost::asio::io_context& io_;
  const std::shared_ptr<const RoutingTable>& table_;
  HoldCounts& counts_;
  const DemandCallback& on_demand_;
  std::vector<boost::asio::steady_timer*> timers_;
};

}  // namespace loadstar::gateway
