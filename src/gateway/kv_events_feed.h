// Feeds the KV-cache index (kv_block_index.h) from the engines that publish
// KV events: one ZeroMQ subscription per such endpoint of the current
// routing table, on the subscriber's own thread (started with the first
// such endpoint). Lost events (a sequence gap) drop what is known of that
// engine, which is then learnt again from its next events.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "gateway/kv_block_index.h"
#include "gateway/routing_table.h"

namespace loadstar::kvevents {
class Subscriber;
}

namespace loadstar::gateway {

class KvEventsFeed {
 public:
  explicit KvEventsFeed(KvBlockIndex& index);
  ~KvEventsFeed();
  KvEventsFeed(const KvEventsFeed&) = delete;
  KvEventsFeed& operator=(const KvEventsFeed&) = delete;

  // Subscribes to the table's endpoints that publish, and only those.
  void publish(const RoutingTable& table);
  // Prometheus text (empty until an engine publishes).
  std::string metrics() const;

 private:
  KvBlockIndex& index_;
  mutable std::mutex mu_;  // publish() and metrics() run on different threads
  std::unique_ptr<kvevents::Subscriber> subscriber_;
};

}  // namespace loadstar::gateway
