#include "gateway/waiting_room.h"

#include <chrono>
#include <cmath>

#include <fmt/format.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace loadstar::gateway {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {
int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}
}  // namespace

// One waiting request. Its timer belongs to its worker: others change its
// state under the room's lock, then post the timer's cancel to that worker.
struct WaitingRoom::Waiter {
  explicit Waiter(const asio::any_io_executor& executor) : timer(executor) {}
  enum class State { kWaiting, kGranted, kEvicted } state = State::kWaiting;
  int64_t arrived_ms = 0;
  bool overdue = false;  // counted a miss while it waited
  asio::steady_timer timer;
  static void wake(const std::shared_ptr<Waiter>& w) {
    asio::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
  }
};

asio::awaitable<WaitingRoom::Admission> WaitingRoom::enter(
    http::Exchange& ex, Entry entry, const FlowControl& flow,
    std::span<const std::shared_ptr<Endpoint>> endpoints) {
  auto executor = co_await asio::this_coro::executor;
  auto waiter = std::make_shared<Waiter>(executor);
  waiter->arrived_ms = entry.arrived_ms;
  uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    Line& line = lines_[entry.service];
    line.queue.set_capacity(flow.max_queued);
    line.queue.set_serve_within(serve_within_ms(entry.ttft_slo_s));
    line.ttft_slo_s = entry.ttft_slo_s;
    const uint64_t free = room(flow, endpoints, now_ms());
    if (line.queue.empty() && free > line.reserved) {
      ++line.reserved;
      co_return Admission{Verdict::kGo};
    }
    if (entry.sheddable) {
      ++line.outcomes["shed"];
      co_return Admission{Verdict::kShed};
    }
    id = ++next_id_;
    const FlowQueue::Pushed pushed =
        line.queue.push(id, entry.priority, entry.tenant, entry.arrived_ms);
    if (!pushed.queued) {
      ++line.outcomes["queue_full"];
      co_return Admission{Verdict::kFull};
    }
    if (pushed.evicted) {
      auto victim = line.waiters.extract(*pushed.evicted);
      victim.mapped()->state = Waiter::State::kEvicted;
      Waiter::wake(victim.mapped());
      ++line.outcomes["evicted"];
      --waiting_;
    }
    line.waiters.emplace(id, waiter);
    if (entry.ttft_slo_s)
      line.deadlines.emplace(entry.arrived_ms + std::llround(*entry.ttft_slo_s * 1000), id);
    ++waiting_;
  }

  auto gone = std::make_shared<bool>(false);
  ex.on_client_closed([gone, waiter] {
    *gone = true;
    waiter->timer.cancel();
  });
  const auto deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(flow.queue_timeout_s * 1000));
  Verdict verdict = Verdict::kTimeout;
  for (;;) {
    waiter->timer.expires_at(deadline);
    co_await waiter->timer.async_wait(asio::as_tuple(asio::use_awaitable));
    std::lock_guard lock(mu_);
    Line& line = lines_[entry.service];
    if (waiter->state == Waiter::State::kGranted) {
      verdict = Verdict::kGo;
      break;
    }
    if (waiter->state == Waiter::State::kEvicted) {
      verdict = Verdict::kEvicted;
      break;
    }
    if (*gone || Clock::now() >= deadline) {
      verdict = *gone ? Verdict::kClientGone : Verdict::kTimeout;
      line.queue.remove(id);
      line.waiters.erase(id);
      if (line.queue.empty()) line.deadlines.clear();  // nobody left to count
      --waiting_;
      ++line.outcomes[*gone ? "client_gone" : "timeout"];
      break;
    }
  }
  ex.on_client_closed([] {});
  std::lock_guard lock(mu_);  // a waiter's overdue is written under it
  co_return Admission{verdict, waiter->overdue};
}

void WaitingRoom::dispatched(const std::string& service) {
  std::lock_guard lock(mu_);
  if (auto it = lines_.find(service); it != lines_.end() && it->second.reserved > 0)
    --it->second.reserved;
}

void WaitingRoom::notify(const RoutingTable& table) {
  if (waiting_.load(std::memory_order_relaxed) == 0) return;
  const int64_t now = now_ms();
  std::lock_guard lock(mu_);
  for (auto& [service, line] : lines_) {
    if (line.queue.empty()) continue;
    auto it = table.services.find(service);
    if (it == table.services.end()) continue;
    line.ttft_slo_s = it->second.ttft_slo_s;  // changed since its last request came
    count_overdue_locked(line, it->second.ready, now);
    release_locked(line, it->second.flow, it->second.ready, now);
  }
}

