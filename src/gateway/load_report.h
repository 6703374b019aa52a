// What a gateway knows of the load on the replicas it routes to: per replica
// the requests sent (a counter), those in flight, time-to-first-token bucket
// counts (counters) and the engine's queue and KV-cache use as last scraped;
// and the services that held requests wait for. The gateway's own counters,
// read without a lock; a controller turns successive reports into per-pass
// increments (controller/load.h), from a gateway in its own process or from
// every gateway's GET /loadstar/v1/load (this struct as JSON).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/routing_table.h"

namespace loadstar::gateway {

struct EndpointLoad {
  std::string service;
  std::string replica;
  std::string address;        // "host:port"; a new address is a new engine
  uint64_t requests = 0;      // ever sent (counter)
  int64_t in_flight = 0;      // now
  double waiting = 0;         // the engine's queue, as last scraped
  double kv_usage = 0;        // the engine's KV-cache use (0..1), as last scraped
  double metrics_age_s = -1;  // since that scrape; -1: never scraped
  // Prompt tokens sent and not yet answered with a first token (the
  // gateway's count of its prefill work, in bytes over bytes per token).
  double prefill_tokens = 0;
  std::array<uint64_t, Endpoint::kTtftBuckets> ttft{};  // counters
  // Requests past their TTFT SLO without a first token, counted then, and
  // those of them answered since (counters; Endpoint::ttft_overdue).
  uint64_t ttft_overdue = 0;
  uint64_t ttft_overdue_answered = 0;
  uint64_t failures = 0;                              // counter
  std::array<uint64_t, Endpoint::kItlBuckets> itl{};  // counters
  std::vector<std::string> adapters;                  // LoRA adapters running or waiting there now
};

// What one tenant's requests to one model used at this gateway, for
// chargeback (counters, since the gateway started).
struct TenantLoad {
  std::string tenant;
  std::string model;  // as the client named it
  uint64_t requests = 0;
  uint64_t errors = 0;  // answered with a 5xx
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  double cost = 0;  // in the tenant's tokenCost units
};

struct LoadReport {
  std::vector<EndpointLoad> endpoints;  // each replica once
  std::vector<TenantLoad> tenants;      // each (tenant, model) once
  // Random at each start of the gateway: counters of another instance are
  // not comparable with this one's.
  std::string instance;
  std::map<std::string, int64_t> held;  // service -> requests held for it now
  // service -> requests waiting in the gateway's flow-control queue for its
  // saturated replicas to have room
  std::map<std::string, int64_t> queued;
  // service -> of those, the requests already past its TTFT SLO (they miss
  // it whenever they are served)
  std::map<std::string, int64_t> queued_overdue;
  // service -> requests for it the gateway answered without sending them to
  // a replica, for want of one (a counter since the gateway started): a
  // held request that timed out or overflowed the hold, a flow-control
  // refusal (shed, full queue, evicted, queue timeout), or a client that
  // left while held or queued. With the requests sent (attempts, retries
  // included) and those held and queued now, the service's arrivals as the
  // autoscaler counts them.
  std::map<std::string, uint64_t> turned_away;
  // Services requests wanted lately and found without a ready replica,
  // without waiting for one (a disaggregated service's prefill pool).
  std::vector<std::string> wanted;
};

// The gateway's counters now (`now_ms`: steady-clock milliseconds, for the
// scrape ages).
EndpointLoad endpoint_load(const Endpoint& e, int64_t now_ms, double bytes_per_token = 4);

std::string load_report_json(const LoadReport& report);

// Parses a report another gateway served. Malformed entries are skipped and
// named in `problems`; a text that is not a report at all is an error.
struct ParsedLoadReport {
  LoadReport report;
  std::vector<std::string> problems;
};
Result<ParsedLoadReport> parse_load_report(std::string_view text);

}  // namespace loadstar::gateway
