#include "agent/agent.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <random>
#include <set>
#include <thread>

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "agent/http_fetch.h"
#include "common/digest.h"
#include "common/json_value.h"
#include "common/units.h"

namespace loadstar::agent {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

const char* stage_state_name(StageState state) {
  switch (state) {
    case StageState::kResolving:
      return "resolving";
    case StageState::kDownloading:
      return "downloading";
    case StageState::kReady:
      return "ready";
    case StageState::kFailed:
      return "failed";
  }
  return "unknown";
}

struct Agent::Counters {
  std::atomic<uint64_t> origin_bytes{0}, peer_bytes{0}, resumed_bytes{0}, served_bytes{0};
  std::atomic<uint64_t> corrupt_origin{0}, corrupt_peer{0}, retries{0}, peer_failures{0};
  std::atomic<uint64_t> staged{0}, failed{0}, hits{0};
};

namespace {

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// What one peer holds of one file, as last read.
struct PeerView {
  bool staging = false;
  bool usable = false;  // same chunk size, answered
  std::string have;
  std::vector<std::string> digests;
  Clock::time_point last_change = Clock::now();
  Clock::time_point banned_until{};
};

}  // namespace

struct Agent::Job {
  std::string model, source;
  bool pin = false;
  Clock::time_point started = Clock::now();

  mutable std::mutex mu;
  std::condition_variable cv;
  StageState state = StageState::kResolving;
  std::string error;
  fs::path dir;
  uint64_t bytes_total = 0, bytes_cached = 0;
  std::atomic<uint64_t> bytes_origin{0}, bytes_peers{0};
  std::thread thread;

  // While downloading (guarded by mu).
  struct File {
    FileEntry entry;
    std::string key;
    std::shared_ptr<PartialFile> part;
    std::vector<uint8_t> in_flight, from_peer;
    std::vector<int> attempts;
    bool origin_only = false, finishing = false, done = false;
    int whole_retries = 0;
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
  std::map<std::string, std::map<std::string, PeerView>> views;  // key -> peer -> view
  std::unique_ptr<Source> origin;
  bool failed = false;
  std::string failure;
};

Agent::Agent(AgentOptions options)
    : options_(std::move(options)), counters_(std::make_unique<Counters>()) {
  peers_ = options_.peers;
}

Result<std::unique_ptr<Agent>> Agent::create(AgentOptions options) {
  std::unique_ptr<Agent> agent(new Agent(std::move(options)));
  LS_ASSIGN_OR_RETURN(agent->cache_, Cache::open(agent->options_.cache));
  return agent;
}

Agent::~Agent() {
  std::vector<std::shared_ptr<Job>> jobs;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (auto& [name, job] : jobs_) jobs.push_back(job);
  }
  for (auto& job : jobs) {
    {
      std::lock_guard lock(job->mu);
      if (!job->failed && job->state != StageState::kReady) {
        job->failed = true;
        job->failure = "the agent is stopping";
      }
    }
    job->cv.notify_all();
    if (job->thread.joinable()) job->thread.join();
  }
}

void Agent::set_peers(std::vector<std::string> peers) {
  std::lock_guard lock(mu_);
  peers_ = std::move(peers);
}

StageProgress Agent::stage(const std::string& model, const std::string& source, bool pin) {
  std::shared_ptr<Job> job;
  {
    std::lock_guard lock(mu_);
    auto it = jobs_.find(model);
    bool reuse = it != jobs_.end() && it->second->source == source;
    if (reuse) {
      std::lock_guard jl(it->second->mu);
      // A failed staging is tried again; a ready one again only if evicted since.
      reuse = it->second->state != StageState::kFailed &&
              !(it->second->state == StageState::kReady && !cache_->find(model));
    }
    if (reuse) {
      if (pin) cache_->pin(model, true);
      cache_->touch(model);
      job = it->second;
    } else {
      if (it != jobs_.end() && it->second->thread.joinable()) {
        std::shared_ptr<Job> old = it->second;
        {
          std::lock_guard jl(old->mu);
          if (old->state != StageState::kReady && old->state != StageState::kFailed) {
            old->failed = true;
            old->failure = "replaced by a staging from " + source;
          }
        }
        old->cv.notify_all();
        old->thread.join();
      }
      job = std::make_shared<Job>();
      job->model = model;
      job->source = source;
      job->pin = pin;
      jobs_[model] = job;
      job->thread = std::thread([this, job] { run_job(job); });
    }
  }
  return *progress(model);
}

std::optional<StageProgress> Agent::progress(const std::string& model) const {
  std::shared_ptr<Job> job;
  {
    std::lock_guard lock(mu_);
    auto it = jobs_.find(model);
    if (it == jobs_.end()) return std::nullopt;
    job = it->second;
  }
  StageProgress p;
  std::lock_guard lock(job->mu);
  p.model = job->model;
  p.source = job->source;
  p.state = job->state;
  p.error = job->error;
  p.dir = job->dir;
  p.bytes_total = job->bytes_total;
  p.bytes_cached = job->bytes_cached;
  p.bytes_origin = job->bytes_origin;
  p.bytes_peers = job->bytes_peers;
  p.bytes_done = p.bytes_cached + p.bytes_origin + p.bytes_peers;
  if (p.state == StageState::kReady) p.bytes_done = p.bytes_total;
  p.bytes_done = std::min(p.bytes_done, p.bytes_total);
  p.elapsed_s = seconds_since(job->started);
  const uint64_t fetched = p.bytes_origin + p.bytes_peers;
  p.rate_bytes_per_s = p.elapsed_s > 0 ? fetched / p.elapsed_s : 0;
  if (p.state == StageState::kReady)
    p.eta_s = 0;
  else if (p.rate_bytes_per_s > 0 && p.state == StageState::kDownloading)
    p.eta_s = (p.bytes_total - p.bytes_done) / p.rate_bytes_per_s;
  return p;
}

std::vector<StageProgress> Agent::all_progress() const {
  std::vector<std::string> names;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, job] : jobs_) names.push_back(name);
  }
  std::vector<StageProgress> out;
  for (const auto& n : names)
    if (auto p = progress(n)) out.push_back(std::move(*p));
  return out;
}

