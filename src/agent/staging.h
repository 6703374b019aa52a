// The inside of a staging, shared by the agent and its transfer: the job's
// state, the agent's counters, and the Transfer that runs the fetch phase.
// Not a public header: only src/agent includes it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/agent.h"
#include "agent/chunk_plan.h"
#include "agent/peer_client.h"
#include "common/digest.h"

namespace loadstar::agent {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Agent::Counters {
  std::atomic<uint64_t> origin_bytes{0}, peer_bytes{0}, resumed_bytes{0}, served_bytes{0};
  std::atomic<uint64_t> corrupt_origin{0}, corrupt_peer{0}, retries{0}, peer_failures{0};
  std::atomic<uint64_t> staged{0}, failed{0}, hits{0};
};

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The steady clock in seconds, as the chunk plan takes the time.
inline double now_s() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

// Retry `attempt` (from 1) waits `base_s`, doubling, at most 10 s.
inline double backoff_s(double base_s, int attempt) {
  return std::min(10.0, base_s * (1 << (attempt - 1)));
}

struct Agent::Job {
  std::string model, source;
  bool pin = false;
  std::string want_version;  // the version the caller needs; empty: whatever the source has
  Clock::time_point started = Clock::now();

  mutable std::mutex mu;
  std::condition_variable cv;
  StageState state = StageState::kResolving;
  std::string error;
  fs::path dir;
  std::string version;  // the resolved one (Manifest::version_id), once known
  uint64_t bytes_total = 0, bytes_cached = 0;
  std::atomic<uint64_t> bytes_origin{0}, bytes_peers{0};
  std::thread thread;

  // Set up before the download starts; during it only `digest` changes
  // (which chunk is where is the transfer's ChunkPlan).
  struct File {
    FileEntry entry;
    std::string key;
    bool cached = false;                // already in blobs/: nothing to fetch
    std::shared_ptr<PartialFile> part;  // the download, unless cached
    // The file's SHA-256, advanced over the chunks in order as they land, so
    // that a finished file needs no second full read (own lock: workers
    // that find it taken leave the catching up to its holder or to finish).
    struct Digest {
      std::mutex mu;
      Sha256 hash;
      uint64_t through = 0;  // chunks [0, through) hashed
    };
    std::unique_ptr<Digest> digest = std::make_unique<Digest>();
  };
  std::vector<File> files;
  std::unique_ptr<Source> origin;
  bool failed = false;  // guarded by mu
  std::string failure;
};

// The fetch phase of one staging: `connections` workers take chunks from the
// plan, fetch them from the origin or a peer, verify, write and log them, and
// finish each file when its last chunk is in; a poller keeps the peers' chunk
// maps current. The plan and the job's state are guarded by job.mu, which is
// never held during I/O.
class Transfer {
 public:
  Transfer(Agent::Job& job, const AgentOptions& options, Cache& cache, Agent::Counters& counters,
           PeerClient& peer_client, std::vector<std::string> peers);
  // Returns when every file is in blobs/, or with why the staging failed.
  Status run();

 private:
  using File = Agent::Job::File;
  void finish_resumed_files();
  void poll_peers();
  void work();
  std::optional<ChunkFetch> take();
  Result<std::string> fetch(const ChunkFetch& task, const File& f, std::string& buffer,
                            Sha256& hash);
  bool land(const ChunkFetch& task);
  bool recover(const ChunkFetch& task, const Error& e);
  bool advance_digest(File& f, std::unique_lock<std::mutex>& held, uint64_t index,
                      std::string_view fresh);
  Result<std::string> file_sha256(File& f);
  void finish_file(size_t fi);
  void refetch(size_t fi, const std::string& sha);
  void fail(std::string why);

  Agent::Job& job_;
  const AgentOptions& options_;
  Cache& cache_;
  Agent::Counters& counters_;
  PeerClient& peer_client_;
  const std::vector<std::string> peers_;
  ChunkPlan plan_;  // guarded by job_.mu
};

}  // namespace loadstar::agent
