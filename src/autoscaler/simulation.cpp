#include "autoscaler/simulation.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>

#include "gateway/flow_queue.h"

namespace loadstar::autoscaler {

namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

double percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<ptrdiff_t>(k), v.end());
  return v[k];
}

enum class State { kStarting, kReady, kDraining };

struct Replica {
  uint32_t index = 0;
  State state = State::kStarting;
  double created = 0, ready_at = 0, drain_started = 0;
  std::unique_ptr<engine::EngineCore> core;
  std::optional<double> busy_until;  // a step is running; its outputs come then
  engine::StepResult step;
  uint32_t in_flight = 0;  // sent by the gateway, not finished
};

// A prompt no other request shares (the Azure trace's prompts share nothing).
std::vector<tokenizer::TokenId> prompt_for(uint64_t id, uint32_t tokens) {
  std::vector<tokenizer::TokenId> prompt(tokens);
  uint64_t x = id * 0x9e3779b97f4a7c15ull + 1;
  for (auto& t : prompt) {
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    t = tokenizer::kFirstWord +
        static_cast<tokenizer::TokenId>((x * 0x2545f4914f6cdd1dull >> 33) %
                                        (tokenizer::kVocabSize - tokenizer::kFirstWord));
  }
  return prompt;
}

}  // namespace

Result<std::vector<TraceRequest>> parse_azure_trace(std::string_view csv,
                                                    const std::string& source) {
  std::vector<TraceRequest> out;
  std::optional<double> first;
  size_t line_no = 0;
  bool header_seen = false;
  while (!csv.empty()) {
    const size_t end = csv.find('\n');
    std::string line(csv.substr(0, end));
    csv.remove_prefix(end == std::string_view::npos ? csv.size() : end + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);  // a UTF-8 BOM
    if (line.empty()) continue;
    if (!header_seen) {
      header_seen = true;
      if (!line.starts_with("TIMESTAMP"))
        return make_error(ErrorCode::kInvalidArgument,
                          "{}:{}: expected the header TIMESTAMP,ContextTokens,GeneratedTokens",
                          source, line_no);
      continue;
    }
    int y = 0;
    unsigned mo = 0, d = 0, hh = 0, mm = 0;
    double ss = 0;
    long long ctx = 0, gen = 0;
    char tail = 0;
    if (std::sscanf(line.c_str(), "%d-%u-%u %u:%u:%lf,%lld,%lld%c", &y, &mo, &d, &hh, &mm, &ss,
                    &ctx, &gen, &tail) != 8 ||
        mo < 1 || mo > 12 || d < 1 || d > 31 || hh > 23 || mm > 59 || !(ss >= 0 && ss < 61) ||
        ctx < 0 || gen < 0 || ctx > (1 << 24) || gen > (1 << 24))
      return make_error(ErrorCode::kInvalidArgument,
                        "{}:{}: expected 'YYYY-MM-DD HH:MM:SS.fraction,ContextTokens,"
                        "GeneratedTokens' with token counts from 0 to 16777216",
                        source, line_no);
    const double at =
        static_cast<double>(days_from_civil(y, mo, d)) * 86400 + hh * 3600.0 + mm * 60.0 + ss;
    if (!first) first = at;
    out.push_back({at - *first, std::max<uint32_t>(1, static_cast<uint32_t>(ctx)),
                   std::max<uint32_t>(1, static_cast<uint32_t>(gen))});
  }
  if (out.empty()) return make_error(ErrorCode::kInvalidArgument, "{}: no requests", source);
  const double origin = std::min_element(out.begin(), out.end(), [](auto& a, auto& b) {
                          return a.at_s < b.at_s;
                        })->at_s;
  for (auto& r : out) r.at_s -= origin;
  std::stable_sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.at_s < b.at_s; });
  return out;
}

uint32_t Schedule::at(double t) const {
  if (counts.empty()) return 0;
  const double i = std::floor(t / step_s);
  return i <= 0 ? counts.front() : counts[std::min(counts.size() - 1, static_cast<size_t>(i))];
}

