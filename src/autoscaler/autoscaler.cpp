#include "autoscaler/autoscaler.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace loadstar::autoscaler {

namespace {

uint32_t ceil_count(double x) {
  if (!(x > 0)) return 0;
  return static_cast<uint32_t>(std::min(std::ceil(x - 1e-9), 1e6));
}

// Of a sample's in-flight requests, those queued at the gateway past the
// SLO (never more than are queued, or in flight).
double overdue(const Sample& s) {
  return std::clamp(s.queued_overdue, 0.0, std::max(0.0, std::min(s.queued, s.in_flight)));
}

// A window's load samples projected along the arrival trend.
std::vector<LoadSample> projected(std::vector<LoadSample> loads, double trend) {
  for (LoadSample& l : loads) l.in_flight *= trend;
  return loads;
}

}  // namespace

std::optional<double> histogram_quantile(double q, const double* bounds, const uint64_t* counts,
                                         size_t buckets) {
  if (buckets < 2) return std::nullopt;  // no bounds: nothing to interpolate within
  uint64_t total = 0;
  for (size_t i = 0; i < buckets; ++i) total += counts[i];
  if (total == 0) return std::nullopt;
  const double rank = q * static_cast<double>(total);
  uint64_t below = 0;
  for (size_t i = 0; i < buckets; ++i) {
    if (static_cast<double>(below + counts[i]) >= rank && counts[i] > 0) {
      if (i + 1 == buckets) return bounds[buckets - 2];  // +Inf bucket
      const double lower = i == 0 ? 0 : bounds[i - 1];
      return lower + (bounds[i] - lower) * (rank - static_cast<double>(below)) /
                         static_cast<double>(counts[i]);
    }
    below += counts[i];
  }
  return bounds[buckets - 2];
}

Autoscaler::Autoscaler(Spec spec) : spec_(std::move(spec)) {
  if (spec_.slo_ttft_s) {
    SloCapacityOptions o;
    o.slo_s = *spec_.slo_ttft_s;
    o.attainment = spec_.slo_attainment;
    o.initial = spec_.in_flight_per_replica.value_or(o.initial);
    o.lead_time_s = spec_.lead_time_s;
    slo_.emplace(o);
    offered_.emplace(OfferedLoadOptions{.window_s = spec_.panic_window_s,
                                        .max_window_s = spec_.stable_window_s,
                                        .memory_s = 5 * spec_.stable_window_s});
  } else if (!spec_.waiting_per_replica && !spec_.in_flight_per_replica && !spec_.kv_cache_usage &&
             !spec_.ttft_p90_slo_s && !spec_.itl_p90_slo_s && !spec_.prefill_tokens_per_replica) {
    spec_.in_flight_per_replica = 8;
  }
}

