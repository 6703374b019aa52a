#include "controller/load.h"

#include <algorithm>

#include <fmt/format.h>

namespace loadstar::controller {

void LoadRound::merge(LoadRound later) {
  for (auto& [name, load] : replicas)
    if (!later.replicas.count(name)) {
      load.in_flight = 0;
      load.prefill_tokens = 0;
      load.waiting.reset();
      load.kv_usage.reset();
    }
  for (auto& [name, next] : later.replicas) {
    ReplicaLoad& load = replicas[name];
    load.requests += next.requests;
    for (size_t b = 0; b < load.ttft.size(); ++b) load.ttft[b] += next.ttft[b];
    load.ttft_overdue += next.ttft_overdue;
    load.ttft_overdue_answered += next.ttft_overdue_answered;
    load.failures += next.failures;
    for (size_t b = 0; b < load.itl.size(); ++b) load.itl[b] += next.itl[b];
    load.in_flight = next.in_flight;
    load.prefill_tokens = next.prefill_tokens;
    load.waiting = next.waiting;
    load.kv_usage = next.kv_usage;
  }
  demand.merge(later.demand);
  held = std::move(later.held);  // current values
  queued = std::move(later.queued);
  queued_overdue = std::move(later.queued_overdue);
  for (const auto& [service, n] : later.turned_away) turned_away[service] += n;
  for (auto& [gateway, counters] : later.tenants) tenants[gateway] = std::move(counters);
}

namespace {
uint64_t increment(uint64_t now, uint64_t before) {
  return now >= before ? now - before : now;
}
}  // namespace

LoadRound LoadAggregator::round(
    const std::vector<std::pair<std::string, gateway::LoadReport>>& reports) {
  LoadRound out;
  for (auto& [name, g] : gateways_) ++g.missed;
  for (const auto& [gateway, report] : reports) {
    Gateway& g = gateways_[gateway];
    if (g.instance != report.instance) g = Gateway{report.instance};  // restarted
    g.missed = 0;
    for (const auto& [service, n] : report.held)
      if (n > 0) {
        out.demand.insert(service);
        out.held[service] += static_cast<uint64_t>(n);
      }
    out.demand.insert(report.wanted.begin(), report.wanted.end());
    for (const auto& [service, n] : report.turned_away) {
      uint64_t& seen = g.turned_away[service];
      if (const uint64_t more = increment(n, seen); more > 0) out.turned_away[service] += more;
      seen = n;
    }
    out.tenants[gateway] = {report.instance, report.tenants};
    for (const gateway::EndpointLoad& e : report.endpoints) {
      ReplicaLoad& load = out.replicas[e.replica];
      Seen& seen = g.replicas[e.replica];
      if (seen.address != e.address) seen = Seen{e.address};  // a new engine
      load.requests += increment(e.requests, seen.requests);
      seen.requests = e.requests;
      for (size_t b = 0; b < seen.ttft.size(); ++b) {
        load.ttft[b] += increment(e.ttft[b], seen.ttft[b]);
        seen.ttft[b] = e.ttft[b];
      }
      load.ttft_overdue += increment(e.ttft_overdue, seen.ttft_overdue);
      seen.ttft_overdue = e.ttft_overdue;
      load.ttft_overdue_answered += increment(e.ttft_overdue_answered, seen.ttft_overdue_answered);
      seen.ttft_overdue_answered = e.ttft_overdue_answered;
      load.failures += increment(e.failures, seen.failures);
      seen.failures = e.failures;
      for (size_t b = 0; b < seen.itl.size(); ++b) {
        load.itl[b] += increment(e.itl[b], seen.itl[b]);
        seen.itl[b] = e.itl[b];
      }
      load.in_flight += std::max<int64_t>(e.in_flight, 0);
      load.prefill_tokens += e.prefill_tokens;
      load.adapters.insert(e.adapters.begin(), e.adapters.end());
      // The engine's own numbers: any gateway's recent scrape will do; the
      // highest is the most cautious.
      if (e.metrics_age_s >= 0 && e.metrics_age_s < 5) {
        load.waiting = std::max(load.waiting.value_or(0), e.waiting);
        load.kv_usage = std::max(load.kv_usage.value_or(0), e.kv_usage);
      }
    }
    // Requests queued in the gateway for a saturated service wait as surely
    // as those in an engine's queue: shared among its replicas, they count
    // as waiting and in flight. With no replica they are demand.
    for (const auto& [service, n] : report.queued) {
      std::vector<ReplicaLoad*> mine;
      for (const gateway::EndpointLoad& e : report.endpoints)
        if (e.service == service) mine.push_back(&out.replicas[e.replica]);
      if (mine.empty()) {  // with no replica at that gateway, as good as held
        if (n > 0) {
          out.demand.insert(service);
          out.held[service] += static_cast<uint64_t>(n);
        }
        continue;
      }
      out.queued[service] += static_cast<uint64_t>(std::max<int64_t>(n, 0));
      if (auto late = report.queued_overdue.find(service); late != report.queued_overdue.end())
        out.queued_overdue[service] +=
            static_cast<uint64_t>(std::max<int64_t>(std::min(late->second, n), 0));
      const int64_t size = static_cast<int64_t>(mine.size());
      for (int64_t i = 0; i < size; ++i) {
        mine[i]->in_flight += n / size + (i < n % size ? 1 : 0);
        mine[i]->waiting = mine[i]->waiting.value_or(0) + static_cast<double>(n) / size;
      }
    }
  }
  // Forget the replicas an answering gateway no longer reports, and
  // gateways silent for long (gone, most likely).
  for (auto& [name, g] : gateways_)
    if (g.missed == 0)
      std::erase_if(g.replicas, [&](const auto& kv) { return !out.replicas.count(kv.first); });
  std::erase_if(gateways_, [](const auto& kv) { return kv.second.missed > kForgetAfterRounds; });
  return out;
}

LoadRound LoadAggregator::round(const std::vector<std::pair<std::string, std::string>>& reports,
                                std::vector<std::string>* errors) {
  std::vector<std::pair<std::string, gateway::LoadReport>> parsed;
  for (const auto& [gateway, text] : reports) {
    auto report = gateway::parse_load_report(text);
    if (!report.ok()) {
      if (errors) errors->push_back(fmt::format("gateway {}: {}", gateway, report.error().message));
      continue;
    }
    if (errors)
      for (const auto& problem : report->problems)
        errors->push_back(fmt::format("gateway {}: {}", gateway, problem));
    parsed.emplace_back(gateway, std::move(report->report));
  }
  return round(parsed);
}

std::optional<LoadRound> InProcessLoad::take() {
  LoadRound round = aggregator_.round(report_());
  std::lock_guard lock(mu_);
  round.demand.merge(demand_);
  demand_.clear();
  return round;
}

void InProcessLoad::on_demand(std::function<void()> wake) {
  std::lock_guard lock(mu_);
  wake_ = std::move(wake);
}

void InProcessLoad::note_demand(const std::string& service) {
  std::function<void()> wake;
  {
    std::lock_guard lock(mu_);
    demand_.insert(service);
    wake = wake_;
  }
  if (wake) wake();
}

}  // namespace loadstar::controller
