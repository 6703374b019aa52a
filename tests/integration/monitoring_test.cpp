// deploy/monitoring, checked without Grafana (not in Debian): the alerting
// rules pass promtool, the dashboard is JSON whose panels all query, and
// every Loadstar metric the rules and the dashboard name exists on a live
// page of `loadstar up` — the gateway's, the controller's and the agent's
// /metrics — so no panel or alert watches a metric nobody exports.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const fs::path kMonitoring = fs::path(LOADSTAR_SOURCE_DIR) / "deploy/monitoring";

std::set<std::string> names_in(const std::string& text, const std::string& pattern) {
  std::set<std::string> out;
  const std::regex re(pattern);
  for (std::sregex_iterator it(text.begin(), text.end(), re), end; it != end; ++it)
    out.insert((*it)[0].str());
  return out;
}

TEST(Monitoring, RulesPassPromtoolAndEveryQueriedMetricIsExported) {
  const fs::path rules_file = kMonitoring / "prometheus-rules.yaml";
  auto [rc, checked] = run_shell("promtool check rules " + rules_file.string() + " 2>&1");
  EXPECT_EQ(rc, 0) << checked;
  const std::string rules = read_file(rules_file);
  const std::string dashboard_text = read_file(kMonitoring / "grafana/loadstar-overview.json");
  const json dashboard = json::parse(dashboard_text, nullptr, false);
  ASSERT_TRUE(dashboard.is_object()) << "the dashboard is not JSON";
  size_t queries = 0;
  for (const json& panel : dashboard["panels"]) {
    if (panel.value("type", "") == "row") continue;
    ASSERT_TRUE(panel.contains("targets")) << panel.dump();
    for (const json& t : panel["targets"]) {
      EXPECT_FALSE(t.value("expr", "").empty()) << panel.value("title", "");
      ++queries;
    }
  }
  EXPECT_GT(queries, 20u);
  // Recording rules the dashboard reads are the rule file's.
  for (const std::string& recorded : names_in(dashboard_text, "loadstar:[a-z_:0-9]+"))
    EXPECT_NE(rules.find("record: " + recorded), std::string::npos) << recorded;

  auto up = Up::start(quickstart(1));
  up->wait_ready("chat", 1);
  ASSERT_EQ(
      up->post("/v1/chat/completions",
               R"({"model":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":3})")
          .status,
      200);
  std::string pages;
  for (const std::string& url :
       {fmt::format("http://127.0.0.1:{}/metrics", up->port()),
        fmt::format("http://127.0.0.1:{}/metrics", up->admin_port()),
        fmt::format("http://127.0.0.1:{}/agent/metrics", up->admin_port())}) {
    auto [status, page] = run_shell("curl -sf " + url);
    EXPECT_EQ(status, 0) << url;
    pages += page;
  }
  std::set<std::string> used = names_in(rules + dashboard_text, "loadstar_[a-z_]+");
  ASSERT_GT(used.size(), 20u);
  for (const std::string& name : used) {
    std::string family = name;
    for (const char* suffix : {"_bucket", "_count", "_sum"})
      if (name.ends_with(suffix) &&
          pages.find("# TYPE " + name.substr(0, name.size() - std::string(suffix).size()) +
                     " histogram") != std::string::npos)
        family = name.substr(0, name.size() - std::string(suffix).size());
    EXPECT_NE(pages.find("# TYPE " + family + " "), std::string::npos)
        << name << " is queried by deploy/monitoring and exported by no page";
  }
}

}  // namespace
}  // namespace loadstar::testing
