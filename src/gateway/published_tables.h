// The latest routing table published to the gateway, and the endpoints that
// recently left it, for the load report: a replica being drained is still
// reported while requests run there and for kRetiredReportMs after (a worker
// may still pick it from its previous table), so that a controller does not
// stop an engine under a running stream. A pure core (the time is a
// parameter); thread-safe: publishing and reporting take one lock, which the
// request path never does.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "gateway/routing_table.h"

namespace loadstar::gateway {

class PublishedTables {
 public:
  static constexpr int64_t kRetiredReportMs = 5000;

  // Makes `next` the latest table at `now_ms`. A service whose set of ready
  // endpoints changed starts counting TTFT afresh (stamp_ttft_epochs).
  // Returns the endpoints that left, for the caller to forget.
  std::vector<std::shared_ptr<Endpoint>> publish(std::shared_ptr<const RoutingTable> next,
                                                 int64_t now_ms);
  // The endpoints to report, each replica once (its counters are
  // cumulative): the latest table's, then the retired ones still counted,
  // the most recently retired first.
  std::vector<std::shared_ptr<Endpoint>> reported(int64_t now_ms);

 private:
  struct Retired {
    std::shared_ptr<Endpoint> endpoint;
    int64_t at_ms = 0;
  };
  // Drops the retired endpoints that are done (under `mu_`).
  void prune_retired(int64_t now_ms);

  std::mutex mu_;
  std::shared_ptr<const RoutingTable> latest_ = std::make_shared<RoutingTable>();
  std::vector<Retired> retired_;
};

}  // namespace loadstar::gateway
