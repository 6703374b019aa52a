#include "agent/chunk_plan.h"

#include <algorithm>

namespace loadstar::agent {

size_t ChunkPlan::add_file(std::string key, std::vector<bool> held) {
  File f;
  f.key = std::move(key);
  f.chunks.resize(held.size(), Chunk::kMissing);
  for (size_t i = 0; i < held.size(); ++i) {
    if (!held[i]) continue;
    f.chunks[i] = Chunk::kHeld;
    ++f.held;
  }
  f.from_peer.assign(held.size(), 0);
  f.attempts.assign(held.size(), 0);
  files_.push_back(std::move(f));
  return files_.size() - 1;
}

size_t ChunkPlan::add_complete_file(std::string key) {
  File f;
  f.key = std::move(key);
  f.done = true;
  files_.push_back(std::move(f));
  return files_.size() - 1;
}

ChunkPlan::PeerView& ChunkPlan::view(const std::string& key, const std::string& peer, double now) {
  auto [it, added] = views_[key].try_emplace(peer);
  if (added) it->second.last_change = now;
  return it->second;
}

void ChunkPlan::observe_peer(const std::string& key, const std::string& peer, const BlobInfo& info,
                             double now) {
  PeerView& v = view(key, peer, now);
  v.usable = info.chunk_bytes == options_.chunk_bytes;
  v.staging = info.staging;
  // Any change of the map (a fetch started or finished) is progress.
  if (info.have != v.have) v.last_change = now;
  v.have = info.have;
  v.digests = info.digests;
}

void ChunkPlan::peer_unreachable(const std::string& key, const std::string& peer, double now) {
  PeerView& v = view(key, peer, now);
  v.usable = false;
  v.staging = false;
}

std::vector<std::string> ChunkPlan::staging_agents(const Views* views, double now) const {
  std::vector<std::string> agents{options_.self_url};
  if (views)
    for (const auto& [peer, v] : *views)
      if (v.staging && v.answers(now)) agents.push_back(peer);
  std::sort(agents.begin(), agents.end());
  return agents;
}

ChunkFetch ChunkPlan::start(ChunkFetch fetch) {
  files_[fetch.file].chunks[fetch.chunk] = Chunk::kInFlight;
  if (fetch.from_origin()) ++origin_in_flight_;
  return fetch;
}

std::optional<ChunkFetch> ChunkPlan::next(double now) {
  std::optional<ChunkFetch> own, stalled;
  for (size_t fi = 0; fi < files_.size(); ++fi) {
    const File& f = files_[fi];
    if (f.done || f.finishing) continue;
    // A file peers sent bad bytes for has no peers any more.
    const auto found = f.origin_only ? views_.end() : views_.find(f.key);
    const Views* views = found == views_.end() ? nullptr : &found->second;
    const std::vector<std::string> agents = staging_agents(views, now);
    for (uint64_t i = 0; i < f.chunks.size(); ++i) {
      if (f.chunks[i] != Chunk::kMissing) continue;
      if (views) {
        for (const auto& [peer, v] : *views)
          if (v.answers(now) && i < v.have.size() && v.have[i] == '1')
            return start({fi, i, peer, i < v.digests.size() ? v.digests[i] : ""});
        // Another agent is fetching it: left to that agent.
        const bool taken = std::any_of(views->begin(), views->end(), [&](const auto& pv) {
          return pv.second.answers(now) && i < pv.second.have.size() && pv.second.have[i] == '2';
        });
        if (taken) continue;
      }
      const std::string& owner = agents[i % agents.size()];
      if (owner == options_.self_url) {
        if (!own) own = ChunkFetch{fi, i, "", ""};
      } else if (!stalled && now - views->at(owner).last_change > options_.peer_patience_s) {
        stalled = ChunkFetch{fi, i, "", ""};
      }
    }
  }
  if (origin_in_flight_ >= options_.origin_limit) return std::nullopt;
  if (own) return start(*own);
  if (stalled) return start(*stalled);
  return std::nullopt;
}

bool ChunkPlan::fetched(const ChunkFetch& fetch) {
  File& f = files_[fetch.file];
  if (fetch.from_origin()) --origin_in_flight_;
  if (f.chunks[fetch.chunk] != Chunk::kHeld) ++f.held;
  f.chunks[fetch.chunk] = Chunk::kHeld;
  f.from_peer[fetch.chunk] = fetch.from_origin() ? 0 : 1;
  if (f.finishing || !f.complete()) return false;
  f.finishing = true;
  return true;
}

void ChunkPlan::peer_failed(const ChunkFetch& fetch, PeerFault fault, double now) {
  files_[fetch.file].chunks[fetch.chunk] = Chunk::kMissing;
  view(files_[fetch.file].key, fetch.peer, now).banned_until =
      now + (fault == PeerFault::kCorrupt ? kCorruptPeerBanS : kFailedPeerPauseS);
}

int ChunkPlan::origin_failed(const ChunkFetch& fetch) {
  File& f = files_[fetch.file];
  --origin_in_flight_;
  f.chunks[fetch.chunk] = Chunk::kMissing;
  return ++f.attempts[fetch.chunk];
}

bool ChunkPlan::start_finishing(size_t file) {
  File& f = files_[file];
  if (f.done || f.finishing || !f.complete()) return false;
  f.finishing = true;
  return true;
}

Refetch ChunkPlan::mismatch(size_t file) {
  File& f = files_[file];
  Refetch r;
  r.peers_involved =
      std::any_of(f.from_peer.begin(), f.from_peer.end(), [](uint8_t p) { return p != 0; });
  // The origin alone sent it wrong once: it gets one more chance, whole.
  if (!r.peers_involved && f.whole_retries++ >= 1) {
    r.give_up = true;
    return r;
  }
  for (uint64_t i = 0; i < f.chunks.size(); ++i) {
    if (r.peers_involved && !f.from_peer[i]) continue;
    r.chunks.push_back(i);
    if (f.chunks[i] == Chunk::kHeld) --f.held;
    f.chunks[i] = Chunk::kMissing;
  }
  f.origin_only = true;
  std::fill(f.from_peer.begin(), f.from_peer.end(), 0);
  return r;
}

void ChunkPlan::refetch(size_t file) {
  files_[file].finishing = false;
}

void ChunkPlan::finished(size_t file) {
  files_[file].done = true;
}

bool ChunkPlan::all_done() const {
  return std::all_of(files_.begin(), files_.end(), [](const File& f) { return f.done; });
}

std::vector<std::string> ChunkPlan::unfinished_keys() const {
  std::vector<std::string> keys;
  for (const auto& f : files_)
    if (!f.done) keys.push_back(f.key);
  return keys;
}

}  // namespace loadstar::agent
