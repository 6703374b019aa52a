// Flow control's queue: requests for a service whose replicas are all
// saturated wait here, across the gateway's workers, and leave in
// FlowQueue's order as replicas get room (a request there finished, a
// scrape or a new table shows room), instead of piling up blindly in one
// engine. Sheddable tenants' requests are refused rather than queued.
// With a TTFT SLO the queue serves first those that can still meet it
// (FlowQueue::set_serve_within), and a request still queued when its SLO
// passes is counted as a miss then (Endpoint::ttft_overdue, as
// FirstTokenDeadlines counts those sent), not when it leaves.
// Thread-safe: workers enter and notify from their own threads; a waiting
// request is woken on its own worker.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>

#include <boost/asio/awaitable.hpp>

#include "gateway/flow_queue.h"
#include "gateway/routing_table.h"
#include "http/server.h"

namespace loadstar::gateway {

class WaitingRoom {
 public:
  enum class Verdict { kGo, kShed, kFull, kEvicted, kTimeout, kClientGone };
  struct Entry {
    std::string service;
    int32_t priority = 0;
    std::string tenant;  // "" without tenants: one flow
    bool sheddable = false;
    int64_t arrived_ms = 0;            // steady-clock milliseconds
    std::optional<double> ttft_slo_s;  // the service's (autoscaling.slo)
  };
  struct Admission {
    Verdict verdict = Verdict::kGo;
    // It waited past its SLO and was counted overdue then: not to be
    // counted again (FirstTokenDeadlines::Entry::counted_overdue).
    bool counted_overdue = false;
  };

  WaitingRoom() = default;
  WaitingRoom(const WaitingRoom&) = delete;
  WaitingRoom& operator=(const WaitingRoom&) = delete;

  // Returns kGo at once when `endpoints` have room and nobody waits ahead,
  // else queues the request (or refuses it) and waits for its turn, the
  // queue timeout or the client's leaving. After kGo the caller holds a
  // reservation of one request's room: it must call dispatched(service)
  // once the request is counted in an endpoint's in_flight (or dropped).
  boost::asio::awaitable<Admission> enter(http::Exchange& ex, Entry entry, const FlowControl& flow,
                                          std::span<const std::shared_ptr<Endpoint>> endpoints);
  void dispatched(const std::string& service);
  // Lets waiting requests go where `table` shows room. Cheap when nobody
  // waits; call when a request to a replica ends, and periodically.
  void notify(const RoutingTable& table);

  // Requests waiting at `now_ms`, per service with any: all of them (the
  // load report's "queued"), and those already past their TTFT SLO
  // ("queued_overdue"), which miss it whenever they are served.
  struct Queued {
    int64_t requests = 0;
    int64_t overdue = 0;
  };
  std::map<std::string, Queued> queued(int64_t now_ms) const;
  // Requests that met a saturated service and were never sent, per service,
  // since the gateway started (a counter): shed, refused for a full queue,
  // evicted, timed out, or given up by the client while queued.
  std::map<std::string, uint64_t> turned_away() const;
  // Prometheus text: loadstar_gateway_queued_requests,
  // loadstar_gateway_queued_overdue_requests (at `now_ms`) and
  // loadstar_gateway_flow_control_total{service,outcome}.
  std::string metrics(int64_t now_ms) const;

 private:
  struct Waiter;
  struct Line {
    FlowQueue queue{0};
    std::unordered_map<uint64_t, std::shared_ptr<Waiter>> waiters;
    uint64_t reserved = 0;  // let go, not yet counted in an endpoint's in_flight
    std::multimap<int64_t, uint64_t> deadlines;  // SLO deadline -> waiter id
    std::map<std::string, uint64_t> outcomes;    // every one but dispatched turned a request away
    std::optional<double> ttft_slo_s;            // the service's, as its last request or table said
  };
  // Counts the waiters whose SLO passed by `now_ms` overdue, on the first
  // of `endpoints` (the controller sums a service's endpoints).
  void count_overdue_locked(Line& line, std::span<const std::shared_ptr<Endpoint>> endpoints,
                            int64_t now_ms);
  void release_locked(Line& line, const FlowControl& flow,
                      std::span<const std::shared_ptr<Endpoint>> endpoints, int64_t now_ms);

  mutable std::mutex mu_;
  std::map<std::string, Line> lines_;
  std::atomic<int64_t> waiting_{0};
  uint64_t next_id_ = 0;
};

}  // namespace loadstar::gateway
