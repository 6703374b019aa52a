// The node agent: stages models into the cache from their source and from
// peers, shares what it holds with peers, and reports progress, inventory
// and metrics. `loadstar agent` serves it over HTTP (agent_server.h);
// `loadstar up` embeds one.
//
// Staging a model: resolve the source's file list, make room (LRU eviction),
// then fetch every missing chunk with `connections` fetches in flight --
// from a peer that holds it, else from the origin when this agent is the
// chunk's owner among the agents staging the same file (owner = rank of the
// chunk index among them), else after waiting `peer_patience_s` for the
// owner to produce it. Each chunk is hashed, checked against the peer's
// digest, written and logged (resume); each file is checked against the
// source's SHA-256 when there is one and moved into blobs/; the model is
// published when all its files are. Which chunk to fetch from whom is decided
// by a ChunkPlan (chunk_plan.h, pure); peers are reached through a PeerClient
// (peer_client.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/cache.h"
#include "agent/chunk_plan.h"
#include "agent/source.h"

namespace loadstar::agent {

class PeerClient;

struct AgentOptions {
  CacheOptions cache;
  SourceOptions source;
  std::vector<std::string> peers;  // http://host:port of the other agents
  std::string self_url;            // how peers name this agent (orders chunk ownership)
  int connections = 8;             // chunk fetches in flight per model
  // Of those, at most this many from the origin when there are peers, so
  // that owned chunks finish one after another and peers can take them
  // while the origin is still sending (0: 2 with peers, all without).
  int origin_connections = 0;
  int max_attempts = 5;        // per chunk from the origin, transient errors
  double backoff_s = 0.5;      // first retry delay; doubles, at most 10 s
  double peer_patience_s = 5;  // how long a stalled owner keeps its chunks
  double peer_poll_s = 0.2;    // how often peers' chunk maps are read while staging
  // How peers are asked for chunk maps and chunks; null: over HTTP. Tests
  // inject faults here.
  std::shared_ptr<PeerClient> peer_client;
  // The Authorization header sent to peers (the internal token: "Bearer
  // ..."); "" none. For the HTTP peer client.
  std::string peer_authorization;
  // The kubelet's device checkpoint on this node (device_checkpoint.h),
  // served at GET /v1/devices; empty: not on a kubelet's node.
  std::string device_checkpoint;
};

enum class StageState { kResolving, kDownloading, kReady, kFailed };
const char* stage_state_name(StageState state);

struct StageProgress {
  std::string model;
  std::string source;
  StageState state = StageState::kResolving;
  uint64_t bytes_total = 0;
  uint64_t bytes_done = 0;    // verified, whatever their origin
  uint64_t bytes_cached = 0;  // already in the cache or resumed from an earlier run
  uint64_t bytes_origin = 0;  // fetched from the source
  uint64_t bytes_peers = 0;   // fetched from peers
  double elapsed_s = 0;
  double rate_bytes_per_s = 0;
  double eta_s = -1;  // -1: unknown
  std::string error;
  std::filesystem::path dir;  // when ready
  std::string version;        // what the source resolved to (Manifest::version_id), once known
  std::string want_version;   // the version it was asked for; empty: whatever the source holds
};

class Agent {
 public:
  static Result<std::unique_ptr<Agent>> create(AgentOptions options);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Starts staging `model` from `source`, or joins the staging of it already
  // in progress; returns at once. A ready model is only touched. With a
  // `version` (Manifest::version_id, as resolve_version gave it earlier):
  // that version, ready at once when this node holds it, else staged if the
  // source still resolves to it, else a failure that says so: a replica
  // restarted at an older revision never gets other bytes than its own.
  // One staging per model at a time: asked for another version while one
  // is in progress, it answers with that one's progress.
  StageProgress stage(const std::string& model, const std::string& source, bool pin = false,
                      const std::string& version = "");
  // What `source` holds now (its file list; network I/O, tried up to
  // `attempts` times, 0: as a staging is). Refused as open_source refuses
  // what the policy does not admit.
  Result<Manifest> resolve_source(const std::string& source, int attempts = 0);
  std::optional<StageProgress> progress(const std::string& model) const;
  std::vector<StageProgress> all_progress() const;
  // Blocks until the model is ready (its directory) or failed (the error).
  Result<std::filesystem::path> wait(const std::string& model, double timeout_s);

  Cache& cache() { return *cache_; }
  const AgentOptions& options() const { return options_; }
  void set_peers(std::vector<std::string> peers);

  // Peer side: what this agent holds of a file, and one verified chunk.
  std::optional<BlobInfo> blob_info(const std::string& key) const;
  Result<std::string> read_chunk(const std::string& key, uint64_t index, std::string* sha256);

  // Prometheus text: loadstar_agent_* metrics.
  std::string metrics_text() const;

  struct Job;
  struct Counters;

 private:
  explicit Agent(AgentOptions options);
  void run_job(const std::shared_ptr<Job>& job);
  // The steps of a staging, in order.
  Status stage_files(Job& job);
  Result<Manifest> resolve(Source& origin, int attempts = 0);
  bool use_cached(Job& job, const Manifest& manifest);
  uint64_t list_files(Job& job, const Manifest& manifest);
  Status open_partials(Job& job);
  Status fetch_missing(Job& job);

  AgentOptions options_;
  std::unique_ptr<Cache> cache_;
  std::unique_ptr<Counters> counters_;
  std::shared_ptr<PeerClient> peer_client_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;              // by model
  std::map<std::string, std::shared_ptr<PartialFile>> partials_;  // by blob key
  std::vector<std::string> peers_;
  bool stopping_ = false;
};

}  // namespace loadstar::agent