Result<SimReport> simulate(const std::vector<TraceRequest>& trace, const SimOptions& o) {
  if (!(o.time_scale > 0) || !(o.period_s > 0) || !(o.cold_start_s >= 0))
    return make_error(ErrorCode::kInvalidArgument,
                      "time scale and period must be positive, the cold start not negative");
  if (Status s = o.engine.validate(); !s.ok()) return s.error();
  const double scale = o.time_scale;
  // The spec in model seconds.
  std::optional<Autoscaler> autoscaler;
  if (o.autoscaling) {
    Spec spec = *o.autoscaling;
    spec.stable_window_s *= scale;
    spec.panic_window_s *= scale;
    spec.scale_down_stabilization_s *= scale;
    spec.idle_window_s *= scale;
    if (spec.ttft_p90_slo_s) *spec.ttft_p90_slo_s *= scale;
    if (spec.slo_ttft_s) *spec.slo_ttft_s *= scale;
    spec.lead_time_s = o.cold_start_s * scale;  // the modelled start
    for (double& b : spec.ttft_bounds) b *= scale;
    autoscaler.emplace(std::move(spec));
  }
  const std::vector<double>& bounds =
      autoscaler ? autoscaler->spec().ttft_bounds : std::vector<double>{};
  SimReport report;
  report.requests = trace.size();
  std::vector<std::unique_ptr<Replica>> replicas;
  double gpu_seconds = 0;
  auto create = [&](double now, bool ready) {
    uint32_t index = 0;
    while (std::any_of(replicas.begin(), replicas.end(),
                       [&](const auto& r) { return r->index == index; }))
      ++index;
    auto r = std::make_unique<Replica>();
    r->index = index;
    r->created = now;
    r->ready_at = ready ? now : now + o.cold_start_s * scale;
    r->state = ready ? State::kReady : State::kStarting;
    r->core = std::make_unique<engine::EngineCore>(o.engine);
    replicas.push_back(std::move(r));
  };
  for (uint32_t i = 0; i < o.replicas; ++i) create(0, true);

  struct Live {
    size_t trace_index;
    Replica* replica;
  };
  std::unordered_map<engine::RequestId, Live> live;
  std::deque<size_t> held;
  std::vector<double> ttfts;
  ttfts.reserve(trace.size());
  std::vector<uint64_t> ttft_counts(bounds.size() + 1, 0);  // since the last sample
  // As the gateway (Endpoint::ttft_epoch_ms): only requests that arrived
  // since the set of ready replicas last changed count toward TTFT.
  double ttft_epoch = 0;
  std::vector<uint32_t> ready_set;
  // As the gateway with an SLO (FirstTokenDeadlines): a request without a
  // first token at its SLO counts as a miss then; its answer, later, is
  // marked as counted.
  const double deadline_s = autoscaler && autoscaler->spec().slo_ttft_s
                                ? *autoscaler->spec().slo_ttft_s
                                : std::numeric_limits<double>::infinity();
  std::vector<uint8_t> answered(trace.size()), overdue(trace.size());
  size_t due_next = 0;  // arrivals in order: the next one whose deadline is to come
  uint64_t ttft_overdue = 0, ttft_overdue_answered = 0;
  uint64_t met = 0, sent = 0, turn = 0;
  size_t next = 0;
  double next_pass = 0, now = 0, last_answer = 0;
  const double give_up = (trace.empty() ? 0 : trace.back().at_s) + 86400;
  // The gateway's flow-control queue, in model milliseconds; request k is id k + 1.
  const uint32_t limit = o.max_in_flight_per_replica;
  gateway::FlowQueue queue(o.max_queued);
  queue.set_serve_within(gateway::serve_within_ms(o.queue_slo_s));  // model milliseconds
  std::deque<std::pair<double, size_t>> queued_at;  // entered the queue, oldest first
  std::vector<uint8_t> queued(trace.size());
  auto ms = [](double t) { return static_cast<int64_t>(std::llround(t * 1000)); };

  // The ready replica with the fewest in flight (ties go round-robin), or
  // none.
  auto pick = [&]() -> Replica* {
    Replica* best = nullptr;
    for (size_t i = 0; i < replicas.size(); ++i) {
      Replica* r = replicas[(i + turn) % replicas.size()].get();
      if (r->state == State::kReady && (!best || r->in_flight < best->in_flight)) best = r;
    }
    return best;
  };
  auto dispatch = [&](size_t k, Replica* best) {
    ++turn;
    const TraceRequest& t = trace[k];
    engine::NewRequest req;
    req.id = k + 1;
    req.prompt = prompt_for(req.id, t.input_tokens);
    req.sampling.max_tokens = t.output_tokens;
    req.sampling.ignore_eos = true;
    if (!best->core->add_request(std::move(req), now).ok()) {
      ++report.rejected;
      return;
    }
    ++sent;
    ++best->in_flight;
    live[k + 1] = {k, best};
  };
  auto send = [&](size_t k) {
    Replica* best = pick();
    if (!best) {
      held.push_back(k);
      return;
    }
    if (limit > 0 && (best->in_flight >= limit || !queue.empty())) {
      if (!queue.push(k + 1, 0, "", ms(trace[k].at_s)).queued) {
        ++report.refused;
        return;
      }
      queued[k] = 1;
      queued_at.emplace_back(now, k);
      return;
    }
    dispatch(k, best);
  };
  // Queued requests go where a ready replica has room; those past the
  // queue's timeout are refused.
  auto release = [&] {
    while (!queued_at.empty() && queued_at.front().first + o.queue_timeout_s * scale <= now) {
      const size_t k = queued_at.front().second;
      queued_at.pop_front();
      if (queued[k] && queue.remove(k + 1)) {
        queued[k] = 0;
        ++report.refused;
      }
    }
    while (!queue.empty()) {
      Replica* best = pick();
      if (!best || best->in_flight >= limit) return;
      const size_t k = *queue.pop(ms(now)) - 1;
      queued[k] = 0;
      dispatch(k, best);
    }
  };

  while (next < trace.size() || !live.empty() || !held.empty() || !queue.empty()) {
    // The next event: an arrival, a step's end, a replica ready, a controller
    // pass, a queued request's timeout.
    double t = next < trace.size() ? trace[next].at_s : std::numeric_limits<double>::infinity();
    if (!queued_at.empty()) t = std::min(t, queued_at.front().first + o.queue_timeout_s * scale);
    for (auto& r : replicas) {
      if (r->busy_until) t = std::min(t, *r->busy_until);
      if (r->state == State::kStarting) t = std::min(t, r->ready_at);
    }
    t = std::min(t, next_pass);
    if (t > give_up)
      return make_error(ErrorCode::kUnavailable,
                        "{} request(s) still unanswered a day after the trace ended (the "
                        "service never had a ready replica for them?)",
                        live.size() + held.size() + queue.size());
    now = t;
    // Steps that end now hand their outputs on.
    for (auto& r : replicas) {
      if (!r->busy_until || *r->busy_until > now) continue;
      r->busy_until.reset();
      for (const engine::RequestOutput& out : r->step.outputs) {
        auto it = live.find(out.id);
        if (it == live.end()) continue;
        const double arrival = trace[it->second.trace_index].at_s;
        if (out.has_token && out.output_tokens == 1) {
          const double ttft = now - arrival;
          ttfts.push_back(ttft);
          met += ttft <= o.slo_ttft_s;
          size_t b = 0;
          while (b < bounds.size() && ttft > bounds[b]) ++b;
          const size_t k = it->second.trace_index;
          answered[k] = 1;
          if (arrival >= ttft_epoch) {
            ++ttft_counts[b];
            ttft_overdue_answered += overdue[k];
          }
        }
        if (out.finish != engine::FinishReason::kNone) {
          --it->second.replica->in_flight;
          live.erase(it);
          last_answer = now;
        }
      }
    }
    // Replicas that became ready take the held requests.
    for (auto& r : replicas)
      if (r->state == State::kStarting && r->ready_at <= now) r->state = State::kReady;
    std::vector<uint32_t> ready_now;
    for (auto& r : replicas)
      if (r->state == State::kReady) ready_now.push_back(r->index);
    std::sort(ready_now.begin(), ready_now.end());
    if (ready_now != ready_set) ttft_epoch = now, ready_set = std::move(ready_now);
    if (!held.empty() && std::any_of(replicas.begin(), replicas.end(),
                                     [](auto& r) { return r->state == State::kReady; })) {
      std::deque<size_t> waiting;
      waiting.swap(held);
      for (size_t k : waiting) send(k);
    }
    release();
    while (next < trace.size() && trace[next].at_s <= now) {
      if (std::none_of(replicas.begin(), replicas.end(),
                       [](auto& r) { return r->state == State::kReady; }))
        ++report.held;
      send(next++);
    }
    if (next_pass <= now) {
      next_pass = now + o.period_s * scale;
      for (; due_next < next && trace[due_next].at_s + deadline_s <= now; ++due_next)
        // Held requests are not watched (the gateway watches a request once sent,
        // or queued for room; one sent after its deadline follows a change of
        // the serving set, which the epoch rule leaves out).
        if (!answered[due_next] && (live.count(due_next + 1) || queued[due_next])) {
          overdue[due_next] = 1;
          ttft_overdue += trace[due_next].at_s >= ttft_epoch;
        }
      Sample s;
      s.now = now;
      double kv = 0;
      for (auto& r : replicas) {
        if (r->state == State::kStarting) continue;
        s.in_flight += r->in_flight;
        if (r->state != State::kReady) continue;
        ++s.ready;
        const engine::EngineStats st = r->core->stats();
        s.waiting += st.num_waiting;
        kv += st.kv_cache_usage;
      }
      s.kv_cache_usage = s.ready ? kv / s.ready : 0;
      // As the controller: requests queued in the gateway count as in flight
      // and waiting.
      s.in_flight += static_cast<double>(queue.size());
      s.waiting += static_cast<double>(queue.size());
      s.queued = static_cast<double>(queue.size());
      if (std::isfinite(deadline_s))
        s.queued_overdue = static_cast<double>(queue.arrived_by(ms(now - deadline_s)));
      s.ttft_counts = ttft_counts;
      std::fill(ttft_counts.begin(), ttft_counts.end(), 0);
      s.ttft_overdue = std::exchange(ttft_overdue, 0);
      s.ttft_overdue_answered = std::exchange(ttft_overdue_answered, 0);
      s.held = static_cast<uint32_t>(held.size());
      s.requests_total = sent;
      s.turned_away_total = report.refused;
      uint32_t current = 0;
      for (auto& r : replicas) current += r->state != State::kDraining;
      std::optional<uint32_t> asked;
      if (autoscaler) {
        autoscaler->observe(s);
        asked = autoscaler->decide(now, current).desired;
      } else if (o.schedule) {
        asked = o.schedule->at(now);
      }
      if (asked) {
        const uint32_t desired = *asked;
        report.scale_changes += desired != current;
        for (uint32_t n = current; n < desired; ++n, ++report.cold_starts) create(now, false);
        if (desired < current) {
          // As the controller: the highest indexes go first, starting ones before ready ones.
          std::vector<Replica*> active;
          for (auto& r : replicas)
            if (r->state != State::kDraining) active.push_back(r.get());
          std::sort(active.begin(), active.end(), [](const Replica* a, const Replica* b) {
            if ((a->state == State::kReady) != (b->state == State::kReady))
              return a->state == State::kReady;
            return a->index < b->index;
          });
          for (size_t i = desired; i < active.size(); ++i) {
            active[i]->state = State::kDraining;
            active[i]->drain_started = now;
          }
        }
      }
      // Drained replicas stop (a starting one too, after the same grace, as
      // the controller does).
      for (auto it = replicas.begin(); it != replicas.end();) {
        Replica& r = **it;
        const double draining = now - r.drain_started;
        const bool stop = r.state == State::kDraining &&
                          ((r.in_flight == 0 && draining >= o.unroute_grace_s * scale) ||
                           draining > o.drain_timeout_s * scale);
        if (!stop) {
          ++it;
          continue;
        }
        for (auto l = live.begin(); l != live.end();)  // cut off by the drain timeout
          if (l->second.replica == &r) {
            ++report.cut_off;
            l = live.erase(l);
          } else {
            ++l;
          }
        gpu_seconds += now - r.created;
        it = replicas.erase(it);
      }
      SimSample point{now, static_cast<uint32_t>(replicas.size()), s.ready,
                      static_cast<uint32_t>(s.in_flight)};
      report.peak_replicas = std::max(report.peak_replicas, point.replicas);
      report.timeline.push_back(point);
    }
    // Idle engines with work start a step.
    for (auto& r : replicas) {
      if (r->busy_until || !r->core->has_work()) continue;
      r->step = r->core->step(now);
      r->busy_until = now + std::max(r->step.duration, 1e-9);
    }
  }
  report.run_s = last_answer;
  for (auto& r : replicas) gpu_seconds += std::max(0.0, last_answer - r->created);
  report.gpu_seconds = gpu_seconds;
  report.slo_attainment =
      report.requests ? static_cast<double>(met) / static_cast<double>(report.requests) : 0;
  report.ttft_p50_s = percentile(ttfts, 0.5);
  report.ttft_p90_s = percentile(ttfts, 0.9);
  report.ttft_p99_s = percentile(ttfts, 0.99);
  return report;
}

