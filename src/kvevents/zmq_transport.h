// KV events over ZeroMQ (kv_events.h has the format): the publisher an
// engine-sim replica binds, and the subscriber a gateway runs, one SUB
// socket per engine, on its own thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "kvevents/kv_events.h"

namespace loadstar::kvevents {

class Publisher {
 public:
  // Binds config.endpoint ("tcp://127.0.0.1:*" picks a free port).
  static Result<std::unique_ptr<Publisher>> bind(const EventsConfig& config);
  ~Publisher();
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Sends one batch (never blocks: past the high-water mark a subscriber
  // that does not keep up loses batches, and sees the gap in the sequence).
  // One thread at a time.
  void publish(const EventBatch& batch);
  // The endpoint bound, with the port chosen ("tcp://127.0.0.1:40123").
  const std::string& endpoint() const { return endpoint_; }
  uint64_t published() const { return seq_; }

 private:
  Publisher() = default;
  void* context_ = nullptr;
  void* socket_ = nullptr;
  std::string topic_;
  std::string endpoint_;
  uint64_t seq_ = 0;
};

class Subscriber {
 public:
  struct Source {
    uint64_t id;          // the caller's name for the engine (an endpoint id)
    std::string address;  // "tcp://10.0.0.7:5557"
  };
  struct Hooks {
    // On the subscriber's thread, for each batch decoded, in order.
    std::function<void(uint64_t id, const EventBatch&)> batch;
    // Batches were lost (a sequence gap, or an undecodable one): what is
    // known of that engine may be stale.
    std::function<void(uint64_t id)> lost;
    // The engine is no longer listened to (set_sources dropped it); no batch
    // of it is delivered after this.
    std::function<void(uint64_t id)> gone;
  };
  explicit Subscriber(Hooks hooks);
  ~Subscriber();
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  // The engines to listen to from now on (thread-safe; applied within
  // ~50 ms). Sources no longer listed are disconnected.
  void set_sources(std::vector<Source> sources);

  uint64_t batches() const { return batches_.load(); }
  uint64_t lost() const { return lost_.load(); }
  uint64_t malformed() const { return malformed_.load(); }
  size_t connected() const { return connected_.load(); }

 private:
  struct Connection;
  void run();
  void reconcile(std::vector<std::unique_ptr<Connection>>& connections);
  void drain(Connection& c);

  Hooks hooks_;
  void* context_ = nullptr;
  std::mutex mu_;
  std::vector<Source> wanted_;
  bool changed_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> batches_{0}, lost_{0}, malformed_{0};
  std::atomic<size_t> connected_{0};
  std::thread thread_;
};

}  // namespace loadstar::kvevents
