#include "controller/usage_ledger.h"

#include <ctime>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace loadstar::controller {

using nlohmann::json;

void Usage::add(const Usage& other) {
  requests += other.requests;
  errors += other.errors;
  prompt_tokens += other.prompt_tokens;
  completion_tokens += other.completion_tokens;
  cost += other.cost;
}

namespace {

// A gateway not seen for a day is forgotten (its counters would only be
// compared with a new instance's, which starts afresh anyway).
constexpr int64_t kForgetGatewayS = 24 * 3600;

uint64_t grew(uint64_t now, uint64_t before) {
  return now >= before ? now - before : now;
}

Usage from_load(const gateway::TenantLoad& t) {
  return {t.requests, t.errors, t.prompt_tokens, t.completion_tokens, t.cost};
}

json usage_to_json(const Usage& u) {
  return {{"requests", u.requests},
          {"errors", u.errors},
          {"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"cost", u.cost}};
}

std::string rfc3339(int64_t unix_s) {
  const std::time_t t = unix_s;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// A field for CSV: quoted when it holds a comma, quote or line break; a
// leading = + - @ tab or carriage return is prefixed with ' so a spreadsheet does not run it.
std::string csv_field(const std::string& s) {
  std::string v = s;
  if (!v.empty() && std::string_view("=+-@\t\r").find(v[0]) != std::string_view::npos) v = "'" + v;
  if (v.find_first_of(",\"\r\n") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

bool UsageLedger::observe(const std::map<std::string, TenantCounters>& gateways, int64_t unix_s) {
  const int64_t hour = unix_s - unix_s % 3600;
  bool added = false;
  for (const auto& [name, report] : gateways) {
    Seen& seen = gateways_[name];
    if (seen.instance != report.instance) {
      // A new gateway, or the same restarted: its counters start at zero.
      seen.instance = report.instance;
      seen.counters.clear();
    }
    seen.at = unix_s;
    for (const gateway::TenantLoad& t : report.tenants) {
      Usage& before = seen.counters[{t.tenant, t.model}];
      const Usage now = from_load(t);
      Usage delta{grew(now.requests, before.requests), grew(now.errors, before.errors),
                  grew(now.prompt_tokens, before.prompt_tokens),
                  grew(now.completion_tokens, before.completion_tokens),
                  now.cost >= before.cost ? now.cost - before.cost : now.cost};
      before = now;
      if (delta.empty() && delta.cost == 0 && delta.errors == 0) continue;
      hours_[{hour, t.tenant, t.model}].add(delta);
      added = true;
    }
  }
  std::erase_if(gateways_, [&](const auto& kv) { return unix_s - kv.second.at > kForgetGatewayS; });
  const int64_t oldest = hour - (keep_hours_ - 1) * 3600;
  std::erase_if(hours_, [&](const auto& kv) { return std::get<0>(kv.first) < oldest; });
  return added;
}

std::vector<UsageRow> UsageLedger::rows(int64_t from_s, int64_t to_s) const {
  std::vector<UsageRow> out;
  for (auto it = hours_.lower_bound({from_s, "", ""});
       it != hours_.end() && std::get<0>(it->first) < to_s; ++it)
    out.push_back(
        {std::get<0>(it->first), std::get<1>(it->first), std::get<2>(it->first), it->second});
  return out;
}

std::map<std::string, Usage> UsageLedger::by_tenant(int64_t from_s, int64_t to_s) const {
  std::map<std::string, Usage> out;
  for (const UsageRow& r : rows(from_s, to_s)) out[r.tenant].add(r.usage);
  return out;
}

std::string UsageLedger::save(size_t* dropped) {
  // Compact: each hour a row [hour, tenant, model, requests, errors,
  // prompt_tokens, completion_tokens, cost] (about 60 bytes).
  json gateways = json::object();
  for (const auto& [name, seen] : gateways_) {
    json counters = json::array();
    for (const auto& [key, u] : seen.counters)
      counters.push_back({key.first, key.second, u.requests, u.errors, u.prompt_tokens,
                          u.completion_tokens, u.cost});
    gateways[name] = {{"instance", seen.instance}, {"at", seen.at}, {"counters", counters}};
  }
  const std::string gateways_text = gateways.dump();
  std::vector<std::string> rows;
  size_t bytes = gateways_text.size() + 64;
  for (const auto& [key, u] : hours_) {
    rows.push_back(json::array({std::get<0>(key), std::get<1>(key), std::get<2>(key), u.requests,
                                u.errors, u.prompt_tokens, u.completion_tokens, u.cost})
                       .dump());
    bytes += rows.back().size() + 1;
  }
  size_t first = 0;  // rows (oldest first) dropped to fit
  while (bytes > kMaxDocumentBytes && first < rows.size()) bytes -= rows[first++].size() + 1;
  if (dropped) *dropped = first;
  for (size_t i = 0; i < first; ++i) hours_.erase(hours_.begin());
  std::string text = R"({"version":2,"hours":[)";
  for (size_t i = first; i < rows.size(); ++i) text += (i > first ? "," : "") + rows[i];
  return text + R"(],"gateways":)" + gateways_text + "}";
}

Result<UsageLedger> UsageLedger::load(std::string_view text, int64_t keep_hours) {
  const json doc = json::parse(text, nullptr, false);
  if (!doc.is_object() || doc.value("version", 0) != 2 || !doc.contains("hours") ||
      !doc["hours"].is_array())
    return make_error(ErrorCode::kInvalidArgument,
                      "not a usage ledger (an object with version 2 and 'hours')");
  // A row: [hour or tenant..., names, then counts]; `at` is where its counts begin.
  auto counts = [](const json& row, size_t at, std::string_view where) -> Result<Usage> {
    Usage u;
    uint64_t* fields[] = {&u.requests, &u.errors, &u.prompt_tokens, &u.completion_tokens};
    const char* names[] = {"requests", "errors", "prompt_tokens", "completion_tokens"};
    for (size_t i = 0; i < 4; ++i) {
      const json& v = row[at + i];
      if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
        return make_error(ErrorCode::kInvalidArgument, "{}: {} must be a count", where, names[i]);
      *fields[i] = v.get<uint64_t>();
    }
    const json& cost = row[at + 4];
    if (!cost.is_number() || !(cost.get<double>() >= 0))
      return make_error(ErrorCode::kInvalidArgument, "{}: cost must be a number >= 0", where);
    u.cost = cost.get<double>();
    return u;
  };
  UsageLedger ledger(keep_hours);
  size_t i = 0;
  for (const json& row : doc["hours"]) {
    const std::string where = fmt::format("hours[{}]", i++);
    if (!row.is_array() || row.size() != 8 || !row[0].is_number_integer() || !row[1].is_string() ||
        !row[2].is_string())
      return make_error(ErrorCode::kInvalidArgument,
                        "{}: needs [hour, tenant, model, requests, errors, prompt_tokens, "
                        "completion_tokens, cost]",
                        where);
    LS_ASSIGN_OR_RETURN(Usage usage, counts(row, 3, where));
    ledger.hours_[{row[0].get<int64_t>(), row[1], row[2]}].add(usage);
  }
  if (auto gateways = doc.find("gateways"); gateways != doc.end() && gateways->is_object())
    for (const auto& [name, g] : gateways->items()) {
      if (!g.is_object() || !g.value("counters", json()).is_array()) continue;
      Seen& seen = ledger.gateways_[name];
      seen.instance = g.value("instance", std::string());
      seen.at = g.value("at", int64_t{0});
      for (const json& c : g["counters"]) {
        if (!c.is_array() || c.size() != 7 || !c[0].is_string() || !c[1].is_string()) continue;
        auto usage = counts(c, 2, "gateways." + name);
        if (usage.ok()) seen.counters[{c[0], c[1]}] = *usage;
      }
    }
  return ledger;
}

std::string usage_csv(const std::vector<UsageRow>& rows) {
  std::string out = "hour,tenant,model,requests,errors,prompt_tokens,completion_tokens,cost\n";
  for (const UsageRow& r : rows)
    out += fmt::format("{},{},{},{},{},{},{},{}\n", rfc3339(r.hour), csv_field(r.tenant),
                       csv_field(r.model), r.usage.requests, r.usage.errors, r.usage.prompt_tokens,
                       r.usage.completion_tokens, r.usage.cost);
  return out;
}

std::string usage_json(const std::vector<UsageRow>& rows) {
  json items = json::array();
  for (const UsageRow& r : rows) {
    json row = usage_to_json(r.usage);
    row["hour"] = rfc3339(r.hour);
    row["tenant"] = r.tenant;
    row["model"] = r.model;
    items.push_back(std::move(row));
  }
  return json({{"items", items}}).dump();
}

}  // namespace loadstar::controller
