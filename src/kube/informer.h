// An informer: a local copy of one collection, kept current by list + watch.
// It lists, then watches from the list's resourceVersion with bookmarks;
// a watch that ends or breaks resumes from the last version seen (so a cut
// loses no event), a 410 Gone lists again, and errors back off (0.2 s
// doubling to 5 s, each wait drawn between half and all of that, so that
// clients cut off together do not come back together). A list again (after
// a 410, as after an API server restart) asks for any state not older than
// the one held, which the API server serves from its watch cache rather
// than etcd, as client-go's reflector does. Readers see a consistent
// snapshot at any time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kube/client.h"

namespace loadstar::kube {

// The pure part: objects by name and the version they are current to.
class ObjectCache {
 public:
  // Replaces everything with a list's items and version.
  void replace(const json& list);
  // Applies one watch event. ERROR events are returned as errors (a 410
  // Gone as kExpired: the caller lists again); others update the version.
  Status apply(const WatchEvent& event);

  const std::string& resource_version() const { return resource_version_; }
  const std::map<std::string, json>& objects() const { return objects_; }

 private:
  std::map<std::string, json> objects_;  // by "namespace/name" (or "name")
  std::string resource_version_;
};

// "namespace/name", or "name" for cluster-scoped objects.
std::string object_key(const json& object);

class Informer {
 public:
  // `collection` as from collection_path(); `on_change` runs on the
  // informer's thread after each change to the cache.
  Informer(const Client& client, std::string collection, std::string label_selector = "",
           double watch_timeout_s = 60);
  ~Informer();
  Informer(const Informer&) = delete;
  Informer& operator=(const Informer&) = delete;

  void start(std::function<void()> on_change);
  void stop();

  // Whether the first list has arrived.
  bool synced() const { return synced_.load(); }
  // Waits until synced or `timeout_s`; false on timeout.
  bool wait_synced(double timeout_s) const;
  std::vector<json> items() const;
  std::optional<json> get(const std::string& key) const;
  // Hands the object to `read` without copying it (under the informer's
  // lock: `read` must not call back into it); false when there is none.
  bool read(const std::string& key, const std::function<void(const json&)>& read) const;
  uint64_t relists() const { return relists_.load(); }
  const std::string& collection() const { return collection_; }

 private:
  void run();
  void sleep_backoff(double& backoff_s);

  const Client& client_;
  std::string collection_, selector_;
  double watch_timeout_s_;
  std::function<void()> on_change_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  ObjectCache cache_;
  std::atomic<bool> stopping_{false}, synced_{false};
  std::atomic<uint64_t> relists_{0};
  std::thread thread_;
};

}  // namespace loadstar::kube
