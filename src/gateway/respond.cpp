#include "gateway/respond.h"

#include <cstdint>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "openai/protocol.h"

namespace loadstar::gateway {

using nlohmann::json;

boost::asio::awaitable<void> send_error(http::Exchange& ex, int status, std::string message,
                                        std::string param, std::vector<http::Header> headers,
                                        double retry_after_s) {
  openai::ApiError error{status, std::move(message), std::move(param)};
  http::Response response{status, "application/json", openai::error_body(error),
                          std::move(headers)};
  if (status == 503 || status == 429)
    response.headers.push_back({"Retry-After", std::to_string(retry_after_seconds(retry_after_s))});
  co_await ex.respond(std::move(response));
}

void add_rate_limit_headers(const RateLimitState& s, std::vector<http::Header>& headers) {
  auto number = [](double v) { return std::to_string(static_cast<int64_t>(v)); };
  if (s.limit_requests) {
    headers.push_back({"x-ratelimit-limit-requests", number(*s.limit_requests)});
    headers.push_back({"x-ratelimit-remaining-requests", number(*s.remaining_requests)});
    headers.push_back({"x-ratelimit-reset-requests", reset_duration(*s.reset_requests_s)});
  }
  if (s.limit_tokens) {
    headers.push_back({"x-ratelimit-limit-tokens", number(*s.limit_tokens)});
    headers.push_back({"x-ratelimit-remaining-tokens", number(*s.remaining_tokens)});
    headers.push_back({"x-ratelimit-reset-tokens", reset_duration(*s.reset_tokens_s)});
  }
}

std::string models_json(const RoutingTable& table, const TenantLimiter* tenant, int64_t created) {
  json data = json::array();
  std::vector<std::pair<std::string, size_t>> models;
  for (const auto& [name, svc] : table.services) models.push_back({name, svc.ready.size()});
  for (const auto& [name, route] : table.routes) {
    size_t ready = 0;
    for (const auto& b : route.backends) {
      if (b.external) {
        ++ready;
      } else if (auto it = table.services.find(b.service); it != table.services.end()) {
        ready += it->second.ready.size();
      }
    }
    models.push_back({name, ready});
  }
  std::sort(models.begin(), models.end());
  for (const auto& [name, ready] : models) {
    if (tenant && !tenant->may_call(name)) continue;
    data.push_back({{"id", name},
                    {"object", "model"},
                    {"created", created},
                    {"owned_by", "loadstar"},
                    {"ready_replicas", ready}});
  }
  return json({{"object", "list"}, {"data", data}}).dump();
}

}  // namespace loadstar::gateway
