// What one endpoint holds of LoRA adapters, as the picker weighs it: the
// adapters its engine last reported running or waiting
// (vllm:lora_requests_info, with its max_lora), those this gateway has
// requests in flight for there (known at once, where a scrape lags), and
// the ones sent there lately (the engine's host cache likely still holds
// them: it can load them soonest). Safe from any thread.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace loadstar::gateway {

class EndpointAdapters {
 public:
  // The engine's report at `now_ms`: adapters running or waiting, and how
  // many it runs at once (0: not said).
  void reported(std::vector<std::string> active, uint32_t max_loras, int64_t now_ms);
  // A request for `adapter` was sent there; `keep` bounds the adapters
  // remembered as sent lately (the engine's host cache, max_cpu_loras).
  void sent(std::string_view adapter, uint32_t keep);
  void finished(std::string_view adapter);
  // Loaded into it at runtime from `path` (AdapterLoader): no load is
  // needed again while the adapter's path stays the same.
  void registered(std::string_view adapter, std::string_view path);
  void unregistered(std::string_view adapter);
  // The path `adapter` was loaded from; nullopt: not loaded at runtime.
  std::optional<std::string> registered_path(std::string_view adapter) const;

  struct View {
    bool active = false;  // running or waiting there
    bool recent = false;  // sent there lately, or loaded there at runtime
    uint32_t active_adapters = 0;
    uint32_t max_loras = 0;  // as reported; 0: unknown
  };
  // Reports older than `fresh_after_ms` count as none.
  View view(std::string_view adapter, int64_t fresh_after_ms) const;
  // The adapters running or waiting there: the fresh report's and those
  // with requests in flight (the autoscaler's adapter demand).
  std::vector<std::string> active(int64_t fresh_after_ms) const;

 private:
  mutable std::mutex mu_;
  std::vector<std::string> reported_;
  uint32_t reported_max_ = 0;
  int64_t reported_at_ms_ = 0;
  std::vector<std::pair<std::string, int64_t>> in_flight_;       // adapter, requests
  std::vector<std::string> recent_;                              // most recent last
  std::vector<std::pair<std::string, std::string>> registered_;  // adapter, path
};

}  // namespace loadstar::gateway