void WaitingRoom::count_overdue_locked(Line& line,
                                       std::span<const std::shared_ptr<Endpoint>> endpoints,
                                       int64_t now) {
  while (!line.deadlines.empty() && line.deadlines.begin()->first <= now) {
    const uint64_t id = line.deadlines.begin()->second;
    line.deadlines.erase(line.deadlines.begin());
    auto it = line.waiters.find(id);
    if (it == line.waiters.end()) continue;  // it left before its deadline
    Waiter& waiter = *it->second;
    waiter.overdue = true;
    // As an answer's TTFT: only a request that arrived since the serving
    // set changed counts.
    if (!endpoints.empty() && endpoints.front()->counts_since_epoch(waiter.arrived_ms))
      endpoints.front()->ttft_overdue.fetch_add(1, std::memory_order_relaxed);
  }
}

void WaitingRoom::release_locked(Line& line, const FlowControl& flow,
                                 std::span<const std::shared_ptr<Endpoint>> endpoints,
                                 int64_t now) {
  const uint64_t free = room(flow, endpoints, now);
  while (!line.queue.empty() && free > line.reserved) {
    const uint64_t id = *line.queue.pop(now);
    auto waiter = line.waiters.extract(id);
    waiter.mapped()->state = Waiter::State::kGranted;
    Waiter::wake(waiter.mapped());
    ++line.reserved;
    ++line.outcomes["dispatched"];
    --waiting_;
  }
  if (line.queue.empty()) line.deadlines.clear();  // nobody left to count
}

std::map<std::string, uint64_t> WaitingRoom::turned_away() const {
  std::map<std::string, uint64_t> out;
  std::lock_guard lock(mu_);
  for (const auto& [service, line] : lines_) {
    uint64_t n = 0;
    for (const auto& [outcome, count] : line.outcomes)
      if (outcome != "dispatched") n += count;
    if (n > 0) out[service] = n;
  }
  return out;
}

namespace {
// How many of `line`'s queued requests are past their TTFT SLO at `now_ms`.
int64_t overdue(const FlowQueue& queue, const std::optional<double>& ttft_slo_s, int64_t now_ms) {
  if (!ttft_slo_s) return 0;
  return static_cast<int64_t>(queue.arrived_by(now_ms - std::llround(*ttft_slo_s * 1000)));
}
}  // namespace

std::map<std::string, WaitingRoom::Queued> WaitingRoom::queued(int64_t now_ms) const {
  std::map<std::string, Queued> out;
  std::lock_guard lock(mu_);
  for (const auto& [service, line] : lines_)
    if (!line.queue.empty())
      out[service] = {static_cast<int64_t>(line.queue.size()),
                      overdue(line.queue, line.ttft_slo_s, now_ms)};
  return out;
}

std::string WaitingRoom::metrics(int64_t now_ms) const {
  std::lock_guard lock(mu_);
  // The families even before any service saturated: dashboards and alerts
  // find them (no samples yet).
  std::string out =
      "# HELP loadstar_gateway_queued_requests Requests waiting in the gateway for a saturated "
      "service's replicas to have room.\n"
      "# TYPE loadstar_gateway_queued_requests gauge\n";
  for (const auto& [service, line] : lines_)
    out += fmt::format("loadstar_gateway_queued_requests{{service=\"{}\"}} {}\n", service,
                       line.queue.size());
  out +=
      "# HELP loadstar_gateway_queued_overdue_requests Of the queued requests, those already past "
      "their service's TTFT SLO: they miss it whenever they are served, and the autoscaler leaves "
      "them out of the load.\n"
      "# TYPE loadstar_gateway_queued_overdue_requests gauge\n";
  for (const auto& [service, line] : lines_)
    if (line.ttft_slo_s)
      out += fmt::format("loadstar_gateway_queued_overdue_requests{{service=\"{}\"}} {}\n", service,
                         overdue(line.queue, line.ttft_slo_s, now_ms));
  out +=
      "# HELP loadstar_gateway_flow_control_total Requests that met a saturated service, by "
      "outcome: dispatched (left the queue for a replica), shed (sheddable tenant), queue_full, "
      "evicted (for a higher priority), timeout, client_gone.\n"
      "# TYPE loadstar_gateway_flow_control_total counter\n";
  for (const auto& [service, line] : lines_)
    for (const auto& [outcome, n] : line.outcomes)
      out +=
          fmt::format("loadstar_gateway_flow_control_total{{service=\"{}\",outcome=\"{}\"}} {}\n",
                      service, outcome, n);
  return out;
}

}  // namespace loadstar::gateway
