// The web dashboard: a page and its script and style, compiled into the
// binary (src/app/dashboard/, embedded at build time by
// cmake/embed_files.cmake), served at the root of the admin API. The page
// holds no data: its script reads the admin API's JSON with the caller's
// token, so serving the assets needs none.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include "http/server.h"

namespace loadstar::app {

struct DashboardAsset {
  std::string_view name;  // "index.html", "dashboard.js"
  std::string_view bytes;
};
extern const std::vector<DashboardAsset> kDashboardAssets;

// GET / (and /dashboard/, /dashboard/NAME): the page or an asset, with
// headers that keep it from being framed or running anything but itself;
// nullopt for any other request.
std::optional<http::Response> dashboard_response(const http::Request& req);

}  // namespace loadstar::app
