// Reads every ready replica's /metrics (queue depth, KV-cache use and size)
// on its own thread, every interval, into the Endpoint atomics the picker
// reads. Only services with the scored picker are read: the others do not
// use the numbers.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "gateway/routing_table.h"

namespace loadstar::gateway {

class EngineScraper {
 public:
  // `interval_s` <= 0: never scrape.
  explicit EngineScraper(double interval_s) : interval_s_(interval_s) {}
  ~EngineScraper() { stop(); }
  EngineScraper(const EngineScraper&) = delete;
  EngineScraper& operator=(const EngineScraper&) = delete;

  void start();
  // Waits for a scrape in progress to end.
  void stop();
  // The table whose replicas the next rounds read (thread-safe).
  void publish(std::shared_ptr<const RoutingTable> table);

 private:
  void loop();

  const double interval_s_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::shared_ptr<const RoutingTable> table_ = std::make_shared<RoutingTable>();
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace loadstar::gateway