void Autoscaler::observe(const Sample& s) {
  // The first sample starts the idle clock: a service that was just created
  // (or changed) gets a whole idle window before it may go to zero.
  if (!last_activity_ || s.requests_total != last_requests_ ||
      s.turned_away_total != last_turned_away_ || s.in_flight > 0 || s.held > 0)
    last_activity_ = s.now;
  // Arrivals, as the gateway met them: a request waiting there, or turned
  // away for want of room, has arrived as surely as one sent, and while the
  // replicas are saturated the sends keep their pace, not the arrivals'.
  const double arrived_before = arrived_total_;
  const double arrived_now =
      static_cast<double>(s.requests_total + s.turned_away_total) + s.held + s.queued;
  const bool restarted =
      s.requests_total < last_requests_ || s.turned_away_total < last_turned_away_;
  arrived_total_ = restarted ? arrived_now : std::max(arrived_total_, arrived_now);
  last_requests_ = s.requests_total;
  last_turned_away_ = s.turned_away_total;
  if (!first_request_ && (s.requests_total > 0 || s.in_flight > 0 || s.held > 0))
    first_request_ = s.now;
  const bool same_set = !samples_.empty() && samples_.back().ready == s.ready;
  if (!same_set) serving_since_ = s.now;
  if (slo_) {
    slo_->arrivals(s.now, static_cast<uint64_t>(arrived_total_), spec_.stable_window_s);
    // Settled: the serving set unchanged for twice the SLO. Sooner, the
    // answers counted (of requests that arrived since the change) are only
    // the fast ones: the slow ones are still coming.
    // At the engines: less the gateway's queue (shared out over replicas the
    // counts may not all cover, so never below none).
    offered_->observe(s.now, {.sent_total = s.requests_total,
                              .arrived_total = arrived_total_,
                              .in_flight = std::max(0.0, s.in_flight - s.queued),
                              .engine_queued = std::max(0.0, s.waiting - s.queued)});
    const std::optional<OfferedLoad::Reading> offered = offered_->reading();
    // In flight, less what waits at the gateway past the SLO: the load of
    // the requests that can still meet it.
    const double serving = s.in_flight - overdue(s);
    const bool settled = same_set && s.now - serving_since_ >= 2 * *spec_.slo_ttft_s;
    slo_->learn(s.now, spec_.ttft_bounds, s.ttft_counts, {s.ttft_overdue, s.ttft_overdue_answered},
                serving, s.ready, settled);
    // The load sample, with the requests that arrived since the last one.
    const double arrived = samples_.empty() ? 0 : std::max(0.0, arrived_total_ - arrived_before);
    double load = serving;
    offered_now_.reset();
    if ((s.held > 0 || s.ready == 0) && offered && offered->load > load) {
      load = offered->load;
      offered_now_ = offered;
    }
    held_loads_.emplace_back(s.now, LoadSample{load, arrived});
    while (held_loads_.front().first < s.now - kHoldWindows * spec_.stable_window_s)
      held_loads_.pop_front();
  }
  samples_.push_back(s);
  while (samples_.size() > 1 && samples_.front().now < s.now - spec_.stable_window_s)
    samples_.pop_front();
}

Autoscaler::Window Autoscaler::average(double now, double window) const {
  Window w;
  // Latency answers count only on the current serving set (see the header).
  struct Histogram {
    const std::vector<double>& bounds;
    std::vector<uint64_t> Sample::*counts;
    Latency& out;
    uint32_t min_answers;
    std::vector<uint64_t> sum = std::vector<uint64_t>(bounds.size() + 1, 0);
  };
  Histogram latencies[] = {
      {spec_.ttft_bounds, &Sample::ttft_counts, w.ttft, spec_.ttft_min_answers},
      {spec_.itl_bounds, &Sample::itl_counts, w.itl, spec_.itl_min_answers}};
  for (auto it = samples_.rbegin(); it != samples_.rend() && it->now >= now - window - 1e-9; ++it) {
    w.waiting += it->waiting;
    w.in_flight += it->in_flight;
    if (slo_) w.overdue += overdue(*it);
    w.adapters += it->adapters;
    w.prefill_tokens += it->prefill_tokens;
    w.kv_per_replica += it->kv_cache_usage * it->ready;
    w.ready += it->ready;
    for (Histogram& h : latencies) {
      const std::vector<uint64_t>& counts = (*it).*h.counts;
      if (it->now >= serving_since_ && h.sum.size() > 1 && counts.size() == h.sum.size())
        for (size_t b = 0; b < h.sum.size(); ++b) h.sum[b] += counts[b], h.out.answers += counts[b];
    }
    ++w.samples;
  }
  for (auto it = held_loads_.rbegin(); it != held_loads_.rend() && it->first >= now - window - 1e-9;
       ++it)
    w.loads.push_back(it->second);
  if (w.samples == 0 && !samples_.empty()) {  // nothing that recent: the last one
    const Sample& s = samples_.back();
    Window last;
    last.waiting = s.waiting;
    last.in_flight = s.in_flight;
    if (slo_) last.overdue = overdue(s);
    last.kv_per_replica = s.kv_cache_usage * s.ready;
    last.ready = static_cast<double>(s.ready);
    last.adapters = s.adapters;
    last.prefill_tokens = s.prefill_tokens;
    last.samples = 1;
    return last;
  }
  if (w.samples > 0) {
    w.waiting /= w.samples;
    w.in_flight /= w.samples;
    w.overdue /= w.samples;
    w.adapters /= w.samples;
    w.prefill_tokens /= w.samples;
    w.kv_per_replica /= w.samples;
    w.ready /= w.samples;
  }
  for (Histogram& h : latencies)
    if (h.out.answers >= std::max<uint32_t>(1, h.min_answers))
      h.out.p90 = histogram_quantile(0.9, h.bounds.data(), h.sum.data(), h.sum.size());
  return w;
}

