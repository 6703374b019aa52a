#include "kube/informer.h"

#include <algorithm>
#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace loadstar::kube {

Informer::Informer(const Client& client, std::string collection, std::string label_selector,
                   double watch_timeout_s)
    : client_(client),
      collection_(std::move(collection)),
      selector_(std::move(label_selector)),
      watch_timeout_s_(watch_timeout_s) {}

Informer::~Informer() {
  stop();
}

void Informer::start(std::function<void()> on_change) {
  on_change_ = std::move(on_change);
  thread_ = std::thread([this] { run(); });
}

void Informer::stop() {
  stopping_ = true;
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Informer::wait_synced(double timeout_s) const {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)),
                      [this] { return synced_.load() || stopping_.load(); }) &&
         synced_.load();
}

std::vector<json> Informer::items() const {
  std::lock_guard lock(mu_);
  std::vector<json> out;
  out.reserve(cache_.objects().size());
  for (const auto& [key, object] : cache_.objects()) out.push_back(object);
  return out;
}

std::optional<json> Informer::get(const std::string& key) const {
  std::lock_guard lock(mu_);
  auto it = cache_.objects().find(key);
  if (it == cache_.objects().end()) return std::nullopt;
  return it->second;
}

bool Informer::read(const std::string& key, const std::function<void(const json&)>& read) const {
  std::lock_guard lock(mu_);
  auto it = cache_.objects().find(key);
  if (it == cache_.objects().end()) return false;
  read(it->second);
  return true;
}

void Informer::sleep_backoff(double& backoff_s) {
  thread_local std::minstd_rand random{std::random_device{}()};
  const double wait_s = backoff_s * std::uniform_real_distribution<double>(0.5, 1.0)(random);
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000)),
               [this] { return stopping_.load(); });
  backoff_s = std::min(backoff_s * 2, 5.0);
}

void Informer::run() {
  double backoff_s = 0.2;
  // Whether the next list may be served from the API server's cache (any
  // state not older than the cache's): not after such a list failed (the
  // server may never reach that version: an etcd restored from a backup).
  bool from_cache = true;
  while (!stopping_) {
    std::string held;  // the version the cache is current to; none before the first list
    {
      std::lock_guard lock(mu_);
      if (synced_ && from_cache) held = cache_.resource_version();
    }
    auto list = client_.list(collection_, selector_, held);
    from_cache = list.ok();
    if (!list.ok()) {
      spdlog::warn("informer {}: list failed: {}", collection_, list.error().message);
      sleep_backoff(backoff_s);
      continue;
    }
    size_t objects = 0;
    {
      std::lock_guard lock(mu_);
      cache_.replace(*list);
      synced_ = true;
      objects = cache_.objects().size();
    }
    if (relists_++ > 0)
      spdlog::info("informer {}: listed again{}: {} objects", collection_,
                   held.empty() ? "" : " from the API server's cache", objects);
    cv_.notify_all();
    if (on_change_) on_change_();
    backoff_s = 0.2;
    // Watch from the version seen last, until the version expires.
    while (!stopping_) {
      std::string version;
      {
        std::lock_guard lock(mu_);
        version = cache_.resource_version();
      }
      Status event_error = ok_status();
      Status st = client_.watch(
          collection_, version, watch_timeout_s_, selector_,
          [&](const WatchEvent& event) {
            {
              std::lock_guard lock(mu_);
              event_error = cache_.apply(event);
            }
            if (!event_error.ok()) return false;
            if (event.type != "BOOKMARK" && on_change_) on_change_();
            return true;
          },
          &stopping_);
      if (!event_error.ok()) st = event_error;
      if (st.ok()) {
        backoff_s = 0.2;
        continue;
      }
      if (st.error().code == ErrorCode::kCancelled) return;
      if (st.error().code == ErrorCode::kExpired) {
        spdlog::info("informer {}: {}; listing again", collection_, st.error().message);
        break;
      }
      spdlog::warn("informer {}: watch broke: {}; resuming from version {}", collection_,
                   st.error().message, version);
      sleep_backoff(backoff_s);
    }
  }
}

}  // namespace loadstar::kube