Result<fs::path> Agent::wait(const std::string& model, double timeout_s) {
  std::shared_ptr<Job> job;
  {
    std::lock_guard lock(mu_);
    auto it = jobs_.find(model);
    if (it == jobs_.end())
      return make_error(ErrorCode::kNotFound, "model '{}' is not being staged", model);
    job = it->second;
  }
  std::unique_lock lock(job->mu);
  const bool finished = job->cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] {
    return job->state == StageState::kReady || job->state == StageState::kFailed;
  });
  if (!finished)
    return make_error(ErrorCode::kUnavailable, "staging '{}' did not finish within {}s", model,
                      timeout_s);
  if (job->state == StageState::kFailed)
    return make_error(ErrorCode::kUnavailable, "staging '{}' failed: {}", model, job->error);
  return job->dir;
}

void Agent::run_job(const std::shared_ptr<Job>& job) {
  Status status = stage_files(*job);
  {
    std::lock_guard lock(mu_);
    for (const auto& f : job->files) partials_.erase(f.key);
  }
  std::lock_guard lock(job->mu);
  if (status.ok()) {
    job->state = StageState::kReady;
    ++counters_->staged;
    spdlog::info("agent: '{}' ready in {} after {:.2f}s ({} from origin, {} from peers)",
                 job->model, job->dir.string(), seconds_since(job->started),
                 format_bytes(job->bytes_origin), format_bytes(job->bytes_peers));
  } else {
    job->state = StageState::kFailed;
    job->error = status.error().message;
    ++counters_->failed;
    spdlog::error("agent: staging '{}' failed: {}", job->model, job->error);
  }
  job->cv.notify_all();
}

