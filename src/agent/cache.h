// The node agent's cache on disk:
//
//   ROOT/blobs/KEY              complete, verified files, named by blob_key()
//                               (content-addressed when the source gives SHA-256)
//   ROOT/partial/KEY.data       a file being downloaded (sparse, full size)
//   ROOT/partial/KEY.chunks     "index sha256" per chunk written (resume log)
//   ROOT/models/NAME/VERSION/   published model directories: hard links to
//                               blobs plus .loadstar-manifest.json
//
// A model directory appears by rename of a complete temporary directory, so
// an engine never sees half a model. Blobs are shared by hard links: a blob
// whose link count drops to 1 belongs to no model and goes with eviction.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/eviction.h"
#include "agent/manifest.h"
#include "common/result.h"

namespace loadstar::agent {

// One file being downloaded, chunk by chunk; peers may read its verified
// chunks while the rest is still coming. Thread-safe.
class PartialFile {
 public:
  // Opens the file for `key`, resuming what an earlier run left: every chunk
  // in the log is re-read and re-hashed, and kept only if it still matches.
  static Result<std::shared_ptr<PartialFile>> open(const std::filesystem::path& dir,
                                                   const std::string& key, uint64_t size,
                                                   uint64_t chunk_bytes);
  ~PartialFile();
  PartialFile(const PartialFile&) = delete;
  PartialFile& operator=(const PartialFile&) = delete;

  const std::string& key() const { return key_; }
  uint64_t size() const { return size_; }
  uint64_t chunk_bytes() const { return chunk_bytes_; }
  uint64_t chunks() const { return digests_.size(); }
  uint64_t chunk_length(uint64_t index) const;

  bool has(uint64_t index) const;
  std::string digest(uint64_t index) const;  // empty when missing
  uint64_t verified_bytes() const;
  uint64_t resumed_bytes() const { return resumed_bytes_; }
  bool complete() const;
  // Per chunk: '1' held, '2' being fetched (peers leave it alone), '0' missing.
  std::string have_bits() const;
  void set_fetching(uint64_t index, bool fetching);

  // Writes a chunk whose bytes the caller verified, then logs it.
  Status write(uint64_t index, std::string_view data, const std::string& sha256);
  // Drops chunks (e.g. after the whole file failed its digest).
  Status forget(const std::vector<uint64_t>& indexes);
  // The bytes of a held chunk.
  Result<std::string> read(uint64_t index) const;
  // SHA-256 of the whole file as written.
  Result<std::string> sha256() const;
  // Flushes and moves the data to `blob` (same file system), removing the log.
  Status finish(const std::filesystem::path& blob);

 private:
  PartialFile() = default;
  std::string key_;
  uint64_t size_ = 0, chunk_bytes_ = 0, resumed_bytes_ = 0;
  std::filesystem::path data_, log_;
  int fd_ = -1;
  mutable std::mutex mu_;
  std::vector<std::string> digests_;
  std::vector<uint8_t> fetching_;
};

struct CacheOptions {
  std::filesystem::path root;
  uint64_t capacity_bytes = 0;  // 0: no limit but the disk
  uint64_t chunk_bytes = 16ull << 20;
};

struct CachedModel {
  std::string name;
  std::string version;
  std::filesystem::path dir;
  Manifest manifest;
  uint64_t bytes = 0;        // all its files
  uint64_t own_bytes = 0;    // freed if it were evicted (blobs no other model links)
  int64_t last_used_ms = 0;  // wall clock
  int in_use = 0;
  bool pinned = false;
};

class Cache {
 public:
  static Result<std::unique_ptr<Cache>> open(CacheOptions options);

  const CacheOptions& options() const { return options_; }
  std::filesystem::path blob_path(const std::string& key) const;
  bool has_blob(const std::string& key) const;
  std::filesystem::path partial_dir() const { return options_.root / "partial"; }

  std::optional<CachedModel> find(const std::string& name) const;
  // The directory of `version` of `name` when it is published here (the
  // newest one, or the one before it: see publish); nullopt otherwise, or
  // when either is not a valid name.
  std::optional<std::filesystem::path> version_dir(const std::string& name,
                                                   const std::string& version) const;
  std::vector<CachedModel> list() const;

  // Publishes `name` from complete blobs (hard links), atomically. The
  // version it replaces stays (replicas of a rollout's old revision may
  // restart on it; their Pods read it by version); older ones go with the
  // blobs only they held.
  Result<std::filesystem::path> publish(const std::string& name, const Manifest& manifest);
  // Makes room for `need` more bytes for `for_model`: evicts least recently
  // used models not in use or pinned; fails with what holds the space, or when
  // the disk itself has less free.
  Status reserve(const std::string& for_model, uint64_t need);
  Status evict(const std::string& name);

  void touch(const std::string& name);
  void acquire(const std::string& name);
  void release(const std::string& name);
  // Replaces every use count at once (a controller that knows which models
  // its running engines use, level-triggered); touches the models in use.
  void set_in_use(const std::map<std::string, int>& uses);
  void pin(const std::string& name, bool pinned);

  uint64_t used_bytes() const;  // blobs and partial files
  uint64_t evictions() const;

 private:
  explicit Cache(CacheOptions options) : options_(std::move(options)) {}
  Status scan();
  Status evict_locked(const std::string& name);
  // Removes a published version directory and the blobs only it held.
  void remove_version_dir(const std::filesystem::path& dir);
  uint64_t own_bytes_locked(const CachedModel& m) const;

  CacheOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, CachedModel> models_;
  std::map<std::string, int> in_use_;
  std::map<std::string, bool> pinned_;
  uint64_t evictions_ = 0;
};

// A model name usable as a directory name.
Status validate_model_name(std::string_view name);

}  // namespace loadstar::agent
