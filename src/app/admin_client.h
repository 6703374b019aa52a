// A client of a controller's admin API (`loadstar up`'s, or `loadstar
// controller`'s in Kubernetes mode), shared by the commands that read and
// change what runs: get, describe, events, usage, rollout, apply.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/result.h"

namespace loadstar::app {

struct AdminTarget {
  std::string host = "127.0.0.1";
  uint16_t port = 8090;
};

void add_admin_options(CLI::App& app, AdminTarget& target);
// The answer's body as it is (CSV, say); an error status is an error.
Result<std::string> admin_text(const AdminTarget& t, const std::string& target);
// The answer as JSON; an error status is an error with the API's message.
Result<nlohmann::json> admin_call(const AdminTarget& t, const std::string& method,
                                  const std::string& target, std::string body = {});
// Events as kubectl shows them: last seen, type, reason, (object,) message.
void print_events(const nlohmann::json& events, bool with_object);
// Seconds as people read them ("4.2s", "3m", "1.5h"); "-" for null.
std::string seconds(const nlohmann::json& v);

}  // namespace loadstar::app