Status Agent::stage_files(Job& job) {
  LS_RETURN_IF_ERROR(validate_model_name(job.model));
  LS_ASSIGN_OR_RETURN(job.origin, open_source(job.source, options_.source));
  // Resolve, retrying what may pass.
  Result<Manifest> manifest = make_error(ErrorCode::kInternal, "not resolved");
  for (int attempt = 1;; ++attempt) {
    manifest = job.origin->resolve();
    if (manifest.ok() || attempt >= options_.max_attempts ||
        manifest.error().code == ErrorCode::kNotFound ||
        manifest.error().code == ErrorCode::kPermissionDenied ||
        manifest.error().code == ErrorCode::kInvalidArgument ||
        manifest.error().code == ErrorCode::kCorrupt)
      break;
    ++counters_->retries;
    std::this_thread::sleep_for(
        std::chrono::duration<double>(std::min(10.0, options_.backoff_s * (1 << (attempt - 1)))));
  }
  if (!manifest.ok()) return std::move(manifest).error();
  if (job.pin) cache_->pin(job.model, true);
  if (auto cached = cache_->find(job.model); cached && cached->version == manifest->version_id()) {
    cache_->touch(job.model);
    ++counters_->hits;
    std::lock_guard lock(job.mu);
    job.bytes_total = job.bytes_cached = manifest->total_bytes();
    job.dir = cached->dir;
    return {};
  }
  // What is missing, and room for it.
  uint64_t need = 0;
  {
    std::lock_guard lock(job.mu);
    job.bytes_total = manifest->total_bytes();
    for (const auto& entry : manifest->files) {
      Job::File f;
      f.entry = entry;
      f.key = blob_key(*manifest, entry);
      if (cache_->has_blob(f.key)) {
        f.done = true;
        job.bytes_cached += entry.size;
      } else {
        need += entry.size;
      }
      job.files.push_back(std::move(f));
    }
  }
  LS_RETURN_IF_ERROR(cache_->reserve(job.model, need));
  for (auto& f : job.files) {
    if (f.done) continue;
    LS_ASSIGN_OR_RETURN(f.part, PartialFile::open(cache_->partial_dir(), f.key, f.entry.size,
                                                  options_.cache.chunk_bytes));
    const uint64_t n = f.part->chunks();
    f.in_flight.assign(n, 0);
    f.from_peer.assign(n, 0);
    f.attempts.assign(n, 0);
    {
      std::lock_guard lock(job.mu);
      job.bytes_cached += f.part->resumed_bytes();
    }
    counters_->resumed_bytes += f.part->resumed_bytes();
    std::lock_guard lock(mu_);
    partials_[f.key] = f.part;
  }
  {
    std::lock_guard lock(job.mu);
    job.state = StageState::kDownloading;
  }
  spdlog::info("agent: staging '{}' from {}: {} files, {} to fetch", job.model, job.source,
               job.files.size(), format_bytes(need));

  std::vector<std::string> peers;
  {
    std::lock_guard lock(mu_);
    peers = peers_;
  }
  // Reads the peers' chunk maps of every unfinished file.
  auto poll_peers = [&] {
    std::vector<std::string> keys;
    {
      std::lock_guard lock(job.mu);
      for (const auto& f : job.files)
        if (!f.done) keys.push_back(f.key);
    }
    for (const auto& peer : peers) {
      auto url = parse_url(peer);
      if (!url.ok()) continue;
      for (const auto& key : keys) {
        HttpGet get;
        get.url = *url;
        get.url.target = "/v1/blobs/" + key;
        get.total_timeout_s = 2;
        get.stall_timeout_s = 1;
        std::string body;
        get.sink = [&](std::string_view d) {
          body.append(d);
          return true;
        };
        auto response = http_get(get);
        json doc = response.ok() ? json::parse(body, nullptr, false) : json();
        std::lock_guard lock(job.mu);
        PeerView& v = job.views[key][peer];
        if (!response.ok() || doc.is_discarded() || !doc.is_object()) {
          v.usable = false;
          v.staging = false;
          continue;
        }
        v.usable = value_or(doc, "chunk_bytes", uint64_t{0}) == options_.cache.chunk_bytes;
        v.staging = value_or(doc, "staging", false);
        // Any change of the map (a fetch started or finished) is progress;
        // a chunk in flight ('2') is left to its fetcher, whose own stall
        // timeout bounds how long that lasts.
        std::string have = value_or(doc, "have", "");
        if (have != v.have) v.last_change = Clock::now();
        v.have = std::move(have);
        v.digests.clear();
        if (doc.contains("digests") && doc["digests"].is_array())
          for (const auto& d : doc["digests"])
            v.digests.push_back(d.is_string() ? d.get<std::string>() : "");
      }
    }
    job.cv.notify_all();
  };

  struct Task {
    size_t file = 0;
    uint64_t chunk = 0;
    std::string peer;  // empty: origin
    std::string peer_digest;
  };
  const int origin_limit = options_.origin_connections > 0 ? options_.origin_connections
                           : peers.empty()                 ? options_.connections
                                                           : 2;
  int origin_in_flight = 0;  // guarded by job.mu
  // Picks the next chunk to fetch (job.mu held); nullopt: nothing to do now.
  auto pick = [&]() -> std::optional<Task> {
    const auto now = Clock::now();
    const bool origin_allowed = origin_in_flight < origin_limit;
    std::optional<Task> own, stalled;
    for (size_t fi = 0; fi < job.files.size(); ++fi) {
      Job::File& f = job.files[fi];
      if (f.done || f.finishing) continue;
      auto views = job.views.find(f.key);
      // The agents staging this file, in a fixed order.
      std::vector<std::string> active{options_.self_url};
      if (views != job.views.end() && !f.origin_only)
        for (const auto& [peer, v] : views->second)
          if (v.usable && v.staging && v.banned_until <= now) active.push_back(peer);
      std::sort(active.begin(), active.end());
      for (uint64_t i = 0; i < f.part->chunks(); ++i) {
        if (f.in_flight[i] || f.part->has(i)) continue;
        if (views != job.views.end() && !f.origin_only) {
          for (const auto& [peer, v] : views->second) {
            if (!v.usable || v.banned_until > now || i >= v.have.size() || v.have[i] != '1')
              continue;
            return Task{fi, i, peer, i < v.digests.size() ? v.digests[i] : ""};
          }
        }
        // Another agent is fetching it: wait, unless that agent has stalled.
        bool taken = false;
        if (views != job.views.end() && !f.origin_only)
          for (const auto& [peer, v] : views->second)
            taken = taken ||
                    (v.usable && v.banned_until <= now && i < v.have.size() && v.have[i] == '2');
        if (taken) continue;
        const std::string& owner = active[i % active.size()];
        if (owner == options_.self_url) {
          if (!own) own = Task{fi, i, "", ""};
        } else if (!stalled) {
          const PeerView& v = job.views[f.key][owner];
          if (seconds_since(v.last_change) > options_.peer_patience_s)
            stalled = Task{fi, i, "", ""};
        }
      }
    }
    if (!origin_allowed) return std::nullopt;
    return own ? own : stalled;
  };

  auto fail = [&](std::string why) {
    std::lock_guard lock(job.mu);
    if (!job.failed) {
      job.failed = true;
      job.failure = std::move(why);
    }
    job.cv.notify_all();
  };

  // Hashes the file's chunks in order as far as they are held; `fresh` is
  // chunk `index`'s bytes, already in memory. Returns false on a read error.
  auto advance_digest = [&](Job::File& f, std::unique_lock<std::mutex>& held, uint64_t index,
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
  };

  // Whole-file check and move into blobs/, once every chunk is in.
  auto finish_file = [&](size_t fi) {
    Job::File& f = job.files[fi];
    const auto finish_start = Clock::now();
    if (!f.entry.sha256.empty()) {
      Result<std::string> sha = make_error(ErrorCode::kInternal, "not hashed");
      {
        std::unique_lock held(f.digest->mu);
        if (advance_digest(f, held, f.part->chunks(), {}) && f.digest->through == f.part->chunks())
          sha = f.digest->hash.finish_hex();
        f.digest->hash = Sha256();  // a refetch after a mismatch starts over
        f.digest->through = 0;
      }
      if (!sha.ok()) sha = f.part->sha256();
      if (!sha.ok()) return fail(sha.error().message);
      if (*sha != f.entry.sha256) {
        std::vector<uint64_t> drop;
        bool peers_involved = false;
        {
          std::lock_guard lock(job.mu);
          for (uint64_t i = 0; i < f.from_peer.size(); ++i)
            if (f.from_peer[i]) peers_involved = true;
          for (uint64_t i = 0; i < f.part->chunks(); ++i)
            if (!peers_involved || f.from_peer[i]) drop.push_back(i);
          if (!peers_involved && f.whole_retries++ >= 1) {
            ++counters_->corrupt_origin;
            job.failed = true;
            job.failure = fmt::format(
                "{}: the origin sent bytes whose SHA-256 is {}, the source lists {}; nothing was "
                "published",
                f.entry.path, *sha, f.entry.sha256);
            job.cv.notify_all();
            return;
          }
          if (peers_involved)
            ++counters_->corrupt_peer;
          else
            ++counters_->corrupt_origin;
          f.origin_only = true;
          std::fill(f.from_peer.begin(), f.from_peer.end(), 0);
          f.finishing = false;
        }
        spdlog::warn("agent: {} of '{}' failed its SHA-256 check; refetching {} chunks from {}",
                     f.entry.path, job.model, drop.size(), "the origin");
        if (Status s = f.part->forget(drop); !s.ok()) return fail(s.error().message);
        job.cv.notify_all();
        return;
      }
    }
    const double digest_s = seconds_since(finish_start);
    if (Status s = f.part->finish(cache_->blob_path(f.key)); !s.ok())
      return fail(s.error().message);
    spdlog::info("agent: {} of '{}' complete at {:.2f}s (SHA-256 {:.2f}s, sync and move {:.2f}s)",
                 f.entry.path, job.model, seconds_since(job.started), digest_s,
                 seconds_since(finish_start) - digest_s);
    std::lock_guard lock(job.mu);
    f.done = true;
    job.cv.notify_all();
  };

  auto worker = [&] {
    std::string buffer;
    Sha256 hash;
    while (true) {
      Task task;
      {
        std::unique_lock lock(job.mu);
        std::optional<Task> next;
        job.cv.wait_for(lock, std::chrono::milliseconds(50), [&] {
          if (job.failed) return true;
          if (std::all_of(job.files.begin(), job.files.end(), [](const auto& f) { return f.done; }))
            return true;
          next = pick();
          return next.has_value();
        });
        if (job.failed) return;
        if (std::all_of(job.files.begin(), job.files.end(), [](const auto& f) { return f.done; }))
          return;
        if (!next) continue;
        task = *next;
        job.files[task.file].in_flight[task.chunk] = 1;
        if (task.peer.empty()) ++origin_in_flight;
        job.files[task.file].part->set_fetching(task.chunk, true);
      }
      Job::File& f = job.files[task.file];
      const uint64_t length = f.part->chunk_length(task.chunk);
      const uint64_t offset = task.chunk * f.part->chunk_bytes();
      buffer.clear();
      buffer.reserve(length);
      auto sink = [&](std::string_view d) {
        buffer.append(d);
        return true;
      };
      Status got;
      std::string served_digest;
      if (task.peer.empty()) {
        got = job.origin->read(f.entry, offset, length, sink);
      } else {
        auto url = parse_url(task.peer);
        HttpGet get;
        if (url.ok()) get.url = *url;
        get.url.target = fmt::format("/v1/blobs/{}/chunks/{}", f.key, task.chunk);
        get.stall_timeout_s = 5;
        get.total_timeout_s = 120;
        get.sink = sink;
        auto response = url.ok() ? http_get(get) : Result<http::ClientResponse>(url.error());
        if (response.ok()) served_digest = std::string(response->header("x-loadstar-sha256"));
        got = response.ok()
                  ? (buffer.size() == length
                         ? Status()
                         : Status(make_error(ErrorCode::kUnavailable, "peer {} sent {} of {} bytes",
                                             task.peer, buffer.size(), length)))
                  : Status(std::move(response).error());
      }
      std::string digest;
      if (got.ok()) {
        hash.update(buffer);
        digest = hash.finish_hex();
        if (!task.peer.empty() && ((!served_digest.empty() && digest != served_digest) ||
                                   (!task.peer_digest.empty() && digest != task.peer_digest))) {
          ++counters_->corrupt_peer;
          got = make_error(ErrorCode::kCorrupt,
                           "chunk {} of {} from peer {} has SHA-256 {}, the peer lists {}",
                           task.chunk, f.entry.path, task.peer, digest,
                           served_digest.empty() ? task.peer_digest : served_digest);
        }
      }
      if (got.ok()) got = f.part->write(task.chunk, buffer, digest);
      bool last = false;
      {
        std::lock_guard lock(job.mu);
        f.in_flight[task.chunk] = 0;
        if (task.peer.empty()) --origin_in_flight;
        f.part->set_fetching(task.chunk, false);
        if (got.ok()) {
          f.from_peer[task.chunk] = task.peer.empty() ? 0 : 1;
          (task.peer.empty() ? job.bytes_origin : job.bytes_peers) += length;
          (task.peer.empty() ? counters_->origin_bytes : counters_->peer_bytes) += length;
          if (!f.finishing && f.part->complete()) {
            f.finishing = true;
            last = true;
          }
        }
      }
      if (!got.ok()) {
        const Error& e = got.error();
        if (!task.peer.empty()) {
          // A peer that fails or lies sits out a while; the chunk goes elsewhere.
          ++counters_->peer_failures;
          spdlog::warn("agent: peer fetch failed: {}", e.message);
          std::lock_guard lock(job.mu);
          job.views[f.key][task.peer].banned_until =
              Clock::now() + std::chrono::seconds(e.code == ErrorCode::kCorrupt ? 3600 : 5);
          continue;
        }
        if (e.code == ErrorCode::kNotFound || e.code == ErrorCode::kPermissionDenied ||
            e.code == ErrorCode::kResourceExhausted || e.code == ErrorCode::kIo)
          return fail(e.message);
        int attempts = 0;
        {
          std::lock_guard lock(job.mu);
          attempts = ++f.attempts[task.chunk];
        }
        if (attempts >= options_.max_attempts)
          return fail(fmt::format("gave up after {} attempts: {}", attempts, e.message));
        ++counters_->retries;
        spdlog::warn("agent: {} (attempt {}); retrying", e.message, attempts);
        std::this_thread::sleep_for(std::chrono::duration<double>(
            std::min(10.0, options_.backoff_s * (1 << (attempts - 1)))));
        continue;
      }
      if (!f.entry.sha256.empty() && !last) {
        std::unique_lock held(f.digest->mu, std::try_to_lock);
        if (held.owns_lock()) advance_digest(f, held, task.chunk, buffer);
      }
      if (last) finish_file(task.file);
    }
  };

  // Files that were complete but not finished (resumed whole) finish first.
  for (size_t fi = 0; fi < job.files.size(); ++fi) {
    bool whole = false;
    {
      std::lock_guard lock(job.mu);
      Job::File& f = job.files[fi];
      whole = !f.done && f.part && f.part->complete();
      if (whole) f.finishing = true;
    }
    if (whole) finish_file(fi);
  }
  std::atomic<bool> polling{!peers.empty()};
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
        std::unique_lock lock(job.mu);
        job.cv.wait_for(lock, std::chrono::duration<double>(options_.peer_poll_s),
                        [&] { return !polling.load() || job.failed; });
      }
    });
  }
  std::vector<std::thread> workers;
  for (int i = 0; i < std::max(1, options_.connections); ++i) workers.emplace_back(worker);
  for (auto& w : workers) w.join();
  polling = false;
  job.cv.notify_all();
  if (poller.joinable()) poller.join();
  {
    std::lock_guard lock(job.mu);
    if (job.failed) return make_error(ErrorCode::kUnavailable, "{}", job.failure);
  }
  LS_ASSIGN_OR_RETURN(fs::path dir, cache_->publish(job.model, *manifest));
  std::lock_guard lock(job.mu);
  job.dir = dir;
  return {};
}

