// The gateway's answers in OpenAI's shape: errors (with Retry-After where
// waiting helps), rate-limit headers and the model list. One place, so the front door, the
// hold queue and the relay answer alike.
#pragma once

#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "gateway/routing_table.h"
#include "gateway/tenants.h"
#include "http/server.h"

namespace loadstar::gateway {

// An OpenAI error body with `status`; a 503 or 429 carries Retry-After
// (`retry_after_s`, rounded up to whole seconds).
boost::asio::awaitable<void> send_error(http::Exchange& ex, int status, std::string message,
                                        std::string param = {},
                                        std::vector<http::Header> headers = {},
                                        double retry_after_s = 1);

// Rate-limit headers in OpenAI's names.
void add_rate_limit_headers(const RateLimitState& s, std::vector<http::Header>& headers);

// GET /v1/models: the services and routes (adapters included) `tenant` may
// call (null: all), with their ready replicas, created at `created` (Unix
// seconds).
std::string models_json(const RoutingTable& table, const TenantLimiter* tenant, int64_t created);

}  // namespace loadstar::gateway
