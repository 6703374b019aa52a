#include "agent/staging.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "common/units.h"

namespace loadstar::agent {

namespace {

ChunkPlanOptions plan_options(const AgentOptions& options, bool have_peers) {
  ChunkPlanOptions plan;
  plan.self_url = options.self_url;
  plan.chunk_bytes = options.cache.chunk_bytes;
  plan.origin_limit = options.origin_connections > 0 ? options.origin_connections
                      : have_peers                   ? 2
                                                     : options.connections;
  plan.peer_patience_s = options.peer_patience_s;
  return plan;
}

}  // namespace

Transfer::Transfer(Agent::Job& job, const AgentOptions& options, Cache& cache,
                   Agent::Counters& counters, PeerClient& peer_client,
                   std::vector<std::string> peers)
    : job_(job),
      options_(options),
      cache_(cache),
      counters_(counters),
      peer_client_(peer_client),
      peers_(std::move(peers)),
      plan_(plan_options(options, !peers_.empty())) {
  std::lock_guard lock(job_.mu);
  for (const File& f : job_.files) {
    if (f.cached) {
      plan_.add_complete_file(f.key);
      continue;
    }
    std::vector<bool> held(f.part->chunks());
    for (uint64_t i = 0; i < held.size(); ++i) held[i] = f.part->has(i);
    plan_.add_file(f.key, std::move(held));
  }
}

Status Transfer::run() {
  finish_resumed_files();
  std::atomic<bool> polling{!peers_.empty()};
  std::thread poller;
  if (polling) {
    // Agents that start together find each other before the first origin
    // fetch: register (done above), wait one poll interval, look again.
    poll_peers();
    std::this_thread::sleep_for(std::chrono::duration<double>(options_.peer_poll_s));
    poll_peers();
    poller = std::thread([&] {
      while (polling) {
        poll_peers();
        std::unique_lock lock(job_.mu);
        job_.cv.wait_for(lock, std::chrono::duration<double>(options_.peer_poll_s),
                         [&] { return !polling.load() || job_.failed; });
      }
    });
  }
  std::vector<std::thread> workers;
  for (int i = 0; i < std::max(1, options_.connections); ++i)
    workers.emplace_back([this] { work(); });
  for (auto& w : workers) w.join();
  polling = false;
  job_.cv.notify_all();
  if (poller.joinable()) poller.join();
  std::lock_guard lock(job_.mu);
  if (job_.failed) return make_error(ErrorCode::kUnavailable, "{}", job_.failure);
  return {};
}

// Files that were complete but not finished (resumed whole) finish first.
void Transfer::finish_resumed_files() {
  for (size_t fi = 0; fi < job_.files.size(); ++fi) {
    bool whole = false;
    {
      std::lock_guard lock(job_.mu);
      whole = plan_.start_finishing(fi);
    }
    if (whole) finish_file(fi);
  }
}

// Reads the peers' chunk maps of every unfinished file.
void Transfer::poll_peers() {
  std::vector<std::string> keys;
  {
    std::lock_guard lock(job_.mu);
    keys = plan_.unfinished_keys();
  }
  for (const auto& peer : peers_) {
    for (const auto& key : keys) {
      const Result<BlobInfo> info = peer_client_.blob_info(peer, key);
      std::lock_guard lock(job_.mu);
      if (info.ok())
        plan_.observe_peer(key, peer, *info, now_s());
      else
        plan_.peer_unreachable(key, peer, now_s());
    }
  }
  job_.cv.notify_all();
}

void Transfer::work() {
  std::string buffer;
  Sha256 hash;
  while (std::optional<ChunkFetch> task = take()) {
    File& f = job_.files[task->file];
    const Result<std::string> digest = fetch(*task, f, buffer, hash);
    const Status written =
        digest.ok() ? f.part->write(task->chunk, buffer, *digest) : Status(digest.error());
    if (!written.ok()) {
      if (!recover(*task, written.error())) return;
      continue;
    }
    const bool last = land(*task);
    if (!f.entry.sha256.empty() && !last) {
      std::unique_lock held(f.digest->mu, std::try_to_lock);
      if (held.owns_lock()) advance_digest(f, held, task->chunk, buffer);
    }
    if (last) finish_file(task->file);
  }
}

// Waits for the next chunk to fetch and marks it so for peers; nullopt when
// every file is done or the staging failed.
std::optional<ChunkFetch> Transfer::take() {
  std::unique_lock lock(job_.mu);
  std::optional<ChunkFetch> next;
  while (!next) {
    job_.cv.wait_for(lock, std::chrono::milliseconds(50), [&] {
      if (job_.failed || plan_.all_done()) return true;
      next = plan_.next(now_s());
      return next.has_value();
    });
    if (job_.failed || plan_.all_done()) return std::nullopt;
  }
  job_.files[next->file].part->set_fetching(next->chunk, true);
  return next;
}

// Fetches the chunk into `buffer` and checks it against what the peer lists;
// returns its SHA-256.
Result<std::string> Transfer::fetch(const ChunkFetch& task, const File& f, std::string& buffer,
                                    Sha256& hash) {
  const uint64_t length = f.part->chunk_length(task.chunk);
  buffer.clear();
  buffer.reserve(length);
  const ByteSink sink = [&](std::string_view d) {
    buffer.append(d);
    return true;
  };
  if (task.from_origin()) {
    LS_RETURN_IF_ERROR(
        job_.origin->read(f.entry, task.chunk * f.part->chunk_bytes(), length, sink));
    hash.update(buffer);
    return hash.finish_hex();
  }
  LS_ASSIGN_OR_RETURN(const std::string served,
                      peer_client_.chunk(task.peer, f.key, task.chunk, sink));
  if (buffer.size() != length)
    return make_error(ErrorCode::kUnavailable, "peer {} sent {} of {} bytes", task.peer,
                      buffer.size(), length);
  hash.update(buffer);
  std::string digest = hash.finish_hex();
  if ((!served.empty() && digest != served) ||
      (!task.peer_digest.empty() && digest != task.peer_digest)) {
    ++counters_.corrupt_peer;
    return make_error(ErrorCode::kCorrupt,
                      "chunk {} of {} from peer {} has SHA-256 {}, the peer lists {}", task.chunk,
                      f.entry.path, task.peer, digest, served.empty() ? task.peer_digest : served);
  }
  return digest;
}

// Counts a written chunk; true when it completed its file.
bool Transfer::land(const ChunkFetch& task) {
  const uint64_t length = job_.files[task.file].part->chunk_length(task.chunk);
  std::lock_guard lock(job_.mu);
  job_.files[task.file].part->set_fetching(task.chunk, false);
  (task.from_origin() ? job_.bytes_origin : job_.bytes_peers) += length;
  (task.from_origin() ? counters_.origin_bytes : counters_.peer_bytes) += length;
  return plan_.fetched(task);
}

// After a failed fetch: a peer that fails or lies sits out a while and the
// chunk goes elsewhere; the origin is retried with backoff (this worker
// sleeps) unless the error is final. False when the staging failed.
bool Transfer::recover(const ChunkFetch& task, const Error& e) {
  int attempts = 0;
  {
    std::lock_guard lock(job_.mu);
    job_.files[task.file].part->set_fetching(task.chunk, false);
    if (task.from_origin())
      attempts = plan_.origin_failed(task);
    else
      plan_.peer_failed(
          task, e.code == ErrorCode::kCorrupt ? PeerFault::kCorrupt : PeerFault::kFailed, now_s());
  }
  if (!task.from_origin()) {
    ++counters_.peer_failures;
    spdlog::warn("agent: peer fetch failed: {}", e.message);
    return true;
  }
  if (e.code == ErrorCode::kNotFound || e.code == ErrorCode::kPermissionDenied ||
      e.code == ErrorCode::kResourceExhausted || e.code == ErrorCode::kIo) {
    fail(e.message);
    return false;
  }
  if (attempts >= options_.max_attempts) {
    fail(fmt::format("gave up after {} attempts: {}", attempts, e.message));
    return false;
  }
  ++counters_.retries;
  spdlog::warn("agent: {} (attempt {}); retrying", e.message, attempts);
  std::this_thread::sleep_for(
      std::chrono::duration<double>(backoff_s(options_.backoff_s, attempts)));
  return true;
}

// Hashes the file's chunks in order as far as they are held; `fresh` is
// chunk `index`'s bytes, already in memory. Returns false on a read error.
bool Transfer::advance_digest(File& f, std::unique_lock<std::mutex>& held, uint64_t index,
                              std::string_view fresh) {
  (void)held;
  auto& d = *f.digest;
  while (d.through < f.part->chunks() && f.part->has(d.through)) {
    if (d.through == index && !fresh.empty()) {
      d.hash.update(fresh);
    } else {
      auto bytes = f.part->read(d.through);
      if (!bytes.ok()) return false;
      d.hash.update(*bytes);
    }
    ++d.through;
  }
  return true;
}

// The whole file's SHA-256: the digest advanced as chunks landed, caught up,
// else (a chunk could not be read back) the file read once more.
Result<std::string> Transfer::file_sha256(File& f) {
  Result<std::string> sha = make_error(ErrorCode::kInternal, "not hashed");
  {
    std::unique_lock held(f.digest->mu);
    if (advance_digest(f, held, f.part->chunks(), {}) && f.digest->through == f.part->chunks())
      sha = f.digest->hash.finish_hex();
    f.digest->hash = Sha256();  // a refetch after a mismatch starts over
    f.digest->through = 0;
  }
  if (!sha.ok()) sha = f.part->sha256();
  return sha;
}

// Whole-file check and move into blobs/, once every chunk is in.
void Transfer::finish_file(size_t fi) {
  File& f = job_.files[fi];
  const auto finish_start = Clock::now();
  if (!f.entry.sha256.empty()) {
    const Result<std::string> sha = file_sha256(f);
    if (!sha.ok()) return fail(sha.error().message);
    if (*sha != f.entry.sha256) return refetch(fi, *sha);
  }
  const double digest_s = seconds_since(finish_start);
  if (Status s = f.part->finish(cache_.blob_path(f.key)); !s.ok()) return fail(s.error().message);
  spdlog::info("agent: {} of '{}' complete at {:.2f}s (SHA-256 {:.2f}s, sync and move {:.2f}s)",
               f.entry.path, job_.model, seconds_since(job_.started), digest_s,
               seconds_since(finish_start) - digest_s);
  std::lock_guard lock(job_.mu);
  plan_.finished(fi);
  job_.cv.notify_all();
}

// A complete file whose SHA-256 is not the source's: the chunks peers sent
// are dropped and fetched from the origin (all of them, once, when the origin
// alone sent the file).
void Transfer::refetch(size_t fi, const std::string& sha) {
  File& f = job_.files[fi];
  Refetch drop;
  {
    std::lock_guard lock(job_.mu);
    drop = plan_.mismatch(fi);
    if (drop.give_up) {
      ++counters_.corrupt_origin;
      job_.failed = true;
      job_.failure = fmt::format(
          "{}: the origin sent bytes whose SHA-256 is {}, the source lists {}; nothing was "
          "published",
          f.entry.path, sha, f.entry.sha256);
      job_.cv.notify_all();
      return;
    }
    ++(drop.peers_involved ? counters_.corrupt_peer : counters_.corrupt_origin);
  }
  spdlog::warn("agent: {} of '{}' failed its SHA-256 check; refetching {} chunks from {}",
               f.entry.path, job_.model, drop.chunks.size(), "the origin");
  if (Status s = f.part->forget(drop.chunks); !s.ok()) return fail(s.error().message);
  {
    std::lock_guard lock(job_.mu);
    plan_.refetch(fi);
  }
  job_.cv.notify_all();
}

void Transfer::fail(std::string why) {
  std::lock_guard lock(job_.mu);
  if (!job_.failed) {
    job_.failed = true;
    job_.failure = std::move(why);
  }
  job_.cv.notify_all();
}

}  // namespace loadstar::agent
