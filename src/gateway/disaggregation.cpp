#include "gateway/disaggregation.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

namespace loadstar::gateway {

using nlohmann::json;

Result<std::string> prefill_body(std::string_view body) {
  json doc = json::parse(body, nullptr, false);
  if (!doc.is_object()) return make_error(ErrorCode::kInvalidArgument, "the body is not an object");
  doc["kv_transfer_params"] = {{"do_remote_decode", true},    {"do_remote_prefill", false},
                               {"remote_engine_id", nullptr}, {"remote_block_ids", nullptr},
                               {"remote_host", nullptr},      {"remote_port", nullptr}};
  doc["stream"] = false;
  doc.erase("stream_options");
  doc["max_tokens"] = 1;
  doc["max_completion_tokens"] = 1;
  return doc.dump();
}

Result<std::string> decode_body(std::string_view body, std::string_view prefill_response) {
  const json response = json::parse(prefill_response, nullptr, false);
  if (!response.is_object() || !response.contains("kv_transfer_params") ||
      !response["kv_transfer_params"].is_object())
    return make_error(ErrorCode::kCorrupt,
                      "the prefill's response carries no kv_transfer_params (is the engine "
                      "started with --kv-transfer-config?)");
  json doc = json::parse(body, nullptr, false);
  if (!doc.is_object()) return make_error(ErrorCode::kInvalidArgument, "the body is not an object");
  doc["kv_transfer_params"] = response["kv_transfer_params"];
  return doc.dump();
}

std::string without_kv_transfer_params(std::string body) {
  json doc = json::parse(body, nullptr, false);
  if (!doc.is_object() || !doc.contains("kv_transfer_params")) return body;
  doc.erase("kv_transfer_params");
  return doc.dump();
}

boost::asio::awaitable<Result<std::string>> run_prefill(Upstream& upstream, http::Exchange& ex,
                                                        PrefillLeg leg) {
  Endpoint& endpoint = *leg.endpoint;
  auto body = prefill_body(leg.body);
  if (!body.ok()) co_return std::move(body).error();
  endpoint.in_flight.fetch_add(1, std::memory_order_relaxed);
  endpoint.requests.fetch_add(1, std::memory_order_relaxed);
  endpoint.pending_prefill.fetch_add(leg.prefill_bytes, std::memory_order_relaxed);
  const auto start = std::chrono::steady_clock::now();
  ForwardRequest request;
  request.endpoint = &endpoint;
  request.body = *body;
  request.authorization = leg.authorization;
  request.stats = leg.stats;
  request.request_id = leg.request_id;
  std::string_view target = leg.target;
  auto pending = upstream.call(ex, std::move(request), target);
  CallResult result = co_await std::move(pending);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  endpoint.pending_prefill.fetch_sub(leg.prefill_bytes, std::memory_order_relaxed);
  endpoint.in_flight.fetch_sub(1, std::memory_order_relaxed);
  if (result.outcome == ForwardOutcome::kClientGone)
    co_return make_error(ErrorCode::kCancelled, "the client went away");
  if (result.outcome != ForwardOutcome::kDone)
    co_return make_error(ErrorCode::kUnavailable, "prefill replica {}: {}", endpoint.replica,
                         result.failure);
  if (result.status != 200) {
    if (result.status >= 500) endpoint.failures.fetch_add(1, std::memory_order_relaxed);
    co_return make_error(ErrorCode::kUnavailable, "prefill replica {} answered {}",
                         endpoint.replica, result.status);
  }
  // Its time to first token is the prefill's (the prefill pool's TTFT).
  endpoint.observe_ttft(
      seconds,
      std::chrono::duration_cast<std::chrono::milliseconds>(start.time_since_epoch()).count());
  leg.stats->prefill_leg.observe(seconds);
  co_return decode_body(leg.body, result.body);
}

boost::asio::awaitable<Result<PrefillOutcome>> prefill_if_worth(Upstream& upstream,
                                                                http::Exchange& ex,
                                                                EndpointChooser& chooser,
                                                                EndpointChooser::Scratch& scratch,
                                                                Disaggregation d) {
  const EndpointRequest& request = *d.request;
  // The prompt tokens the decode replica lacks: its uncached bytes, in
  // tokens as the engines count them (exactly, where the prompt was
  // tokenized for KV events).
  const double uncached_bytes = static_cast<double>(d.decode->prefill);
  const double uncached_tokens = request.tokens.empty() || request.prompt_bytes == 0
                                     ? uncached_bytes / std::max(d.bytes_per_token, 1.0)
                                     : uncached_bytes * static_cast<double>(request.tokens.size()) /
                                           static_cast<double>(request.prompt_bytes);
  PrefillOutcome out;
  if (!worth_prefill(uncached_tokens, d.pool->non_cached_tokens)) co_return out;
  std::vector<Endpoint*> candidates;
  for (const auto& e : d.pool->ready)
    if (e->ejected_until_ms.load(std::memory_order_relaxed) <= request.now_ms)
      candidates.push_back(e.get());
  if (candidates.empty()) {  // none ready: served whole, and one asked for
    out.pool_wanted = d.pool->ready.empty() && d.pool->may_get_replicas;
    co_return out;
  }
  const EndpointPick pick = chooser.choose(d.picker, candidates, request, scratch);
  PrefillLeg leg{.endpoint = pick.endpoint,
                 .target = d.target,
                 .body = d.body,
                 .authorization = d.authorization,
                 .request_id = std::string(d.request_id),
                 .prefill_bytes = pick.prefill,
                 .stats = d.stats};
  auto pending = run_prefill(upstream, ex, std::move(leg));
  Result<std::string> decode = co_await std::move(pending);
  if (decode.ok()) {
    ++d.stats->disaggregated;
    out.decode_body = std::move(decode).value();
    co_return out;
  }
  if (decode.error().code == ErrorCode::kCancelled) co_return std::move(decode).error();
  ++d.stats->prefill_fallbacks;
  spdlog::debug("gateway: prefill leg failed, serving the request whole: {}",
                decode.error().message);
  co_return out;
}

bool PoolDemand::want(const std::string& service, int64_t now_ms) {
  std::lock_guard lock(mu_);
  int64_t& last = last_ms_[service];
  const bool news = now_ms - last >= 1000;
  last = now_ms;
  return news;
}

std::vector<std::string> PoolDemand::recent(int64_t now_ms, int64_t window_ms) const {
  std::vector<std::string> out;
  std::lock_guard lock(mu_);
  for (const auto& [service, last] : last_ms_)
    if (now_ms - last <= window_ms) out.push_back(service);
  return out;
}

}  // namespace loadstar::gateway
