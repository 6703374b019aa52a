// The load the controller decides on: one source of per-pass increments
// (requests sent, first-token times) and current values (in flight, the
// engines' queues and KV-cache use, held and queued requests), whatever the gateways
// are. The gateways own their counters (gateway::Endpoint) and report them
// (gateway::LoadReport); a LoadAggregator turns successive reports of one or
// more gateways into increments. Two sources feed it: InProcessLoad reads
// the gateway of `loadstar up` directly, GatewayLoadCollector
// (gateway_load.h) polls every gateway Pod's GET /loadstar/v1/load.
// Load flows one way, gateway to controller; the controller writes nothing
// into the gateway's endpoints.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "controller/usage_ledger.h"
#include "gateway/load_report.h"

namespace loadstar::controller {

struct ReplicaLoad {
  uint64_t requests = 0;  // sent since the last round, all gateways
  std::array<uint64_t, gateway::Endpoint::kTtftBuckets> ttft{};  // since the last round
  uint64_t ttft_overdue = 0;           // past the TTFT SLO unanswered, since the last round
  uint64_t ttft_overdue_answered = 0;  // of those, answered since (also in ttft)
  uint64_t failures = 0;               // since the last round
  std::array<uint64_t, gateway::Endpoint::kItlBuckets> itl{};  // since the last round
  int64_t in_flight = 0;                                       // now, all gateways
  std::optional<double> waiting;   // the engine's queue, as the freshest scrape saw it
  std::optional<double> kv_usage;  // the engine's KV-cache use (0..1)
  double prefill_tokens = 0;       // prompt tokens awaiting a first token, now, all gateways
  std::set<std::string> adapters;  // LoRA adapters running or waiting there, all gateways
};

struct LoadRound {
  std::map<std::string, ReplicaLoad> replicas;  // by replica name
  std::set<std::string> demand;                 // services held (or queued) requests wait for
  std::map<std::string, uint64_t> held;         // service -> requests held now, all gateways
  // service -> requests in the gateways' flow-control queues now (also in
  // its replicas' in_flight and waiting)
  std::map<std::string, uint64_t> queued;
  // service -> of those, the requests already past its TTFT SLO
  std::map<std::string, uint64_t> queued_overdue;
  // service -> requests the gateways turned away for want of a replica with
  // room, since the last round (gateway::LoadReport::turned_away)
  std::map<std::string, uint64_t> turned_away;
  // Each answering gateway's tenant usage counters as they are (not
  // increments: the usage ledger keeps its own baselines, persisted).
  std::map<std::string, TenantCounters> tenants;

  // `later` follows this round: increments add up, current values are
  // `later`'s (a replica it does not report has nothing in flight).
  void merge(LoadRound later);
};

// The pure part: turns one round of reports (gateway -> report) into
// per-replica increments. Counters are per gateway and only grow; a smaller
// value than last time, or a new instance name, means that gateway
// restarted (the new value is the increment, as Prometheus treats a counter
// reset), and a replica at a new address is a new engine whose counters
// start from zero. A gateway that did not answer this round adds nothing,
// and its in-flight requests stop counting; answering again, it adds what
// it counted since it last answered (its counters are kept for
// kForgetAfterRounds rounds).
class LoadAggregator {
 public:
  LoadRound round(const std::vector<std::pair<std::string, gateway::LoadReport>>& reports);
  // The same from JSON texts (GET /loadstar/v1/load); malformed reports and
  // entries are skipped, with the reason in `errors`.
  LoadRound round(const std::vector<std::pair<std::string, std::string>>& reports,
                  std::vector<std::string>* errors = nullptr);

  static constexpr uint32_t kForgetAfterRounds = 120;

 private:
  struct Seen {
    std::string address;
    uint64_t requests = 0;
    std::array<uint64_t, gateway::Endpoint::kTtftBuckets> ttft{};
    uint64_t ttft_overdue = 0, ttft_overdue_answered = 0;
    uint64_t failures = 0;
    std::array<uint64_t, gateway::Endpoint::kItlBuckets> itl{};
  };
  // One gateway's counters as last reported.
  struct Gateway {
    std::string instance;
    uint32_t missed = 0;                          // rounds since it last answered
    std::map<std::string, Seen> replicas;         // by replica
    std::map<std::string, uint64_t> turned_away;  // by service
  };
  std::map<std::string, Gateway> gateways_;
};

// Where the controller's load comes from. take() is called once per
// reconcile pass (on the controller's thread); implementations gather in
// the background or read at once.
class LoadSource {
 public:
  virtual ~LoadSource() = default;
  // What happened since the last take(); nullopt: nothing observed since
  // (the controller keeps the current values it has).
  virtual std::optional<LoadRound> take() = 0;
  // `wake` is called (from any thread; it must not block) when a request is
  // held for a service with no ready replica, so that a pass runs at once.
  virtual void on_demand(std::function<void()> wake) = 0;
};

// The gateways in this process (`loadstar up`): each take() reads their
// reports (gateway name -> report). note_demand is their on_demand hook.
class InProcessLoad : public LoadSource {
 public:
  using Reports = std::vector<std::pair<std::string, gateway::LoadReport>>;
  explicit InProcessLoad(std::function<Reports()> reports) : report_(std::move(reports)) {}
  std::optional<LoadRound> take() override;
  void on_demand(std::function<void()> wake) override;
  // A request is held for `service` (a gateway thread; never blocks).
  void note_demand(const std::string& service);

 private:
  std::function<Reports()> report_;
  LoadAggregator aggregator_;
  std::mutex mu_;  // guards the two below
  std::set<std::string> demand_;
  std::function<void()> wake_;
};

}  // namespace loadstar::controller