std::optional<BlobInfo> Agent::blob_info(const std::string& key) const {
  BlobInfo info;
  info.key = key;
  info.chunk_bytes = options_.cache.chunk_bytes;
  std::shared_ptr<PartialFile> part;
  {
    std::lock_guard lock(mu_);
    auto it = partials_.find(key);
    if (it != partials_.end()) part = it->second;
  }
  if (part) {
    info.size = part->size();
    info.staging = true;
    info.have = part->have_bits();
    for (uint64_t i = 0; i < part->chunks(); ++i) info.digests.push_back(part->digest(i));
    return info;
  }
  if (key.find('/') != std::string::npos || !cache_->has_blob(key)) return std::nullopt;
  std::error_code ec;
  info.size = fs::file_size(cache_->blob_path(key), ec);
  info.complete = true;
  info.have.assign(chunk_count(info.size, info.chunk_bytes), '1');
  return info;
}

Result<std::string> Agent::read_chunk(const std::string& key, uint64_t index, std::string* sha256) {
  std::shared_ptr<PartialFile> part;
  {
    std::lock_guard lock(mu_);
    auto it = partials_.find(key);
    if (it != partials_.end()) part = it->second;
  }
  std::string data;
  if (part) {
    LS_ASSIGN_OR_RETURN(data, part->read(index));
    *sha256 = part->digest(index);
  } else {
    if (key.find('/') != std::string::npos || !cache_->has_blob(key))
      return make_error(ErrorCode::kNotFound, "no blob {}", key);
    const fs::path path = cache_->blob_path(key);
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    const uint64_t cb = options_.cache.chunk_bytes;
    if (ec || index >= chunk_count(size, cb))
      return make_error(ErrorCode::kNotFound, "no chunk {} of {}", index, key);
    const uint64_t length = std::min(cb, size - index * cb);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return make_error(ErrorCode::kIo, "open {}: {}", path.string(), std::strerror(errno));
    data.resize(length);
    uint64_t got = 0;
    while (got < length) {
      const ssize_t n =
          ::pread(fd, data.data() + got, length - got, static_cast<off_t>(index * cb + got));
      if (n <= 0) break;
      got += static_cast<uint64_t>(n);
    }
    ::close(fd);
    if (got != length)
      return make_error(ErrorCode::kIo, "read {}: short read at chunk {}", path.string(), index);
    *sha256 = sha256_hex(data);
  }
  counters_->served_bytes += data.size();
  return data;
}

