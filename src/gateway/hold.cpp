#include "gateway/hold.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "gateway/respond.h"
#include "gateway/selection.h"

namespace loadstar::gateway {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

bool HoldCounts::enter(const HoldRequest& request) {
  std::lock_guard lock(mu_);
  uint32_t& n = by_model_[request.model];
  if (n >= request.max_requests) {
    for (const auto& s : request.services) ++turned_away_[s];
    return false;
  }
  ++n;
  for (const auto& s : request.services) ++by_service_[s];
  return true;
}

void HoldCounts::leave(const HoldRequest& request, bool served) {
  std::lock_guard lock(mu_);
  --by_model_[request.model];
  for (const auto& s : request.services) {
    --by_service_[s];
    if (!served) ++turned_away_[s];
  }
}

std::vector<std::pair<std::string, uint64_t>> HoldCounts::turned_away() const {
  std::lock_guard lock(mu_);
  return {turned_away_.begin(), turned_away_.end()};
}

std::vector<std::pair<std::string, uint32_t>> HoldCounts::by_service() const {
  std::vector<std::pair<std::string, uint32_t>> out;
  std::lock_guard lock(mu_);
  for (const auto& [service, n] : by_service_)
    if (n > 0) out.emplace_back(service, n);
  return out;
}

HeldRequests::HeldRequests(asio::io_context& io, const std::shared_ptr<const RoutingTable>& table,
                           HoldCounts& counts, const DemandCallback& on_demand)
    : io_(io), table_(table), counts_(counts), on_demand_(on_demand) {}

void HeldRequests::note_demand(const HoldRequest& request) const {
  if (on_demand_)
    for (const auto& s : request.services) on_demand_(s);
}

void HeldRequests::wake() {
  for (asio::steady_timer* timer : timers_) timer->cancel();
}

asio::awaitable<HoldResult> HeldRequests::hold(http::Exchange& ex, HoldRequest request,
                                               ModelStats& stats) {
  ++stats.held;
  const HoldResult result = co_await wait(ex, request);
  if (result == HoldResult::kOverflow) {
    ++stats.hold_overflows;
    co_await send_error(ex, 503,
                        fmt::format("no ready replica for model `{}` and too many requests are "
                                    "waiting for one; retry later",
                                    request.model),
                        {}, {}, request.timeout_s / 4);
  } else if (result == HoldResult::kTimeout) {
    ++stats.hold_timeouts;
    co_await send_error(ex, 503,
                        fmt::format("no replica of model `{}` became ready within {}s; retry "
                                    "later",
                                    request.model, request.timeout_s));
  }
  co_return result;
}

asio::awaitable<HoldResult> HeldRequests::wait(http::Exchange& ex, const HoldRequest& request) {
  if (!counts_.enter(request)) co_return HoldResult::kOverflow;
  note_demand(request);
  asio::steady_timer timer(io_);
  auto gone = std::make_shared<bool>(false);
  ex.on_client_closed([gone, &timer] {
    *gone = true;
    timer.cancel();
  });
  timers_.push_back(&timer);
  const auto deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(request.timeout_s * 1000));
  HoldResult result = HoldResult::kTimeout;
  while (Clock::now() < deadline) {
    // Wake at least once a second to say again that a request is waiting:
    // a replica may take longer to start than the service's idle window,
    // and the autoscaler must not take it away meanwhile.
    timer.expires_at(std::min(deadline, Clock::now() + std::chrono::seconds(1)));
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (*gone) {
      result = HoldResult::kClientGone;
      break;
    }
    // Woken by a new table: anything to send to now?
    if (has_ready_backend(*table_, request.model)) {
      result = HoldResult::kReady;
      break;
    }
    note_demand(request);
  }
  ex.on_client_closed([] {});
  timers_.erase(std::find(timers_.begin(), timers_.end(), &timer));
  counts_.leave(request, result == HoldResult::kReady);
  co_return result;
}

}  // namespace loadstar::gateway
