#include "controller/traffic.h"

#include <algorithm>

#include "autoscaler/autoscaler.h"

namespace loadstar::controller {

void Traffic::add(const std::map<std::string, TrafficSample>& round, Clock::time_point now) {
  if (!first_) first_ = now;
  for (const auto& [service, sample] : round) services_[service].push_back({now, sample});
  for (auto& [service, entries] : services_)
    while (!entries.empty() && seconds_between(entries.front().at, now) > window_s_)
      entries.pop_front();
}

TrafficSummary Traffic::summary(const std::string& service, Clock::time_point now) const {
  TrafficSummary out;
  if (!first_) return out;
  out.window_s = std::clamp(seconds_between(*first_, now), 0.0, window_s_);
  auto it = services_.find(service);
  if (it == services_.end() || out.window_s <= 0) return out;
  TrafficSample total;
  for (const Entry& e : it->second) {
    if (seconds_between(e.at, now) > window_s_) continue;
    total.requests += e.sample.requests;
    total.failures += e.sample.failures;
    for (size_t b = 0; b < total.ttft.size(); ++b) total.ttft[b] += e.sample.ttft[b];
    for (size_t b = 0; b < total.itl.size(); ++b) total.itl[b] += e.sample.itl[b];
  }
  out.requests_per_s = static_cast<double>(total.requests) / out.window_s;
  out.failures_per_s = static_cast<double>(total.failures) / out.window_s;
  using E = gateway::Endpoint;
  auto ttft = [&](double q) {
    return autoscaler::histogram_quantile(q, E::kTtftBounds, total.ttft.data(), total.ttft.size());
  };
  auto itl = [&](double q) {
    return autoscaler::histogram_quantile(q, E::kItlBounds, total.itl.data(), total.itl.size());
  };
  out.ttft_p50_s = ttft(0.5);
  out.ttft_p90_s = ttft(0.9);
  out.ttft_p99_s = ttft(0.99);
  out.itl_p50_s = itl(0.5);
  out.itl_p90_s = itl(0.9);
  return out;
}

}  // namespace loadstar::controller
