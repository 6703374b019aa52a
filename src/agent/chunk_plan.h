// Which chunk a staging fetches next, and from whom. Pure: the agent feeds it
// what its peers hold and what its fetches did, with the time; it answers
// with the next fetch. The agent does the I/O around it (agent.cpp).
//
// The order, for each free worker: a chunk some peer holds (from that peer);
// else a chunk this agent owns -- among the agents staging the file, sorted
// by URL, chunk i belongs to agent i mod n -- that no one is fetching; else
// a chunk whose owner has shown no progress (no change of its chunk map) for
// `peer_patience_s`. Origin fetches are capped at `origin_limit` in flight,
// so that owned chunks finish one after another and peers can take them
// while the origin is still sending. A chunk a peer is fetching ('2') is left
// to it: its own stall timeout bounds how long that lasts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace loadstar::agent {

// What an agent holds of one file, as it tells its peers (GET /v1/blobs/KEY).
struct BlobInfo {
  std::string key;
  uint64_t size = 0;
  uint64_t chunk_bytes = 0;
  bool complete = false;
  bool staging = false;
  std::string have;                  // per chunk: '1' held, '2' being fetched, '0' missing
  std::vector<std::string> digests;  // per chunk held; empty for complete blobs
};

struct ChunkPlanOptions {
  std::string self_url;        // how peers name this agent (orders chunk ownership)
  uint64_t chunk_bytes = 0;    // peers that cut files otherwise are not used
  int origin_limit = 1;        // origin fetches in flight at most
  double peer_patience_s = 5;  // how long a stalled owner keeps its chunks
};

// One chunk to fetch.
struct ChunkFetch {
  size_t file = 0;  // index in the order files were added
  uint64_t chunk = 0;
  std::string peer;         // empty: the origin
  std::string peer_digest;  // the chunk's SHA-256 in the peer's map; empty: none listed
  bool from_origin() const { return peer.empty(); }
};

enum class PeerFault {
  kFailed,   // gone, reset, stalled, short: sits out a while
  kCorrupt,  // sent bytes that do not match its digests: not asked again this staging
};

// What to do about a complete file whose SHA-256 is not the source's.
struct Refetch {
  bool peers_involved = false;   // some chunks came from peers: only those are dropped
  bool give_up = false;          // the origin alone sent it wrong, a second time
  std::vector<uint64_t> chunks;  // to forget on disk, then refetch(file) from the origin
};

// Not thread-safe: the agent calls it under its staging's lock. Times are
// seconds on any monotonic clock, the same for every call.
class ChunkPlan {
 public:
  static constexpr double kFailedPeerPauseS = 5;
  static constexpr double kCorruptPeerBanS = 3600;  // longer than any staging

  explicit ChunkPlan(ChunkPlanOptions options) : options_(std::move(options)) {}

  // Files, in the agent's order (the index is ChunkFetch::file): one to
  // fetch, `held[i]` true for chunks already verified on disk (resumed), or
  // one already complete in the cache.
  size_t add_file(std::string key, std::vector<bool> held);
  size_t add_complete_file(std::string key);

  // What `peer` answered about `key` when asked at `now`, or that it did not.
  void observe_peer(const std::string& key, const std::string& peer, const BlobInfo& info,
                    double now);
  void peer_unreachable(const std::string& key, const std::string& peer, double now);

  // The next fetch, marked in flight; nullopt: nothing to fetch now.
  std::optional<ChunkFetch> next(double now);
  // The fetch's chunk is verified and written. True when that completed its
  // file: the caller, and no one else, then checks and finishes the file.
  bool fetched(const ChunkFetch& fetch);
  // A peer fetch failed: the peer sits out (kFailedPeerPauseS, or
  // kCorruptPeerBanS when it lied) and the chunk goes elsewhere.
  void peer_failed(const ChunkFetch& fetch, PeerFault fault, double now);
  // An origin fetch failed; returns the attempts made at that chunk so far.
  int origin_failed(const ChunkFetch& fetch);

  // Marks a file whose every chunk was resumed as finishing; false if it is
  // not complete or already taken care of.
  bool start_finishing(size_t file);
  // The finishing file failed its whole-file SHA-256: what to drop. Unless
  // giving up, the file is fetched from the origin only from now on, and no
  // chunk of it is handed out until refetch(file).
  Refetch mismatch(size_t file);
  void refetch(size_t file);
  // The finishing file is verified and in the cache.
  void finished(size_t file);

  bool all_done() const;
  // Keys of the files not done yet, whose peers' maps are worth reading.
  std::vector<std::string> unfinished_keys() const;
  int origin_in_flight() const { return origin_in_flight_; }

 private:
  enum class Chunk : uint8_t { kMissing, kInFlight, kHeld };
  struct File {
    std::string key;
    std::vector<Chunk> chunks;
    std::vector<uint8_t> from_peer;  // per held chunk: 1 when a peer sent it
    std::vector<int> attempts;       // failed origin fetches per chunk
    uint64_t held = 0;
    bool origin_only = false;  // peers sent bad bytes for it: the origin alone
    bool finishing = false;    // complete, being checked and moved: nothing to fetch
    bool done = false;
    int whole_retries = 0;  // whole-file refetches after an origin-only mismatch
    bool complete() const { return held == chunks.size(); }
  };
  // What one peer holds of one file, as last read.
  struct PeerView {
    bool staging = false;
    bool usable = false;  // answered, with the same chunk size
    std::string have;
    std::vector<std::string> digests;
    double last_change = 0;  // when `have` last changed (or was first read)
    double banned_until = std::numeric_limits<double>::lowest();
    bool answers(double now) const { return usable && banned_until <= now; }
  };
  using Views = std::map<std::string, PeerView>;  // by peer URL: a fixed order

  PeerView& view(const std::string& key, const std::string& peer, double now);
  // Who fetches chunk i of `file` from the origin: the agents staging it.
  std::vector<std::string> staging_agents(const Views* views, double now) const;
  ChunkFetch start(ChunkFetch fetch);

  ChunkPlanOptions options_;
  std::vector<File> files_;
  std::map<std::string, Views> views_;  // by blob key
  int origin_in_flight_ = 0;
};

}  // namespace loadstar::agent
