#include "gateway/respond.h"

#include <cstdint>

#include "openai/protocol.h"

namespace loadstar::gateway {

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

}  // namespace loadstar::gateway
