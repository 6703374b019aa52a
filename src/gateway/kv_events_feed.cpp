#include "gateway/kv_events_feed.h"

#include <fmt/format.h>

#include "kvevents/zmq_transport.h"

namespace loadstar::gateway {

KvEventsFeed::KvEventsFeed(KvBlockIndex& index) : index_(index) {}

KvEventsFeed::~KvEventsFeed() = default;

void KvEventsFeed::publish(const RoutingTable& table) {
  std::vector<kvevents::Subscriber::Source> sources;
  for (const auto& [name, svc] : table.services)
    for (const auto& e : svc.ready)
      if (!e->kv_events.empty()) sources.push_back({e->id, e->kv_events});
  std::lock_guard lock(mu_);
  if (sources.empty() && !subscriber_) return;
  if (!subscriber_)
    subscriber_ = std::make_unique<kvevents::Subscriber>(kvevents::Subscriber::Hooks{
        .batch = [this](uint64_t id, const kvevents::EventBatch& b) { index_.apply(id, b); },
        .lost = [this](uint64_t id) { index_.forget(id); },
        .gone = [this](uint64_t id) { index_.forget(id); }});
  subscriber_->set_sources(std::move(sources));
}

std::string KvEventsFeed::metrics() const {
  std::lock_guard lock(mu_);
  if (!subscriber_) return {};
  return fmt::format(
      "# HELP loadstar_gateway_kv_events_engines Engines whose KV events this gateway follows.\n"
      "# TYPE loadstar_gateway_kv_events_engines gauge\n"
      "loadstar_gateway_kv_events_engines {}\n"
      "# HELP loadstar_gateway_kv_events_batches_total KV event batches received from engines.\n"
      "# TYPE loadstar_gateway_kv_events_batches_total counter\n"
      "loadstar_gateway_kv_events_batches_total {}\n"
      "# HELP loadstar_gateway_kv_events_lost_total Times an engine's events were lost (a "
      "sequence gap or an undecodable batch); what was known of it is dropped.\n"
      "# TYPE loadstar_gateway_kv_events_lost_total counter\n"
      "loadstar_gateway_kv_events_lost_total {}\n"
      "# HELP loadstar_gateway_kv_cache_blocks KV-cache blocks the engines report holding "
      "(block, engine pairs).\n"
      "# TYPE loadstar_gateway_kv_cache_blocks gauge\n"
      "loadstar_gateway_kv_cache_blocks {}\n"
      "# HELP loadstar_gateway_kv_events_orphan_blocks_total Stored blocks skipped because "
      "their parent was never seen.\n"
      "# TYPE loadstar_gateway_kv_events_orphan_blocks_total counter\n"
      "loadstar_gateway_kv_events_orphan_blocks_total {}\n",
      subscriber_->connected(), subscriber_->batches(), subscriber_->lost(), index_.blocks(),
      index_.orphans());
}

}  // namespace loadstar::gateway
