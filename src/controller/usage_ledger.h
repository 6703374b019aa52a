// The usage ledger: requests, errors, tokens and cost per tenant, model and
// hour, for chargeback. The gateways count (gateway::TenantLoad counters in
// their load reports); the ledger adds what each counter grew since it last
// looked to the hour it looked in. Its state (the hours and the counters
// last seen) is one JSON document the controller saves where its store
// keeps things (a file locally, a ConfigMap in Kubernetes mode), so a
// restarted controller goes on without counting anything twice, and a
// restarted gateway (a new instance, counters from zero) loses nothing it
// reported. Pure: time is passed in.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/result.h"
#include "gateway/load_report.h"

namespace loadstar::controller {

struct Usage {
  uint64_t requests = 0;
  uint64_t errors = 0;  // answered with a 5xx
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  double cost = 0;  // in the tenant's tokenCost units
  void add(const Usage& other);
  bool empty() const { return requests == 0 && prompt_tokens == 0 && completion_tokens == 0; }
};

struct UsageRow {
  int64_t hour = 0;  // its start, Unix seconds
  std::string tenant;
  std::string model;
  Usage usage;
};

// A gateway's report as the ledger reads it.
struct TenantCounters {
  std::string instance;  // the gateway's start (LoadReport::instance)
  std::vector<gateway::TenantLoad> tenants;
};

class UsageLedger {
 public:
  static constexpr int64_t kDefaultKeepHours = 35 * 24;
  explicit UsageLedger(int64_t keep_hours = kDefaultKeepHours) : keep_hours_(keep_hours) {}

  // Each answering gateway's counters now (gateway name -> counters), at
  // `unix_s`. Returns whether anything was added.
  bool observe(const std::map<std::string, TenantCounters>& gateways, int64_t unix_s);

  // Hours starting in [from_s, to_s), oldest first, then by tenant and model.
  std::vector<UsageRow> rows(int64_t from_s, int64_t to_s) const;
  // Each tenant's usage over the same hours.
  std::map<std::string, Usage> by_tenant(int64_t from_s, int64_t to_s) const;

  // The whole state, and back (an unreadable document is an error naming
  // what is wrong; the caller decides whether to start afresh). A document
  // over kMaxDocumentBytes (a ConfigMap holds 1 MiB) first loses its oldest
  // hours, from the ledger too; `dropped` says how many.
  static constexpr size_t kMaxDocumentBytes = 900 * 1024;
  std::string save(size_t* dropped = nullptr);
  static Result<UsageLedger> load(std::string_view text, int64_t keep_hours = kDefaultKeepHours);

 private:
  using Key = std::tuple<int64_t, std::string, std::string>;  // hour, tenant, model
  struct Seen {
    std::string instance;
    int64_t at = 0;  // when it was last seen, Unix seconds
    std::map<std::pair<std::string, std::string>, Usage> counters;
  };
  int64_t keep_hours_;
  std::map<Key, Usage> hours_;
  std::map<std::string, Seen> gateways_;
};

// The rows as CSV (a header, then one line per row; hours in RFC 3339 UTC).
std::string usage_csv(const std::vector<UsageRow>& rows);
// The rows as a JSON array.
std::string usage_json(const std::vector<UsageRow>& rows);

}  // namespace loadstar::controller
