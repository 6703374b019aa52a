#include "gateway/scraper.h"

#include <algorithm>
#include <chrono>

#include "gateway/engine_load.h"
#include "http/client.h"

namespace loadstar::gateway {

namespace {

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void EngineScraper::start() {
  thread_ = std::thread([this] { loop(); });
}

void EngineScraper::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void EngineScraper::publish(std::shared_ptr<const RoutingTable> table) {
  std::lock_guard lock(mu_);
  table_ = std::move(table);
}

void EngineScraper::loop() {
  if (interval_s_ <= 0) return;
  // Connections kept alive between rounds: a scrape ten times a second per
  // replica would otherwise open (and tear down) a connection each time.
  http::ClientPool pool;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    std::shared_ptr<const RoutingTable> table = table_;
    lock.unlock();
    for (const auto& [name, svc] : table->services) {
      if (svc.picker.kind != PickerKind::kScored) continue;
      for (const auto& e : svc.ready) {
        http::ClientRequest request;
        request.host = e->host;
        request.port = e->port;
        request.target = "/metrics";
        request.timeout_s = std::max(0.5, interval_s_ * 5);
        auto response = pool.fetch(request);
        if (!response.ok() || response->status != 200) continue;
        EngineLoad load = parse_engine_load(response->body);
        e->waiting.store(load.waiting.value_or(0), std::memory_order_relaxed);
        e->kv_usage.store(load.kv_usage.value_or(0), std::memory_order_relaxed);
        if (load.kv_capacity_tokens)
          e->kv_capacity_tokens.store(*load.kv_capacity_tokens, std::memory_order_relaxed);
        if (load.loras) {
          std::vector<std::string> active = std::move(load.loras->running);
          active.insert(active.end(), load.loras->waiting.begin(), load.loras->waiting.end());
          e->adapters.reported(std::move(active), load.loras->max_loras, steady_ms());
        }
        if (load.waiting || load.kv_usage) e->metrics_at_ms.store(steady_ms());
      }
    }
    lock.lock();
    wake_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(interval_s_ * 1000)),
                   [this] { return stopping_; });
  }
}

}  // namespace loadstar::gateway
