// Disaggregated serving at the gateway (a service with spec.prefill): a
// request whose prompt is long enough, and not cached where it will be
// decoded, is sent first to a prefill replica and then to the decode
// replica with the KV cache's whereabouts. The two legs are exactly those
// of llm-d's routing sidecar (its NIXL v2 protocol), so vLLM pairs run with
// Loadstar as they do behind llm-d:
//
//  1. prefill: the client's body with "kv_transfer_params":
//     {"do_remote_decode": true, "do_remote_prefill": false,
//      "remote_engine_id": null, "remote_block_ids": null,
//      "remote_host": null, "remote_port": null}, "stream": false,
//     "max_tokens": 1, "max_completion_tokens": 1, no "stream_options";
//  2. decode: the client's body unchanged but for "kv_transfer_params",
//     copied verbatim from the prefill's response.
//
// Both legs carry the same x-request-id. A prefill leg that fails (an
// error, a refusal, a response without kv_transfer_params) costs the
// request nothing but time: the decode replica serves it whole.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "common/result.h"
#include "gateway/routing_table.h"
#include "gateway/selection.h"
#include "gateway/stats.h"
#include "gateway/upstream.h"

namespace loadstar::gateway {

// Whether a request is worth a prefill leg: at least `threshold` of its
// prompt tokens are not cached on the decode replica picked for it.
inline bool worth_prefill(double uncached_tokens, uint32_t threshold) {
  return uncached_tokens >= threshold;
}

// The prefill leg's body, from the client's (a JSON object).
Result<std::string> prefill_body(std::string_view body);
// The decode leg's body: `body` with the prefill response's
// kv_transfer_params. An error when the response has none.
Result<std::string> decode_body(std::string_view body, std::string_view prefill_response);

// `body` without a client's kv_transfer_params (unchanged if it has none).
std::string without_kv_transfer_params(std::string body);

struct PrefillLeg {
  Endpoint* endpoint = nullptr;  // the prefill replica
  std::string_view target;       // the client's path
  std::string_view body;         // the upstream body (model already rewritten)
  std::string_view authorization;
  std::string request_id;
  int64_t prefill_bytes = 0;  // counted in the endpoint's pending_prefill meanwhile
  ModelStats* stats = nullptr;
};

// Runs the prefill leg and returns the decode leg's body, or why not (the
// caller then serves the request whole). The endpoint's in-flight and
// pending-prefill counts and its failures follow the leg.
boost::asio::awaitable<Result<std::string>> run_prefill(Upstream& upstream, http::Exchange& ex,
                                                        PrefillLeg leg);

// What the gateway knows when it considers a prefill leg.
struct Disaggregation {
  const RoutingTable::Service::Prefill* pool = nullptr;
  const PickerConfig* picker = nullptr;
  const EndpointRequest* request = nullptr;  // the decode pick's
  const EndpointPick* decode = nullptr;      // where the request will be decoded
  double bytes_per_token = 4;                // the chooser's estimate
  std::string_view target, body, authorization, request_id;
  ModelStats* stats = nullptr;
};

struct PrefillOutcome {
  // The decode leg's body when a prefill leg was worth it and succeeded;
  // empty when the decode replica serves the request whole (not worth it,
  // no prefill replica ready or healthy, or the leg failed: counted).
  std::string decode_body;
  // Worth it, but the pool has no replica now and may get one: the caller
  // asks for it (PoolDemand), so later requests find one.
  bool pool_wanted = false;
};

// kCancelled when the client went away during the prefill leg.
boost::asio::awaitable<Result<PrefillOutcome>> prefill_if_worth(Upstream& upstream,
                                                                http::Exchange& ex,
                                                                EndpointChooser& chooser,
                                                                EndpointChooser::Scratch& scratch,
                                                                Disaggregation d);

// The prefill pools requests wanted lately and found empty: reported to the
// controller as demand (a pool scaled to zero comes back while the requests
// that found it empty are served whole). Thread-safe.
class PoolDemand {
 public:
  // Records a want; true when it is news (none in the last second), so the
  // caller wakes the controller at most once a second per pool.
  bool want(const std::string& service, int64_t now_ms);
  // Pools wanted in the last `window_ms`.
  std::vector<std::string> recent(int64_t now_ms, int64_t window_ms = 10000) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, int64_t> last_ms_;
};

}  // namespace loadstar::gateway