uint32_t Autoscaler::recommend(const Window& w, uint32_t current, double trend, std::string& signal,
                               double& value, std::string& reason) const {
  uint32_t best = 0;
  auto vote = [&](uint32_t n, const char* name, double v, std::string why) {
    if (n > best || signal.empty()) {
      best = std::max(best, n);
      signal = name;
      value = v;
      reason = std::move(why);
    }
  };
  // Replicas for `total` at `target` each; within the tolerance of the
  // current count, the current count.
  auto count = [&](double total, double target) {
    const double want = total / target;
    if (current > 0 && std::abs(want / current - 1) <= spec_.tolerance) return current;
    return ceil_count(want);
  };
  if (slo_) {
    const std::vector<LoadSample> loads = projected(w.loads, trend);
    const uint32_t most = std::max<uint32_t>(1, spec_.max_replicas);
    SloCapacity::Count c = slo_->replicas_for(loads, most);
    // The stable window's count also covers the load of the last few
    // windows (its bursts come back), so a lull does not shed the replicas
    // the next burst needs.
    if (w.stable) {
      std::vector<LoadSample> held;
      held.reserve(held_loads_.size());
      for (const auto& [t, l] : held_loads_) held.push_back(l);
      const SloCapacity::Count longer = slo_->replicas_for(held, most);
      if (longer.replicas > c.replicas) c = longer;
    }
    const std::string load =
        offered_now_
            ? fmt::format(
                  "requests held: offered load {:.1f} ({:.2f} arrivals/s x {:.1f}s "
                  "a request)",
                  offered_now_->load, offered_now_->arrival_rate, offered_now_->run_time_s)
            : fmt::format("in-flight requests {:.1f}{}{}", (w.in_flight - w.overdue) * trend,
                          trend != 1 ? fmt::format(" (x{:.2f} arrival trend)", trend) : "",
                          w.overdue > 0 ? fmt::format(" (and {:.1f} queued past the SLO, left out)",
                                                      w.overdue)
                                        : "");
    vote(c.replicas, "slo", offered_now_ ? offered_now_->load : (w.in_flight - w.overdue) * trend,
         c.learned ? fmt::format("{}: {} replica(s) expect {:.2f}% of first tokens over {:g}s "
                                 "(allowed {:.2f}%, {:.2f}% kept for misses not foreseen; "
                                 "learned from {} answers) -> {}",
                                 load, c.replicas, c.expected_misses * 100, *spec_.slo_ttft_s,
                                 c.allowed * 100, c.margin * 100, slo_->answers(), c.replicas)
                   : fmt::format("{} at {:g}/replica until the miss curve is learned -> {}", load,
                                 spec_.in_flight_per_replica.value_or(4), c.replicas));
  } else if (spec_.in_flight_per_replica) {
    const uint32_t n = count(w.in_flight, *spec_.in_flight_per_replica);
    vote(n, "inFlight", w.in_flight,
         fmt::format("in-flight requests {:.1f} at target {:g}/replica -> {}", w.in_flight,
                     *spec_.in_flight_per_replica, n));
  }
  if (spec_.waiting_per_replica) {
    const uint32_t n = count(w.waiting, *spec_.waiting_per_replica);
    vote(n, "waiting", w.waiting,
         fmt::format("waiting requests {:.1f} at target {:g}/replica -> {}", w.waiting,
                     *spec_.waiting_per_replica, n));
  }
  if (spec_.adapters_per_replica && w.adapters > 0) {
    const uint32_t n = count(w.adapters, *spec_.adapters_per_replica);
    vote(n, "loraAdapters", w.adapters,
         fmt::format("LoRA adapters in use {:.1f} at {:g}/replica -> {}", w.adapters,
                     *spec_.adapters_per_replica, n));
  }
  if (spec_.kv_cache_usage) {
    const uint32_t n = count(w.kv_per_replica, *spec_.kv_cache_usage);
    const double mean = w.ready > 0 ? w.kv_per_replica / w.ready : 0;
    vote(n, "kvCache", mean,
         fmt::format("KV-cache use {:.0f}% at target {:.0f}% -> {}", mean * 100,
                     *spec_.kv_cache_usage * 100, n));
  }
  if (spec_.prefill_tokens_per_replica) {
    const uint32_t n = count(w.prefill_tokens, *spec_.prefill_tokens_per_replica);
    vote(n, "prefillTokens", w.prefill_tokens,
         fmt::format("queued prefill tokens {:.0f} at target {:g}/replica -> {}", w.prefill_tokens,
                     *spec_.prefill_tokens_per_replica, n));
  }
  // A latency SLO (TTFT, ITL). Within the tolerance over its target is on
  // target (as the other signals' counts are): a p90 brushing the target
  // does not buy a replica.
  auto vote_latency = [&](const char* name, const char* label, const std::optional<double>& slo,
                          const Latency& l, uint32_t min_answers, const char* answers) {
    if (!slo) return;
    if (l.p90 && *l.p90 > *slo * (1 + spec_.tolerance)) {
      // Over the SLO: one more replica than are ready per doubling of the
      // p90 over it (at least one). While replicas asked for earlier are
      // still starting, wait for them: latency lags, and adding again would
      // run away.
      const uint32_t ready = std::max<uint32_t>(1, samples_.back().ready);
      uint32_t n = ready + std::max<uint32_t>(1, ceil_count(std::log2(*l.p90 / *slo)));
      if (current > ready) n = std::min(n, current);
      vote(n, name, *l.p90,
           fmt::format("{} p90 {:.{}f}s over the {:g}s SLO on {} ready -> {}", label, *l.p90,
                       *l.p90 < 0.1 ? 3 : 2, *slo, ready, n));
    } else if (!l.p90 && l.answers > 0) {
      // Answers on the current serving set, too few to judge it: hold it.
      const uint32_t ready = samples_.back().ready;
      vote(ready, name, static_cast<double>(l.answers),
           fmt::format("{} {} on {} ready, fewer than {} to judge {}: holding {}", l.answers,
                       answers, ready, min_answers, label, ready));
    }
  };
  vote_latency("ttft", "TTFT", spec_.ttft_p90_slo_s, w.ttft, spec_.ttft_min_answers,
               "first token(s)");
  vote_latency("itl", "ITL", spec_.itl_p90_slo_s, w.itl, spec_.itl_min_answers,
               "inter-token gap(s)");
  if (signal.empty()) {
    signal = "none";
    reason = "no target asks for a replica -> 0";
  }
  return best;
}

