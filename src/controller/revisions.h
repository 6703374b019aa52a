// A service's rollout history: each revision its replicas ran (rollout.h),
// numbered in the order they were rolled out, with the spec and the model
// they were started from, so that a replica restarts at its own revision
// and `loadstar rollout undo` can go back to an earlier one. Kept through
// the store (ControllerRevisions in Kubernetes, files locally), at most
// `limit` per service, as a Deployment's revisionHistoryLimit.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "api/resources.h"
#include "store/store.h"

namespace loadstar::controller {

struct Revision {
  std::string hash;  // rollout.h's revision_hash
  uint32_t number = 0;
  api::InferenceService service;    // the spec its replicas start from
  std::optional<api::Model> model;  // the model as it was; none: it did not exist
  std::string model_version;        // what its source resolved to (model_versions.h); may be empty
  std::string created;              // RFC 3339, when first rolled out
};

class RevisionHistory {
 public:
  explicit RevisionHistory(store::ResourceStore& store, size_t limit = 10)
      : store_(store), limit_(limit) {}

  // The revision `svc` with `model` makes now. A new one is recorded with
  // the next number; one that returns (an undo, or an edit back) takes the
  // next number again, as kubectl's history shows it.
  // `adapters`: the Models of the adapters its replicas load at start.
  std::shared_ptr<const Revision> current(const api::InferenceService& svc, const api::Model* model,
                                          const std::string& model_version,
                                          std::chrono::system_clock::time_point now,
                                          std::span<const api::Model> adapters = {});
  // The newest revision made of `svc` and `model` as they are, whatever
  // version of the model's bytes it had; null: none. Until a versioned
  // source is resolved again, a service stays at it.
  std::shared_ptr<const Revision> latest_of(const api::InferenceService& svc,
                                            const api::Model* model,
                                            std::span<const api::Model> adapters = {});
  // A revision of `service` by hash (a Pod's label), or by number; null: not kept.
  std::shared_ptr<const Revision> find(const std::string& service, const std::string& hash);
  std::shared_ptr<const Revision> numbered(const std::string& service, uint32_t number);
  // Oldest first.
  std::vector<std::shared_ptr<const Revision>> of(const std::string& service);
  // A revision's rollout progress (JSON; empty: none recorded), kept with
  // it so that a new controller goes on where the last one was.
  std::string state(const std::string& service, const std::string& hash);
  void set_state(const std::string& service, const std::string& hash, std::string state);

 private:
  struct Service {
    std::vector<std::shared_ptr<const Revision>> revisions;  // by number
    std::vector<std::string> unsaved;                        // hashes the store has yet to take
    std::map<std::string, std::string> states;               // by hash
  };
  Service& load(const std::string& service);
  void save(const std::string& service, Service& s);

  store::ResourceStore& store_;
  size_t limit_;
  std::map<std::string, Service> services_;
};

// A record's data (JSON) and back.
std::string encode_revision(const Revision& revision);
Result<Revision> decode_revision(const store::RevisionRecord& record);

}  // namespace loadstar::controller
