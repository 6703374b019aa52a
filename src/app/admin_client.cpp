#include "app/admin_client.h"

#include <fmt/core.h>

#include "http/bearer.h"
#include "http/client.h"

namespace loadstar::app {

using nlohmann::json;

void add_admin_options(CLI::App& app, AdminTarget& target) {
  app.add_option("--admin-host", target.host)->capture_default_str();
  app.add_option("--admin-port", target.port)->capture_default_str();
}

// The answer's body as it is (CSV, say); an error status is an error.
Result<std::string> admin_text(const AdminTarget& t, const std::string& target) {
  std::vector<http::Header> headers;
  auto token = http::BearerToken::from_flag_or_env("");
  if (!token.ok()) return token.error();
  if (*token) headers.push_back((*token)->header());
  auto r = http::fetch(
      {.host = t.host, .port = t.port, .target = target, .headers = headers, .timeout_s = 10});
  if (!r.ok())
    return make_error(ErrorCode::kUnavailable, "cannot reach the admin API at {}:{}: {}", t.host,
                      t.port, r.error().message);
  if (r->status != 200) {
    const json doc = json::parse(r->body, nullptr, false);
    return Error{ErrorCode::kInvalidArgument, doc.is_object() && doc.contains("error")
                                                  ? doc["error"].value("message", r->body)
                                                  : r->body};
  }
  return r->body;
}

Result<json> admin_call(const AdminTarget& t, const std::string& method, const std::string& target,
                        std::string body) {
  std::vector<http::Header> headers = {{"Content-Type", "application/yaml"}};
  auto token = http::BearerToken::from_flag_or_env("");
  if (!token.ok()) return token.error();
  if (*token) headers.push_back((*token)->header());
  auto r = http::fetch({.host = t.host,
                        .port = t.port,
                        .method = method,
                        .target = target,
                        .body = std::move(body),
                        .headers = std::move(headers),
                        .timeout_s = 10});
  if (!r.ok()) {
    return make_error(ErrorCode::kUnavailable, "cannot reach loadstar up's admin API at {}:{}: {}",
                      t.host, t.port, r.error().message);
  }
  json doc = json::parse(r->body, nullptr, false);
  if (r->status != 200) {
    std::string message =
        doc.is_object() && doc.contains("error") ? doc["error"].value("message", r->body) : r->body;
    return Error{ErrorCode::kInvalidArgument, message};
  }
  if (doc.is_discarded())
    return make_error(ErrorCode::kCorrupt, "the admin API answered something that is not JSON");
  return doc;
}

// Events as kubectl shows them: last seen, type, reason, (object,) message.
void print_events(const json& events, bool with_object) {
  for (const auto& e : events) {
    const uint32_t count = e.value("count", 1u);
    fmt::print("  {:<21} {:<8} {:<17} {}{}{}\n", e.value("time", ""), e.value("type", ""),
               e.value("reason", ""),
               with_object ? fmt::format("{}/{}: ", e.value("kind", ""), e.value("name", "")) : "",
               e.value("message", ""), count > 1 ? fmt::format(" (x{})", count) : "");
  }
}

std::string seconds(const json& v) {
  if (!v.is_number()) return "-";
  double s = v.get<double>();
  if (s < 60) return fmt::format("{:.1f}s", s);
  if (s < 3600) return fmt::format("{:.0f}m", s / 60);
  return fmt::format("{:.1f}h", s / 3600);
}

// A YAML document as JSON: plain scalars that read as numbers, booleans or
// null become those; quoted ones stay strings.

}  // namespace loadstar::app
