#include "agent/agent.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <thread>

#include <spdlog/spdlog.h>

#include "agent/staging.h"
#include "common/digest.h"
#include "common/metrics_text.h"
#include "common/units.h"

namespace loadstar::agent {

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

Agent::Agent(AgentOptions options)
    : options_(std::move(options)), counters_(std::make_unique<Counters>()) {
  peers_ = options_.peers;
  peer_client_ = options_.peer_client ? options_.peer_client
                                      : make_http_peer_client(options_.peer_authorization);
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

StageProgress Agent::stage(const std::string& model, const std::string& source, bool pin,
                           const std::string& version) {
  if (!version.empty())
    if (auto dir = cache_->version_dir(model, version)) {
      // Held already (an older version stays while a rollout may need it).
      if (pin) cache_->pin(model, true);
      cache_->touch(model);
      StageProgress p;
      p.model = model;
      p.source = source;
      p.state = StageState::kReady;
      p.dir = *dir;
      p.version = p.want_version = version;
      p.eta_s = 0;
      return p;
    }
  std::shared_ptr<Job> job;
  {
    std::lock_guard lock(mu_);
    auto it = jobs_.find(model);
    bool reuse = it != jobs_.end() && it->second->source == source;
    if (reuse) {
      std::lock_guard jl(it->second->mu);
      const StageState state = it->second->state;
      const bool running = state != StageState::kFailed && state != StageState::kReady;
      // A failed staging is tried again; a ready one again only if evicted
      // since, or if another version is asked for.
      reuse = state != StageState::kFailed &&
              !(state == StageState::kReady && !cache_->find(model)) &&
              (version.empty() || it->second->want_version == version || running);
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
      job->want_version = version;
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
  p.version = job->version;
  p.want_version = job->want_version;
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
  LS_ASSIGN_OR_RETURN(const Manifest manifest, resolve(*job.origin));
  const std::string version = manifest.version_id();
  {
    std::lock_guard lock(job.mu);
    job.version = version;
  }
  if (!job.want_version.empty() && version != job.want_version)
    return make_error(ErrorCode::kConflict,
                      "{} now holds version {}, not {} that this replica was started from, and "
                      "this node no longer has {}: pin the source to a revision (e.g. "
                      "hf://ORG/NAME@COMMIT) to keep old versions reachable",
                      job.source, version, job.want_version, job.want_version);
  if (job.pin) cache_->pin(job.model, true);
  if (use_cached(job, manifest)) return {};
  const uint64_t need = list_files(job, manifest);
  LS_RETURN_IF_ERROR(cache_->reserve(job.model, need));
  LS_RETURN_IF_ERROR(open_partials(job));
  {
    std::lock_guard lock(job.mu);
    job.state = StageState::kDownloading;
  }
  spdlog::info("agent: staging '{}' from {}: {} files, {} to fetch", job.model, job.source,
               job.files.size(), format_bytes(need));
  LS_RETURN_IF_ERROR(fetch_missing(job));
  LS_ASSIGN_OR_RETURN(fs::path dir, cache_->publish(job.model, manifest));
  std::lock_guard lock(job.mu);
  job.dir = dir;
  return {};
}

// The source's file list, retrying what may pass.
Result<Manifest> Agent::resolve_source(const std::string& source, int attempts) {
  LS_ASSIGN_OR_RETURN(auto origin, open_source(source, options_.source));
  return resolve(*origin, attempts);
}

Result<Manifest> Agent::resolve(Source& origin, int attempts) {
  const int max_attempts = attempts > 0 ? attempts : options_.max_attempts;
  for (int attempt = 1;; ++attempt) {
    Result<Manifest> manifest = origin.resolve();
    if (manifest.ok() || attempt >= max_attempts) return manifest;
    const ErrorCode code = manifest.error().code;
    if (code == ErrorCode::kNotFound || code == ErrorCode::kPermissionDenied ||
        code == ErrorCode::kInvalidArgument || code == ErrorCode::kCorrupt)
      return manifest;
    ++counters_->retries;
    std::this_thread::sleep_for(
        std::chrono::duration<double>(backoff_s(options_.backoff_s, attempt)));
  }
}

// True when this version of the model is published already: nothing to fetch.
bool Agent::use_cached(Job& job, const Manifest& manifest) {
  auto cached = cache_->find(job.model);
  if (!cached || cached->version != manifest.version_id()) return false;
  cache_->touch(job.model);
  ++counters_->hits;
  std::lock_guard lock(job.mu);
  job.bytes_total = job.bytes_cached = manifest.total_bytes();
  job.dir = cached->dir;
  return true;
}

// Lists the manifest's files in the job; returns the bytes not in blobs/ yet.
uint64_t Agent::list_files(Job& job, const Manifest& manifest) {
  uint64_t need = 0;
  std::lock_guard lock(job.mu);
  job.bytes_total = manifest.total_bytes();
  for (const auto& entry : manifest.files) {
    Job::File f;
    f.entry = entry;
    f.key = blob_key(manifest, entry);
    f.cached = cache_->has_blob(f.key);
    if (f.cached)
      job.bytes_cached += entry.size;
    else
      need += entry.size;
    job.files.push_back(std::move(f));
  }
  return need;
}

// Opens each missing file's partial file, keeping the chunks an earlier run
// left that still verify; from now on peers can read them.
Status Agent::open_partials(Job& job) {
  for (auto& f : job.files) {
    if (f.cached) continue;
    LS_ASSIGN_OR_RETURN(f.part, PartialFile::open(cache_->partial_dir(), f.key, f.entry.size,
                                                  options_.cache.chunk_bytes));
    {
      std::lock_guard lock(job.mu);
      job.bytes_cached += f.part->resumed_bytes();
    }
    counters_->resumed_bytes += f.part->resumed_bytes();
    std::lock_guard lock(mu_);
    partials_[f.key] = f.part;
  }
  return {};
}

Status Agent::fetch_missing(Job& job) {
  std::vector<std::string> peers;
  {
    std::lock_guard lock(mu_);
    peers = peers_;
  }
  return Transfer(job, options_, *cache_, *counters_, *peer_client_, std::move(peers)).run();
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
  MetricsText text;
  const Counters& c = *counters_;
  text.counter("loadstar_agent_fetched_bytes_total",
               "Verified model bytes fetched, by where they came from")
      .add(c.origin_bytes, {{"source", "origin"}})
      .add(c.peer_bytes, {{"source", "peer"}});
  text.counter("loadstar_agent_resumed_bytes_total",
               "Bytes of interrupted downloads kept after re-verification")
      .add(c.resumed_bytes);
  text.counter("loadstar_agent_served_bytes_total", "Chunk bytes served to peers")
      .add(c.served_bytes);
  text.counter("loadstar_agent_corrupt_total",
               "Chunks or files that failed their SHA-256 check, by source")
      .add(c.corrupt_origin, {{"source", "origin"}})
      .add(c.corrupt_peer, {{"source", "peer"}});
  text.counter("loadstar_agent_retries_total", "Origin requests retried after a transient error")
      .add(c.retries);
  text.counter("loadstar_agent_peer_failures_total", "Peer fetches that failed or were corrupt")
      .add(c.peer_failures);
  text.counter("loadstar_agent_stagings_total", "Stagings finished, by result")
      .add(c.staged - std::min(c.staged.load(), c.hits.load()), {{"result", "fetched"}})
      .add(c.hits, {{"result", "cached"}})
      .add(c.failed, {{"result", "failed"}});
  text.gauge("loadstar_agent_cache_used_bytes", "Bytes in the cache (complete and partial files)")
      .add(static_cast<double>(cache_->used_bytes()));
  text.gauge("loadstar_agent_cache_capacity_bytes", "Configured cache size (0: the disk)")
      .add(static_cast<double>(options_.cache.capacity_bytes));
  size_t peers = 0;
  {
    std::lock_guard lock(mu_);
    peers = peers_.size();
  }
  text.gauge("loadstar_agent_peers", "Other agents this one shares chunks with (--peer or found)")
      .add(static_cast<double>(peers));
  text.counter("loadstar_agent_evictions_total", "Models evicted to make room")
      .add(static_cast<double>(cache_->evictions()));
  auto& total = text.gauge("loadstar_agent_model_bytes", "Size of each staging model");
  auto& done =
      text.gauge("loadstar_agent_model_staged_bytes", "Bytes of each model verified so far");
  auto& ready =
      text.gauge("loadstar_agent_model_ready", "1 when the model's directory is published");
  for (const auto& p : all_progress()) {
    total.add(static_cast<double>(p.bytes_total), {{"model", p.model}});
    done.add(static_cast<double>(p.bytes_done), {{"model", p.model}});
    ready.add(p.state == StageState::kReady ? 1 : 0, {{"model", p.model}});
  }
  return text.str();
}

}  // namespace loadstar::agent
