#include "app/dashboard.h"

#include <string>

namespace loadstar::app {

namespace {

std::string content_type(std::string_view name) {
  if (name.ends_with(".html")) return "text/html; charset=utf-8";
  if (name.ends_with(".js")) return "text/javascript; charset=utf-8";
  if (name.ends_with(".css")) return "text/css; charset=utf-8";
  return "application/octet-stream";
}

}  // namespace

std::optional<http::Response> dashboard_response(const http::Request& req) {
  if (req.method != "GET") return std::nullopt;
  std::string_view path = req.path();
  if (path == "/" || path == "/dashboard" || path == "/dashboard/") path = "/dashboard/index.html";
  constexpr std::string_view kPrefix = "/dashboard/";
  if (!path.starts_with(kPrefix)) return std::nullopt;
  const std::string_view name = path.substr(kPrefix.size());
  for (const DashboardAsset& asset : kDashboardAssets) {
    if (asset.name != name) continue;
    return http::Response{
        200,
        content_type(name),
        std::string(asset.bytes),
        {{"Content-Security-Policy",
          "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"},
         {"X-Content-Type-Options", "nosniff"},
         {"X-Frame-Options", "DENY"},
         {"Referrer-Policy", "no-referrer"},
         {"Cache-Control", "no-cache"}}};
  }
  return http::Response{404, "text/plain; charset=utf-8", "no such dashboard file\n", {}};
}

}  // namespace loadstar::app
