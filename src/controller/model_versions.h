// Which bytes a Model's source names now. A source that can change under
// the same spec (hf://ORG/NAME without a commit, s3://, http(s)://) is
// resolved when a service first needs it and again every `interval_s`; the
// version it resolves to (the agent's Manifest::version_id) is part of the
// service's revision (rollout.h), so new bytes behind an unchanged source
// roll out as a new revision, and every replica stages exactly the version
// its revision names. A source pinned to a commit (hf://ORG/NAME@<40 hex>)
// is resolved once. file:// and synth:// are not resolved: a local file is
// used where it is, and a synthetic model is made from its spec.
//
// A resolve is network I/O, so it never runs on the reconcile thread:
// start() gives the resolver a thread of its own; a test calls poll()
// instead, with its own time.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>

#include "common/result.h"

namespace loadstar::controller {

// Whether `source` can name other bytes later without changing (hf://, s3://, http(s)://).
bool source_has_versions(std::string_view source);
// Whether a versioned source names one commit for good (hf://ORG/NAME@<40 hex>).
bool source_is_pinned(std::string_view source);
// Whether `version` looks like what the agent's Manifest::version_id makes
// (16 lower-case hex digits): it becomes a directory name on nodes.
bool valid_model_version(std::string_view version);

class ModelVersions {
 public:
  // Resolves a source to a version id (blocking; called on the resolver's thread).
  using Resolve = std::function<Result<std::string>(const std::string& source)>;

  // `changed` is called (on the resolver's thread, no lock held) when a
  // source resolves to a version other than the one known.
  ModelVersions(Resolve resolve, double interval_s, std::function<void()> changed);
  ~ModelVersions();
  ModelVersions(const ModelVersions&) = delete;
  ModelVersions& operator=(const ModelVersions&) = delete;

  void start();
  void stop();
  bool running() const { return thread_.joinable(); }

  // The sources to keep resolving from now on; the others are forgotten.
  void want(const std::set<std::string>& sources);
  // The version `source` resolved to last; nullopt: never yet.
  std::optional<std::string> version(const std::string& source) const;
  // Why its last resolve failed; empty: it did not.
  std::string error(const std::string& source) const;
  // Bumped whenever a version changes: the revisions must be found again.
  uint64_t generation() const;

  // Resolves every wanted source that is due at `now_s` (seconds, any
  // epoch): never resolved, failed more than `retry_s` ago, or older than
  // the interval (pinned ones: never again).
  void poll(double now_s);

 private:
  struct Known {
    std::string version, error;
    double resolved_at = -1, tried_at = -1;
  };
  bool due(const std::string& source, const Known& k, double now_s) const;
  void run();

  Resolve resolve_;
  const double interval_s_;
  const double retry_s_;
  std::function<void()> changed_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Known> known_;  // by source
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace loadstar::controller