std::string Agent::metrics_text() const {
  using prometheus::ClientMetric;
  using prometheus::MetricFamily;
  using prometheus::MetricType;
  std::vector<MetricFamily> families;
  auto family = [&](const char* name, const char* help, MetricType type) -> MetricFamily& {
    families.push_back({name, help, type, {}});
    return families.back();
  };
  auto add = [](MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
    ClientMetric m;
    m.label = std::move(labels);
    if (f.type == MetricType::Counter)
      m.counter.value = value;
    else
      m.gauge.value = value;
    f.metric.push_back(std::move(m));
  };
  const Counters& c = *counters_;
  MetricFamily& fetched =
      family("loadstar_agent_fetched_bytes_total",
             "Verified model bytes fetched, by where they came from", MetricType::Counter);
  add(fetched, {{"source", "origin"}}, c.origin_bytes);
  add(fetched, {{"source", "peer"}}, c.peer_bytes);
  add(family("loadstar_agent_resumed_bytes_total",
             "Bytes of interrupted downloads kept after re-verification", MetricType::Counter),
      {}, c.resumed_bytes);
  add(family("loadstar_agent_served_bytes_total", "Chunk bytes served to peers",
             MetricType::Counter),
      {}, c.served_bytes);
  MetricFamily& corrupt =
      family("loadstar_agent_corrupt_total",
             "Chunks or files that failed their SHA-256 check, by source", MetricType::Counter);
  add(corrupt, {{"source", "origin"}}, c.corrupt_origin);
  add(corrupt, {{"source", "peer"}}, c.corrupt_peer);
  add(family("loadstar_agent_retries_total", "Origin requests retried after a transient error",
             MetricType::Counter),
      {}, c.retries);
  add(family("loadstar_agent_peer_failures_total", "Peer fetches that failed or were corrupt",
             MetricType::Counter),
      {}, c.peer_failures);
  MetricFamily& stagings =
      family("loadstar_agent_stagings_total", "Stagings finished, by result", MetricType::Counter);
  add(stagings, {{"result", "fetched"}}, c.staged - std::min(c.staged.load(), c.hits.load()));
  add(stagings, {{"result", "cached"}}, c.hits);
  add(stagings, {{"result", "failed"}}, c.failed);
  add(family("loadstar_agent_cache_used_bytes", "Bytes in the cache (complete and partial files)",
             MetricType::Gauge),
      {}, static_cast<double>(cache_->used_bytes()));
  add(family("loadstar_agent_cache_capacity_bytes", "Configured cache size (0: the disk)",
             MetricType::Gauge),
      {}, static_cast<double>(options_.cache.capacity_bytes));
  add(family("loadstar_agent_evictions_total", "Models evicted to make room", MetricType::Counter),
      {}, static_cast<double>(cache_->evictions()));
  MetricFamily& total =
      family("loadstar_agent_model_bytes", "Size of each staging model", MetricType::Gauge);
  MetricFamily& done = family("loadstar_agent_model_staged_bytes",
                              "Bytes of each model verified so far", MetricType::Gauge);
  MetricFamily& ready = family("loadstar_agent_model_ready",
                               "1 when the model's directory is published", MetricType::Gauge);
  for (const auto& p : all_progress()) {
    add(total, {{"model", p.model}}, static_cast<double>(p.bytes_total));
    add(done, {{"model", p.model}}, static_cast<double>(p.bytes_done));
    add(ready, {{"model", p.model}}, p.state == StageState::kReady ? 1 : 0);
  }
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace loadstar::agent