Decision Autoscaler::decide(double now, uint32_t current) {
  Decision d;
  if (!decided_) {
    decided_ = true;
    recommendations_.emplace_back(now, current);
  }
  if (samples_.empty()) {
    d.desired = std::clamp(current, spec_.min_replicas, spec_.max_replicas);
    d.stage_ahead = d.desired;
    d.signal = "bounds";
    d.reason = "no load observed yet";
    return d;
  }
  Decision stable, panic;
  // The arrival trend projects the stable window's load; the panic window
  // is recent enough.
  Window stable_window = average(now, spec_.stable_window_s);
  stable_window.stable = true;
  stable.desired = recommend(stable_window, current, slo_ ? slo_->trend() : 1, stable.signal,
                             stable.value, stable.reason);
  panic.desired = recommend(average(now, spec_.panic_window_s), current, 1, panic.signal,
                            panic.value, panic.reason);
  if (panic.desired > current &&
      panic.desired >= spec_.panic_threshold * std::max<uint32_t>(current, 1))
    panic_until_ = now + spec_.stable_window_s;
  d.panic = panic_until_ && now < *panic_until_;
  if (d.panic && panic.desired >= stable.desired) {
    d = panic;
    d.panic = true;
    d.desired = std::max(d.desired, current);  // no scale-down in panic
    d.reason = fmt::format("panic ({:g}s window): {}", spec_.panic_window_s, d.reason);
  } else {
    const bool in_panic = d.panic;
    d = stable;
    d.panic = in_panic;
    if (in_panic) d.desired = std::max(d.desired, current);
    d.reason = fmt::format("{} ({:g}s average)", d.reason, spec_.stable_window_s);
  }
  // Scale-up rate.
  const uint32_t cap =
      std::max(current + 1, ceil_count(std::max<uint32_t>(current, 1) * spec_.max_scale_up_rate));
  if (d.desired > cap) {
    d.desired = cap;
    d.reason += fmt::format("; capped at {} by the scale-up rate", cap);
  }
  // Scale-down stabilization: the highest recommendation of the window.
  recommendations_.emplace_back(now, d.desired);
  while (!recommendations_.empty() &&
         recommendations_.front().first < now - spec_.scale_down_stabilization_s)
    recommendations_.pop_front();
  if (d.desired < current) {
    uint32_t highest = d.desired;
    for (const auto& [t, n] : recommendations_) highest = std::max(highest, n);
    if (highest > d.desired) {
      d.desired = std::min(highest, current);
      d.reason += fmt::format("; holding {} for scale-down stabilization ({:g}s)", d.desired,
                              spec_.scale_down_stabilization_s);
    }
  }
  // With an SLO the curve is learned where the service has been, so the
  // count comes down in steps (a tenth of it, at least one) each seen for a
  // quarter of the stable window before the next; and not at all before
  // the curve is learned, in the first kHoldWindows stable windows of
  // requests.
  if (slo_ && d.desired < current && d.desired > 0) {
    const uint32_t step = std::max<uint32_t>(1, current / 10);
    const uint32_t floor = current > step ? current - step : 0;
    // Before the curve is learned the count is a guess (`initial` per
    // replica) on the service's first requests: not evidence enough to shed
    // the replicas it was started with, for the first few stable windows.
    if (!slo_->miss_share(1) && first_request_ &&
        now - *first_request_ < kHoldWindows * spec_.stable_window_s) {
      d.desired = current;
      d.reason += "; holding until the miss curve is learned";
    } else if (last_step_down_ && now - *last_step_down_ < spec_.stable_window_s / 4) {
      d.desired = current;
      d.reason += "; the last step down is still being seen";
    } else {
      if (d.desired < floor) {
        d.desired = floor;
        d.reason += fmt::format("; down by {} at a time", step);
      }
      last_step_down_ = now;
    }
  }
  // Zero and back.
  const Sample& last = samples_.back();
  if (last.held > 0 && d.desired == 0) {
    d.desired = 1;
    d.signal = "held";
    d.value = last.held;
    d.reason = fmt::format("{} request(s) held at the gateway -> 1", last.held);
  }
  const bool idle = !last_activity_ || now - *last_activity_ >= spec_.idle_window_s;
  if (d.desired == 0 && !idle && current > 0) {
    d.desired = 1;
    d.signal = "idle";
    d.value = last_activity_ ? now - *last_activity_ : 0;
    d.reason = fmt::format("last request {:.0f}s ago; scale to zero after {:g}s idle", d.value,
                           spec_.idle_window_s);
  } else if (d.desired == 0 && idle && spec_.min_replicas == 0 && current > 0) {
    d.signal = "idle";
    d.value = last_activity_ ? now - *last_activity_ : spec_.idle_window_s;
    d.reason = fmt::format("no request for {:.0f}s -> 0", d.value);
  }
  const uint32_t floor = spec_.min_replicas;
  if (d.desired < floor || d.desired > spec_.max_replicas) {
    const uint32_t clamped = std::clamp(d.desired, floor, spec_.max_replicas);
    d.reason += fmt::format("; {} by {}Replicas", clamped, d.desired < floor ? "min" : "max");
    d.desired = clamped;
  }
  // What the count expects of the stable window's load, which the answers
  // from now on are measured against (SloCapacity::expect); never more than
  // the allowed share: a count held below what the curve asks for (by
  // maxReplicas, the scale-up rate) expects misses from the curve's guess
  // beyond the levels it has seen, which is pessimistic by design, and
  // fewer misses than that guess are no credit against the next burst.
  if (slo_ && slo_->miss_share(1)) {
    if (last.ready >= d.desired) caught_up_ = true;
    if (caught_up_ && d.desired > 0) {
      const double expected =
          slo_->expected(projected(stable_window.loads, slo_->trend()), d.desired);
      slo_->expect(std::min(expected, slo_->allowed()));
    }
  }
  // Staging ahead of need on a rising trend.
  d.stage_ahead = d.desired;
  if (panic.desired > stable.desired)
    d.stage_ahead = std::min(spec_.max_replicas, std::max(d.desired, panic.desired) + 1);
  return d;
}

}  // namespace loadstar::autoscaler