Schedule oracle_schedule(const std::vector<uint32_t>& need, double step_s, uint32_t initial,
                         double headroom, size_t memory_steps, size_t ahead_steps, uint32_t most) {
  auto with_headroom = [&](uint32_t count) {
    return std::min(most, static_cast<uint32_t>(std::ceil(count * (1 + headroom) - 1e-9)));
  };
  Schedule plan{step_s, {}};
  plan.counts.reserve(need.size() + 1);
  for (size_t i = 0; i < need.size(); ++i) {
    uint32_t c = i < memory_steps ? initial : 0;
    const size_t last = std::min(need.size() - 1, i + ahead_steps);
    for (size_t j = i < memory_steps ? 0 : i - memory_steps; j <= last; ++j)
      c = std::max(c, need[j]);
    plan.counts.push_back(with_headroom(c));
  }
  // Past the need's end (the static run's last answer), what is left in
  // flight has one replica at least.
  plan.counts.push_back(std::max<uint32_t>(1, plan.counts.empty() ? 0 : plan.counts.back()));
  return plan;
}

Result<Baselines> baselines(const std::vector<TraceRequest>& trace, SimOptions options,
                            const BaselineOptions& b) {
  if (b.max_replicas == 0 || !(b.window_s > 0))
    return make_error(ErrorCode::kInvalidArgument, "max replicas and the window must be above 0");
  options.autoscaling.reset();
  options.schedule.reset();
  auto run = [&](uint32_t n) {
    options.replicas = n;
    return simulate(trace, options);
  };
  Baselines out;
  LS_ASSIGN_OR_RETURN(SimReport peak, run(b.max_replicas));
  // The clairvoyant bound from the busiest moment of each window.
  const double slots = options.engine.max_num_seqs;
  std::map<int64_t, uint32_t> busiest;
  for (const SimSample& p : peak.timeline) {
    uint32_t& most = busiest[static_cast<int64_t>(p.at_s / b.window_s)];
    most = std::max(most, p.in_flight);
  }
  for (const auto& [w, in_flight] : busiest)
    out.clairvoyant_gpu_seconds += std::ceil(in_flight / slots) * b.window_s;
  // The oracles, from each pass's need.
  const double step = options.period_s * options.time_scale;
  std::vector<uint32_t> need;
  for (const SimSample& p : peak.timeline) {
    const auto i = static_cast<size_t>(std::max(0.0, std::floor(p.at_s / step)));
    if (need.size() <= i) need.resize(i + 1, 0);
    need[i] = std::max(need[i], static_cast<uint32_t>(std::ceil(p.in_flight / slots)));
  }
  auto steps = [&](double s) { return static_cast<size_t>(std::ceil(s / step - 1e-9)); };
  const size_t cold = steps(options.cold_start_s * options.time_scale);
  // Each starts with what the first cold start needs, ready (as a service
  // already up when the trace begins), and takes it for the load before.
  uint32_t initial = 0;
  for (size_t j = 0; j < std::min(need.size(), cold + 1); ++j) initial = std::max(initial, need[j]);
  auto oracle = [&](double headroom, double memory_s, bool foresight) -> Result<Oracle> {
    SimOptions o = options;
    o.schedule = oracle_schedule(need, step, initial, headroom, steps(memory_s),
                                 foresight ? cold : 0, b.max_replicas);
    o.replicas = o.schedule->at(0);
    LS_ASSIGN_OR_RETURN(SimReport r, simulate(trace, o));
    return Oracle{headroom, memory_s, foresight, std::move(r)};
  };
  LS_ASSIGN_OR_RETURN(out.foresight, oracle(0, b.window_s, true));
  if (b.reactive_oracles) {
    for (double memory : {b.window_s, 60.0, 300.0, 1200.0})
      for (double headroom : {0.0, 0.25, 0.5, 1.0}) {
        LS_ASSIGN_OR_RETURN(Oracle o, oracle(headroom, memory, false));
        if (o.report.slo_attainment >= b.attainment &&
            (!out.best_reactive || o.report.gpu_seconds < out.best_reactive->report.gpu_seconds))
          out.best_reactive = std::move(o);
      }
  }
  if (peak.slo_attainment < b.attainment) return out;
  // Attainment grows with the count: the fewest that meet the goal.
  uint32_t lo = 1, hi = b.max_replicas;
  SimReport best = std::move(peak);
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    LS_ASSIGN_OR_RETURN(SimReport r, run(mid));
    if (r.slo_attainment >= b.attainment) {
      hi = mid;
      best = std::move(r);
    } else {
      lo = mid + 1;
    }
  }
  out.best_static = hi;
  out.best_static_report = std::move(best);
  return out;
}

}  // namespace loadstar::autoscaler
