// Loads LoRA adapters into replicas on demand (spec.lora.loading: onDemand)
// through the engine's runtime API — vLLM's POST /v1/load_lora_adapter
// {"lora_name", "lora_path"}, which engine-sim answers the same way — once
// per replica and adapter: the first request for an adapter on a replica
// waits for the load, later ones find it registered (EndpointAdapters).
// The path comes from the routing table (where the controller staged the
// adapter), never from a client; an adapter loaded from another path (its
// source changed) is unloaded and loaded again. Loads run one at a time on
// a thread of the loader's own, so a slow engine never blocks a gateway
// worker; a failed load fails the requests queued behind it at once for 5 s.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include <boost/asio/awaitable.hpp>

#include "common/result.h"
#include "gateway/routing_table.h"

namespace loadstar::gateway {

class AdapterLoader {
 public:
  AdapterLoader();
  ~AdapterLoader();
  AdapterLoader(const AdapterLoader&) = delete;
  AdapterLoader& operator=(const AdapterLoader&) = delete;

  // Ok once `endpoint` has `adapter` (loaded now, or before); otherwise the
  // engine's refusal in its own words. `endpoint` must outlive the call.
  boost::asio::awaitable<Status> ensure(Endpoint& endpoint, std::string adapter, std::string path);

  uint64_t loads() const { return loads_.load(); }
  uint64_t failures() const { return failures_.load(); }

 private:
  Status load(Endpoint& endpoint, const std::string& adapter, const std::string& path);

  struct Thread;  // its io_context and thread (adapter_loader.cpp)
  std::unique_ptr<Thread> thread_;
  // Loads that failed lately, by endpoint id and adapter: until when, and
  // why. The loader's thread alone touches it.
  std::map<std::pair<uint64_t, std::string>,
           std::pair<std::chrono::steady_clock::time_point, Status>>
      failed_;
  std::atomic<uint64_t> loads_{0}, failures_{0};
};

}  // namespace loadstar::gateway
