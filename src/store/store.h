// Where resources live. Reconcilers read desired state from a ResourceStore
// and learn of changes through watch(), so the same controller can run on the
// local store (`loadstar up`, kept on disk) or, later, on the Kubernetes API.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "api/resources.h"
#include "common/result.h"

namespace loadstar::store {

enum class EventType { kAdded, kModified, kDeleted };

struct WatchEvent {
  EventType type;
  std::string kind;
  std::string name;
  uint64_t revision = 0;  // the store's revision after this change
};

using WatchCallback = std::function<void(const WatchEvent&)>;

// What happened to an object, as a Kubernetes Event says it: a scaling
// decision, a rollout's step, a preemption, a failed start.
struct Event {
  std::string time;             // RFC 3339, UTC, the last time it happened
  std::string kind, name;       // the object (a service's name as the controller knows it)
  std::string type = "Normal";  // or "Warning"
  std::string reason;           // CamelCase: ScaledUp, RolloutStarted, CanaryRolledBack, ...
  std::string message;
  uint32_t count = 1;  // times it happened in a row
};

// One revision of a service as its rollout history keeps it: what its
// replicas were started from (`data`, JSON the controller writes and reads).
struct RevisionRecord {
  std::string hash;
  uint32_t number = 0;
  std::string data;
  std::string state;  // its rollout's progress (JSON, the controller's; may change)
};

class ResourceStore {
 public:
  virtual ~ResourceStore() = default;
  virtual std::vector<api::Resource> list() const = 0;
  virtual std::optional<api::Resource> get(std::string_view kind, std::string_view name) const = 0;
  // Creates or replaces the resource of that kind and name.
  virtual Status apply(const api::Resource& resource) = 0;
  virtual Status remove(std::string_view kind, std::string_view name) = 0;
  virtual uint64_t revision() const = 0;
  // `callback` sees every change from now on, in order, until the returned
  // handle is destroyed. Level-triggered consumers re-list on each event.
  virtual std::shared_ptr<void> watch(WatchCallback callback) = 0;
  // What the controller observed of a resource (JSON), for stores that keep
  // status with the resource (Kubernetes' status subresource). Locally the
  // admin API shows status instead.
  virtual void publish_status(std::string_view /*kind*/, std::string_view /*name*/,
                              const std::string& /*status_json*/) {}
  // A service's rollout history (ControllerRevisions in Kubernetes, files
  // locally); a store that keeps none forgets it with the controller.
  virtual Result<std::vector<RevisionRecord>> revisions(std::string_view /*service*/) const {
    return std::vector<RevisionRecord>{};
  }
  // Creates the record, or renumbers it and updates its state (its data
  // never changes).
  virtual Status save_revision(std::string_view /*service*/, const RevisionRecord& /*record*/) {
    return ok_status();
  }
  virtual Status remove_revision(std::string_view /*service*/, std::string_view /*hash*/) {
    return ok_status();
  }
  // Keeps an event where its users look (Kubernetes Events; a bounded log
  // on disk locally); `event.count` > 1: the same one again.
  virtual void record_event(const Event& /*event*/) {}
  // The events kept from before this process, oldest first (locally).
  virtual std::vector<Event> past_events() const { return {}; }
  // The usage ledger's state (controller/usage_ledger.h), one document: a
  // file locally, a ConfigMap in Kubernetes mode. Empty when none is kept.
  virtual Result<std::string> load_usage() const { return std::string(); }
  virtual Status save_usage(const std::string& /*document*/) { return ok_status(); }
};

// Resources in memory, each mirrored to `<dir>/<kind>.<name>.yaml`, written
// to a temporary file and renamed, so a crash leaves the old or the new
// version and never half of one. Opening the directory restores them.
// Rollout history lives next to them, in `<dir>/revisions/<service>/<hash>.json`,
// events in `<dir>/events.jsonl` (one per line, the last kMaxEvents kept),
// and the usage ledger in `<dir>/usage.json`.
class LocalStore : public ResourceStore {
 public:
  static Result<std::unique_ptr<LocalStore>> open(const std::filesystem::path& dir);

  std::vector<api::Resource> list() const override;
  std::optional<api::Resource> get(std::string_view kind, std::string_view name) const override;
  Status apply(const api::Resource& resource) override;
  Status remove(std::string_view kind, std::string_view name) override;
  uint64_t revision() const override;
  std::shared_ptr<void> watch(WatchCallback callback) override;
  Result<std::vector<RevisionRecord>> revisions(std::string_view service) const override;
  Status save_revision(std::string_view service, const RevisionRecord& record) override;
  Status remove_revision(std::string_view service, std::string_view hash) override;
  void record_event(const Event& event) override;
  std::vector<Event> past_events() const override;
  // The usage ledger in `<dir>/usage.json`.
  Result<std::string> load_usage() const override;
  Status save_usage(const std::string& document) override;
  static constexpr size_t kMaxEvents = 1000;

 private:
  explicit LocalStore(std::filesystem::path dir) : dir_(std::move(dir)) {}
  void notify(const WatchEvent& event);
  std::filesystem::path file_of(std::string_view kind, std::string_view name) const;

  std::filesystem::path dir_;
  mutable std::mutex mu_;
  struct Object {
    api::Resource resource;
    std::string yaml;  // as written to disk; also how changes are detected
  };
  std::map<std::pair<std::string, std::string>, Object> objects_;  // by (kind, name)
  uint64_t revision_ = 0;
  std::vector<std::weak_ptr<WatchCallback>> watchers_;
  std::vector<Event> past_events_;  // as read at open
  size_t event_lines_ = 0;          // in the file now
};

}  // namespace loadstar::store
