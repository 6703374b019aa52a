// A request's way to an engine: the backend (routes, fallbacks, holding a
// request for a replica at zero), flow control, the endpoint pick, a
// disaggregated service's prefill leg, the attempt and its retries.
#include <utility>

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/scope_exit.h"
#include "common/strings.h"
#include "gateway/adapter_routing.h"
#include "gateway/engine_tokens.h"
#include "gateway/gateway_impl.h"
#include "gateway/respond.h"

namespace loadstar::gateway {

asio::awaitable<Gateway::Impl::Routed> Gateway::Impl::route(
    Worker& w, http::Exchange& ex, const RequestPeek& peek, ModelStats& stats,
    const std::vector<http::Header>& extra_headers, Clock::time_point start,
    const TenantLimiter* tenant) {
  const std::string& model = peek.model;
  const http::Request& req = ex.request();
  // An adapter's KV blocks are its own (the engine hashes the adapter in):
  // its prompts are indexed apart from the base model's.
  const auto adapter_route = w.table->routes.find(model);
  const bool adapter = adapter_route != w.table->routes.end() && adapter_route->second.adapter;
  const std::vector<uint64_t> blocks =
      hash_prefix_blocks(peek.prompt, options.prefix.block_bytes, options.prefix.max_blocks,
                         adapter ? std::string_view(model) : std::string_view());
  BackendSelector selector(model);
  selector.resolve(w.table);
  const bool open_gateway = !selector.table().tenants || selector.table().tenants->empty();
  const std::string_view client_authorization = open_gateway ? req.header("Authorization") : "";

  Routed routed;
  std::string failure;
  ForwardOutcome outcome = ForwardOutcome::kRetry;
  bool held = false;
  double held_s = 0;
  // Flow control: the service whose room this request holds a reservation
  // of, until it is counted in an endpoint's in_flight.
  std::string reserved;
  ScopeExit unreserve([this, &reserved] {
    if (!reserved.empty()) waiting_room.dispatched(reserved);
  });
  bool flow_checked = false;
  // Watched against its service's TTFT SLO while an attempt awaits its
  // first token (autoscaling.slo): a miss counts at the deadline.
  FirstTokenDeadlines::Entry deadline;
  // The prompt's ids from an engine publishing KV events, and the service
  // whose engine gave them (another service's tokenizer may differ).
  std::optional<std::vector<uint32_t>> kv_tokens;
  std::string kv_tokens_service;
  for (unsigned attempt = 0; attempt < options.max_attempts && outcome == ForwardOutcome::kRetry;) {
    if (selector.backends().empty()) {
      routed.code = 404;
      co_await send_error(ex, 404, fmt::format("The model `{}` does not exist.", model), "model");
      co_return routed;
    }
    int64_t now_ms = steady_ms();
    const RoutingTable::Backend* backend = selector.choose_backend(now_ms, w.rng);
    if (!backend) {
      // Nothing to send to. Before any attempt, wait for a replica of a
      // service backend (scaled to zero, or starting); otherwise give up.
      if (attempt > 0 || held) break;
      BackendSelector::HoldTarget target = selector.hold_target();
      if (!target.service) break;
      held = true;
      HoldRequest hold{.model = model,
                       .services = std::move(target.services),
                       .max_requests = target.service->hold_max_requests,
                       .timeout_s = target.service->hold_timeout_s};
      const Clock::time_point hold_start = Clock::now();
      const HoldResult result = co_await w.held.hold(ex, std::move(hold), stats);
      held_s = seconds_since(hold_start);
      if (result != HoldResult::kReady) {
        routed.code = result == HoldResult::kClientGone ? 499 : 503;  // hold() answered the 503
        co_return routed;
      }
      selector.resolve(w.table);
      continue;
    }
    if (!flow_checked && !backend->external &&
        selector.table().services.at(backend->service).flow.enabled()) {
      // Every replica saturated: wait in the gateway's queue for room.
      flow_checked = true;
      const Room room = co_await wait_for_room(w, ex, backend->service, tenant, start);
      if (room.code != 0) {
        routed.code = room.code;
        co_return routed;
      }
      if (room.counted_overdue) deadline.counted_overdue(steady_ms_of(start));
      reserved = backend->service;
      if (w.table.get() != &selector.table()) {  // a new table came while it waited
        selector.resolve(w.table);
        continue;
      }
    }
    // Engines that say what their caches hold are matched by token blocks:
    // the prompt's ids are asked (once) of an engine of the service, the
    // least busy of those publishing, so that they are exactly its own.
    if (kv_tokens && kv_tokens_service != backend->service) kv_tokens.reset();
    if (!kv_tokens && !backend->external &&
        selector.table().services.at(backend->service).picker.kind == PickerKind::kScored) {
      Endpoint* asked = nullptr;
      for (Endpoint* e : selector.endpoints(*backend, now_ms))
        if (!e->kv_events.empty() &&
            (!asked || e->in_flight.load(std::memory_order_relaxed) <
                           asked->in_flight.load(std::memory_order_relaxed)))
          asked = e;
      if (asked) {
        // Asked of the base model (the name the engines serve, the
        // service's): an adapter shares its tokenizer and may not be loaded
        // there. The table outlives the exchange: the selector holds it.
        std::optional<std::vector<uint32_t>> ids =
            co_await engine_tokens(w, ex, *asked, backend->service, client_authorization, stats);
        if (!ids) {
          routed.code = 499;  // the client went away meanwhile
          co_return routed;
        }
        kv_tokens = std::move(ids);
        kv_tokens_service = backend->service;
        if (w.table.get() != &selector.table()) {  // a new table came meanwhile
          selector.resolve(w.table);
          continue;
        }
        now_ms = steady_ms();
      }
    }
    if (attempt > 0) {
      // The retry budget: retries may be only a share of what is in flight.
      const auto budget = std::max<int64_t>(
          options.retry_budget_min,
          static_cast<int64_t>(options.retry_budget_ratio * static_cast<double>(in_flight.load())));
      if (retries_in_flight.load() >= budget) {
        failure += "; retry budget exhausted";
        break;
      }
      ++stats.retries;
    }
    const RoutingTable::Service* svc =
        backend->external ? nullptr : &selector.table().services.at(backend->service);
    const AdapterPlan lora = adapter_plan(svc, *backend);
    if (lora.load && backend->adapter_path.empty()) {
      routed.code = 503;
      co_await send_error(
          ex, 503,
          fmt::format("The adapter `{}` is not staged for this service yet (its status says "
                      "why); retry shortly.",
                      lora.name),
          {}, {}, 5);
      co_return routed;
    }
    if (backend->priority != selector.first_priority()) ++stats.fallbacks;
    ++stats.backend_requests[backend->label()];

    const PickerConfig* picker =
        backend->external ? nullptr : &selector.table().services.at(backend->service).picker;
    EndpointRequest pick_request{
        .blocks = blocks, .prompt_bytes = peek.prompt.size(), .now_ms = now_ms};
    if (picker && !picker->session_header.empty())
      pick_request.session = req.header(picker->session_header);
    std::span<Endpoint* const> candidates = selector.endpoints(*backend, now_ms);
    uint32_t keep_adapters = 0;
    if (picker) {
      if (!lora.name.empty()) {
        pick_request.adapter = lora.name;
        pick_request.max_loras = svc->max_loras;
        keep_adapters = svc->max_cpu_loras;
        candidates = serving_adapter(*svc, candidates, lora.name, w.with_adapter);
      }
      candidates = canary_split(*svc, candidates,
                                std::uniform_real_distribution<double>(0, 1)(w.rng), w.canary);
      candidates = unsaturated(svc->flow, candidates, now_ms, w.unsaturated);
    }
    if (kv_tokens) pick_request.tokens = *kv_tokens;
    pick_request.estimate_cache = svc && svc->prefill;
    const EndpointPick chosen = chooser.choose(picker, candidates, pick_request, w.picks);
    Endpoint* endpoint = chosen.endpoint;
    stats.prefix_blocks_matched += chosen.prefix_blocks_matched;
    stats.prefix_blocks_total += chosen.prefix_blocks_total;
    selector.mark_tried(endpoint);

    std::string body = lora.by_index
                           ? upstream_body_selecting_adapter(req.body, peek, backend->model,
                                                             adapter_index(*endpoint, lora.name))
                           : upstream_body(req.body, peek, backend->model);
    // kv_transfer_params names a host the engine reads KV from: only the
    // gateway's own prefill leg may set it, never a client (an engine with
    // a KV connector would otherwise fetch from wherever a caller says).
    if (body.find("kv_transfer_params") != std::string::npos)
      body = without_kv_transfer_params(std::move(body));
    // Disaggregated: a prompt worth it is computed on a prefill replica
    // first, and the decode replica only receives its KV.
    int64_t decode_prefill = chosen.prefill;
    bool disaggregated = false;
    const std::string request_id = svc && svc->prefill ? random_uuid() : std::string();
    if (svc && svc->prefill && picker) {
      Disaggregation d{.pool = &*svc->prefill,
                       .picker = picker,
                       .request = &pick_request,
                       .decode = &chosen,
                       .bytes_per_token = chooser.bytes_per_token(),
                       .target = req.target,
                       .body = body,
                       .authorization = client_authorization,
                       .request_id = request_id,
                       .stats = &stats};
      auto prefilled = prefill_if_worth(w.upstream, ex, chooser, w.picks, d);
      Result<PrefillOutcome> outcome = co_await std::move(prefilled);
      if (!outcome.ok()) {
        routed.code = 499;  // the client went away during the prefill
        co_return routed;
      }
      if (outcome->pool_wanted && pool_demand.want(svc->prefill->service, now_ms) &&
          options.on_demand)
        options.on_demand(svc->prefill->service);
      if (!outcome->decode_body.empty()) {
        body = std::move(outcome->decode_body);
        decode_prefill = 0;
        disaggregated = true;
      }
    }
    endpoint->in_flight.fetch_add(1, std::memory_order_relaxed);
    endpoint->requests.fetch_add(1, std::memory_order_relaxed);
    endpoint->pending_prefill.fetch_add(decode_prefill, std::memory_order_relaxed);
    // Other gateways count it at once (their view of this gateway's load
    // would otherwise lag by up to a report interval), and learn its prefix.
    if (shared_prefixes && picker)
      shared_prefixes->publish(
          {.replica = endpoint->replica,
           .address = endpoint->key,
           .session = chosen.session_recorded,
           .prefill = decode_prefill,
           .blocks = chosen.prefix_recorded ? blocks : std::vector<uint64_t>{}});
    if (!pick_request.adapter.empty()) endpoint->adapters.sent(pick_request.adapter, keep_adapters);
    if (!reserved.empty()) waiting_room.dispatched(std::exchange(reserved, {}));
    if (attempt > 0) ++retries_in_flight;
    ForwardRequest forward;
    forward.endpoint = endpoint;
    forward.body = body;
    forward.authorization =
        backend->external ? std::string_view(backend->authorization) : client_authorization;
    forward.headers = extra_headers;
    forward.headers.push_back({"x-loadstar-endpoint", endpoint->replica});
    // A request that waited for a replica to start says how long.
    if (held) forward.headers.push_back({"x-loadstar-held-seconds", fmt::format("{:.3f}", held_s)});
    forward.client_wants_usage = peek.include_usage;
    forward.may_retry = attempt + 1 < options.max_attempts;
    forward.held = held;
    forward.start = start;
    forward.prefill = decode_prefill;
    forward.stats = &stats;
    if (svc && svc->ttft_slo_s) {
      w.deadlines.watch(deadline, *endpoint, steady_ms_of(start), *svc->ttft_slo_s, steady_ms());
      if (!std::exchange(w.deadlines_swept, true))  // a gateway without an SLO never wakes for it
        asio::co_spawn(w.io, deadline_ticks(w), asio::detached);
      forward.deadline = &deadline;
    }
    if (disaggregated) forward.request_id = request_id;
    // An adapter loaded on demand: into this replica first, if it is not there.
    ForwardResult result;
    Status loaded = ok_status();
    if (lora.load)
      loaded = co_await adapters.ensure(*endpoint, std::string(lora.name), backend->adapter_path);
    if (loaded.ok()) {
      result = co_await w.upstream.forward(ex, std::move(forward));
    } else {
      result.failure = loaded.error().message;
      result.prefill_pending = decode_prefill;
    }
    deadline.settle();  // no first token (or it came): not watched between attempts
    endpoint->pending_prefill.fetch_sub(result.prefill_pending, std::memory_order_relaxed);
    if (attempt > 0) --retries_in_flight;
    endpoint->in_flight.fetch_sub(1, std::memory_order_relaxed);
    if (!pick_request.adapter.empty()) endpoint->adapters.finished(pick_request.adapter);
    waiting_room.notify(*w.table);  // its room may let a queued request go
    outcome = result.outcome;
    routed.code = result.client_status;
    routed.usage.prompt_tokens += result.usage.prompt_tokens;
    routed.usage.completion_tokens += result.usage.completion_tokens;
    failure = std::move(result.failure);
    if (!loaded.ok() && loaded.error().code != ErrorCode::kUnavailable) {
      // The engine refused the adapter (its files, its rank): the service's
      // configuration is at fault, not the replica. The engine's words go
      // to the log, which may name paths; the client gets the gist.
      spdlog::warn("gateway: {}", loaded.error().message);
      routed.code = 500;
      co_await send_error(
          ex, 500,
          fmt::format("The adapter `{}` could not be loaded; the gateway's log says why.",
                      lora.name));
      co_return routed;
    }
    if (outcome == ForwardOutcome::kOverloaded) {
      ++w.stats.overloaded;
      routed.code = 503;
      spdlog::warn("gateway: out of descriptors ({}); answering 503", failure);
      co_await send_error(ex, 503, "the gateway is at its connection limit; retry shortly", {}, {},
                          1);
      co_return routed;
    }
    if (outcome != ForwardOutcome::kClientGone) {
      const bool failed = result.upstream_status == 0 || result.upstream_status >= 500;
      if (failed || result.client_status >= 500)  // a stream cut midway too
        endpoint->failures.fetch_add(1, std::memory_order_relaxed);
      note_outcome(w, *endpoint, failed);
    }
    ++attempt;
  }
  if (outcome == ForwardOutcome::kRetry) {
    const std::span<const Endpoint* const> tried = selector.tried();
    if (tried.empty()) {
      routed.code = 503;
      co_await send_error(ex, 503,
                          fmt::format("no ready replica for model `{}`; retry later", model));
    } else {
      routed.code = 502;
      spdlog::warn("gateway: request for `{}` failed on {} replica(s), the last {}: {}", model,
                   tried.size(), tried.back()->replica, failure);
      co_await send_error(ex, 502,
                          fmt::format("upstream failure for model `{}`: {}", model, failure));
    }
  }
  // The client went away before a status was sent (nginx's convention).
  if (routed.code == 0) routed.code = 499;
  co_return routed;
}

asio::awaitable<std::optional<std::vector<uint32_t>>> Gateway::Impl::engine_tokens(
    Worker& w, http::Exchange& ex, Endpoint& endpoint, std::string_view model,
    std::string_view authorization, ModelStats& stats) {
  // Tokenizing is quick (a fast tokenizer, no GPU); an engine that takes
  // longer is busy, and the pick goes on without its word.
  constexpr std::chrono::milliseconds kLimit{250};
  const http::Request& req = ex.request();
  TokenizeAsk ask =
      tokenize_ask(req.body, req.target.find("/chat/completions") != std::string::npos, model);
  if (ask.ids) co_return std::move(*ask.ids);
  if (ask.body.empty()) co_return std::vector<uint32_t>();
  const Clock::time_point start = Clock::now();
  ForwardRequest request{
      .endpoint = &endpoint, .body = ask.body, .authorization = authorization, .stats = &stats};
  CallResult answer = co_await w.upstream.call(ex, std::move(request), "/tokenize", kLimit);
  if (answer.outcome == ForwardOutcome::kClientGone) co_return std::nullopt;
  std::string why;  // the ask failed, and why
  std::vector<uint32_t> ids;
  if (answer.outcome != ForwardOutcome::kDone)
    why = answer.failure.empty() ? "no answer" : std::move(answer.failure);
  else if (answer.status != 200)
    why = fmt::format("answered {}: {}", answer.status, utf8_clip(answer.body, 200));
  else if (auto parsed = parse_tokenize_response(answer.body); !parsed.ok())
    why = parsed.error().message;
  else
    ids = std::move(parsed).value();
  if (!why.empty()) {
    ++stats.tokenize_failures;
    spdlog::debug("tokenize on replica {} failed: {}", endpoint.replica, why);
    co_return std::vector<uint32_t>();
  }
  stats.tokenize.observe(seconds_since(start));
  co_return ids;
}

asio::awaitable<Gateway::Impl::Room> Gateway::Impl::wait_for_room(Worker& w, http::Exchange& ex,
                                                                  const std::string& service,
                                                                  const TenantLimiter* tenant,
                                                                  Clock::time_point start) {
  const RoutingTable::Service& svc = w.table->services.at(service);
  WaitingRoom::Entry entry{
      .service = service, .arrived_ms = steady_ms_of(start), .ttft_slo_s = svc.ttft_slo_s};
  if (tenant) {
    const TenantLimits limits = tenant->limits();
    entry.tenant = tenant->name();
    entry.priority = limits.priority;
    entry.sheddable = limits.sheddable;
  }
  // The table (and so svc) stays alive while this waits.
  std::shared_ptr<const RoutingTable> table = w.table;
  const WaitingRoom::Admission admission =
      co_await waiting_room.enter(ex, std::move(entry), svc.flow, svc.ready);
  const WaitingRoom::Verdict verdict = admission.verdict;
  using V = WaitingRoom::Verdict;
  if (verdict == V::kGo) co_return Room{.counted_overdue = admission.counted_overdue};
  if (verdict == V::kClientGone) co_return Room{.code = 499};
  std::string message =
      verdict == V::kShed ? fmt::format(
                                "every replica of `{}` is saturated and this key's traffic "
                                "is sheddable; retry later",
                                service)
      : verdict == V::kFull
          ? fmt::format("every replica of `{}` is saturated and its queue is full; retry later",
                        service)
      : verdict == V::kEvicted
          ? fmt::format(
                "every replica of `{}` is saturated and higher-priority requests took "
                "this one's place in the queue; retry later",
                service)
          : fmt::format("no replica of `{}` had room within {}s; retry later", service,
                        svc.flow.queue_timeout_s);
  co_await send_error(ex, 503, std::move(message), {}, {}, 1);
  co_return Room{.code = 503};
}

asio::awaitable<void> Gateway::Impl::flow_ticks(Worker& w) {
  asio::steady_timer timer(w.io);
  for (;;) {
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(asio::use_awaitable);
    waiting_room.notify(*w.table);
  }
}

asio::awaitable<void> Gateway::Impl::deadline_ticks(Worker& w) {
  asio::steady_timer timer(w.io);
  for (;;) {
    timer.expires_after(std::chrono::milliseconds(100));
    co_await timer.async_wait(asio::use_awaitable);
    if (w.deadlines.watching() > 0) w.deadlines.sweep(steady_ms());
  }
}

void Gateway::Impl::note_outcome(Worker& w, Endpoint& endpoint, bool failed) {
  const OutlierPolicy policy{.consecutive_failures = options.outlier_consecutive_failures,
                             .base_ejection_s = options.outlier_base_ejection_s};
  const auto ejection = record_outcome(endpoint, failed, policy, steady_ms());
  if (!ejection) return;
  ++w.stats.ejections;
  spdlog::warn("gateway: ejecting {} ({}) for {}s after {} consecutive failures", endpoint.replica,
               endpoint.key, ejection->seconds, ejection->failures);
}

}  // namespace loadstar::gateway
