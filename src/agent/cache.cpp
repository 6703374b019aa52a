#include "agent/cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "common/check.h"
#include "common/digest.h"
#include "common/units.h"

namespace loadstar::agent {

namespace fs = std::filesystem;

namespace {

constexpr const char* kManifestFile = ".loadstar-manifest.json";
constexpr const char* kCurrentLink = "current";  // models/NAME/current -> the newest version

Error errno_error(std::string_view what, const fs::path& path) {
  const int e = errno;
  return make_error(e == ENOSPC ? ErrorCode::kResourceExhausted : ErrorCode::kIo, "{} {}: {}{}",
                    what, path.string(), std::strerror(e),
                    e == ENOSPC ? " (the disk is full; nothing was published)" : "");
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t mtime_ms(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
}

Status write_file_atomically(const fs::path& path, std::string_view text) {
  const fs::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error("create", tmp);
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  Status status = ok ? Status() : Status(errno_error("write", tmp));
  ::close(fd);
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) status = errno_error("rename", tmp);
  return status;
}

Status pread_all(int fd, char* out, uint64_t length, uint64_t offset, const fs::path& path) {
  while (length > 0) {
    const ssize_t n = ::pread(fd, out, length, static_cast<off_t>(offset));
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return errno_error("read", path);
    }
    out += n;
    length -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

}  // namespace

Status validate_model_name(std::string_view name) {
  if (name.find('/') != std::string_view::npos)
    return make_error(ErrorCode::kInvalidArgument, "model name '{}' contains '/'", name);
  return validate_relative_path(name);
}

// --- PartialFile -------------------------------------------------------------

Result<std::shared_ptr<PartialFile>> PartialFile::open(const fs::path& dir, const std::string& key,
                                                       uint64_t size, uint64_t chunk_bytes) {
  std::shared_ptr<PartialFile> p(new PartialFile());
  p->key_ = key;
  p->size_ = size;
  p->chunk_bytes_ = chunk_bytes;
  p->data_ = dir / (key + ".data");
  p->log_ = dir / (key + ".chunks");
  p->digests_.assign(chunk_count(size, chunk_bytes), "");
  p->fetching_.assign(p->digests_.size(), 0);
  p->fd_ = ::open(p->data_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (p->fd_ < 0) return errno_error("open", p->data_);
  struct stat st {};
  ::fstat(p->fd_, &st);
  std::ifstream log(p->log_);
  if (static_cast<uint64_t>(st.st_size) == size && log) {
    // Resume: keep the logged chunks whose bytes still hash to the logged digest.
    std::string line;
    std::string buffer;
    uint64_t index = 0;
    std::string digest;
    while (std::getline(log, line)) {
      std::istringstream in(line);
      if (!(in >> index >> digest) || index >= p->digests_.size() || digest.size() != 64) continue;
      buffer.resize(p->chunk_length(index));
      if (!pread_all(p->fd_, buffer.data(), buffer.size(), index * chunk_bytes, p->data_).ok())
        continue;
      if (sha256_hex(buffer) != digest) continue;
      if (p->digests_[index].empty()) p->resumed_bytes_ += buffer.size();
      p->digests_[index] = digest;
    }
  } else if (::ftruncate(p->fd_, static_cast<off_t>(size)) != 0) {
    return errno_error("size", p->data_);
  }
  // Rewrite the log with what was kept, so that dropped entries do not linger.
  std::string text;
  for (size_t i = 0; i < p->digests_.size(); ++i)
    if (!p->digests_[i].empty()) text += fmt::format("{} {}\n", i, p->digests_[i]);
  LS_RETURN_IF_ERROR(write_file_atomically(p->log_, text));
  return p;
}

PartialFile::~PartialFile() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t PartialFile::chunk_length(uint64_t index) const {
  return std::min(chunk_bytes_, size_ - index * chunk_bytes_);
}

bool PartialFile::has(uint64_t index) const {
  std::lock_guard lock(mu_);
  return index < digests_.size() && !digests_[index].empty();
}

std::string PartialFile::digest(uint64_t index) const {
  std::lock_guard lock(mu_);
  return index < digests_.size() ? digests_[index] : "";
}

uint64_t PartialFile::verified_bytes() const {
  std::lock_guard lock(mu_);
  uint64_t total = 0;
  for (size_t i = 0; i < digests_.size(); ++i)
    if (!digests_[i].empty()) total += chunk_length(i);
  return total;
}

bool PartialFile::complete() const {
  std::lock_guard lock(mu_);
  for (const auto& d : digests_)
    if (d.empty()) return false;
  return true;
}

std::string PartialFile::have_bits() const {
  std::lock_guard lock(mu_);
  std::string bits(digests_.size(), '0');
  for (size_t i = 0; i < digests_.size(); ++i)
    bits[i] = !digests_[i].empty() ? '1' : fetching_[i] ? '2' : '0';
  return bits;
}

void PartialFile::set_fetching(uint64_t index, bool fetching) {
  std::lock_guard lock(mu_);
  if (index < fetching_.size()) fetching_[index] = fetching ? 1 : 0;
}

Status PartialFile::write(uint64_t index, std::string_view data, const std::string& sha256) {
  LS_CHECK(index < digests_.size() && data.size() == chunk_length(index));
  const char* p = data.data();
  uint64_t left = data.size();
  uint64_t offset = index * chunk_bytes_;
  while (left > 0) {
    const ssize_t n = ::pwrite(fd_, p, left, static_cast<off_t>(offset));
    if (n <= 0) return errno_error("write", data_);
    p += n;
    left -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  std::lock_guard lock(mu_);
  const std::string line = fmt::format("{} {}\n", index, sha256);
  const int log = ::open(log_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (log < 0) return errno_error("open", log_);
  const bool ok = ::write(log, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  ::close(log);
  if (!ok) return errno_error("write", log_);
  digests_[index] = sha256;
  return {};
}

Status PartialFile::forget(const std::vector<uint64_t>& indexes) {
  std::lock_guard lock(mu_);
  for (uint64_t i : indexes)
    if (i < digests_.size()) digests_[i].clear();
  std::string text;
  for (size_t i = 0; i < digests_.size(); ++i)
    if (!digests_[i].empty()) text += fmt::format("{} {}\n", i, digests_[i]);
  return write_file_atomically(log_, text);
}

Result<std::string> PartialFile::read(uint64_t index) const {
  if (!has(index))
    return make_error(ErrorCode::kNotFound, "chunk {} of {} is not here", index, key_);
  std::string out(chunk_length(index), '\0');
  LS_RETURN_IF_ERROR(pread_all(fd_, out.data(), out.size(), index * chunk_bytes_, data_));
  return out;
}

Result<std::string> PartialFile::sha256() const {
  Sha256 hash;
  std::string buffer(std::min<uint64_t>(size_, 4u << 20), '\0');
  for (uint64_t offset = 0; offset < size_; offset += buffer.size()) {
    const uint64_t n = std::min<uint64_t>(buffer.size(), size_ - offset);
    LS_RETURN_IF_ERROR(pread_all(fd_, buffer.data(), n, offset, data_));
    hash.update(std::string_view(buffer.data(), n));
  }
  return hash.finish_hex();
}

Status PartialFile::finish(const fs::path& blob) {
  if (::fsync(fd_) != 0) return errno_error("sync", data_);
  if (::rename(data_.c_str(), blob.c_str()) != 0) return errno_error("rename", data_);
  std::error_code ec;
  fs::remove(log_, ec);
  return {};
}

// --- Cache ---------------------------------------------------------------------

Result<std::unique_ptr<Cache>> Cache::open(CacheOptions options) {
  if (options.chunk_bytes < 4096 || options.chunk_bytes > (1ull << 30))
    return make_error(ErrorCode::kInvalidArgument, "chunk size {} is outside 4 KiB..1 GiB",
                      options.chunk_bytes);
  std::unique_ptr<Cache> cache(new Cache(std::move(options)));
  for (const char* sub : {"blobs", "partial", "models"}) {
    std::error_code ec;
    fs::create_directories(cache->options_.root / sub, ec);
    if (ec)
      return make_error(ErrorCode::kIo, "cannot create {}: {}",
                        (cache->options_.root / sub).string(), ec.message());
  }
  LS_RETURN_IF_ERROR(cache->scan());
  return cache;
}

Status Cache::scan() {
  std::error_code ec;
  for (const auto& model : fs::directory_iterator(options_.root / "models", ec)) {
    const std::string name = model.path().filename().string();
    for (const auto& version : fs::directory_iterator(model.path(), ec)) {
      const std::string v = version.path().filename().string();
      if (v == kCurrentLink) continue;
      if (v.starts_with(".")) {  // an interrupted publish or eviction
        fs::remove_all(version.path(), ec);
        continue;
      }
      std::ifstream in(version.path() / kManifestFile);
      std::stringstream text;
      text << in.rdbuf();
      auto manifest = manifest_from_json(text.str());
      if (!manifest.ok()) {
        spdlog::warn("cache: {} has no valid manifest ({}); removing it", version.path().string(),
                     manifest.error().message);
        fs::remove_all(version.path(), ec);
        continue;
      }
      CachedModel m;
      m.name = name;
      m.version = v;
      m.dir = version.path();
      m.manifest = std::move(*manifest);
      m.bytes = m.manifest.total_bytes();
      m.last_used_ms = mtime_ms(version.path() / kManifestFile);
      auto it = models_.find(name);
      if (it == models_.end() || it->second.last_used_ms < m.last_used_ms) models_[name] = m;
    }
  }
  return {};
}

fs::path Cache::blob_path(const std::string& key) const {
  return options_.root / "blobs" / key;
}

bool Cache::has_blob(const std::string& key) const {
  std::error_code ec;
  return fs::is_regular_file(blob_path(key), ec);
}

uint64_t Cache::own_bytes_locked(const CachedModel& m) const {
  uint64_t total = 0;
  for (const auto& f : m.manifest.files) {
    struct stat st {};
    if (::stat(blob_path(blob_key(m.manifest, f)).c_str(), &st) == 0 && st.st_nlink <= 2)
      total += f.size;
  }
  return total;
}

std::optional<CachedModel> Cache::find(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return std::nullopt;
  CachedModel m = it->second;
  m.in_use = in_use_.count(name) ? in_use_.at(name) : 0;
  m.pinned = pinned_.count(name) && pinned_.at(name);
  m.own_bytes = own_bytes_locked(m);
  return m;
}

std::vector<CachedModel> Cache::list() const {
  std::vector<std::string> names;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, m] : models_) names.push_back(name);
  }
  std::vector<CachedModel> out;
  for (const auto& n : names)
    if (auto m = find(n)) out.push_back(std::move(*m));
  return out;
}

Result<fs::path> Cache::publish(const std::string& name, const Manifest& manifest) {
  LS_RETURN_IF_ERROR(validate_model_name(name));
  LS_RETURN_IF_ERROR(validate_manifest(manifest));
  const std::string version = manifest.version_id();
  const fs::path model_dir = options_.root / "models" / name;
  const fs::path final_dir = model_dir / version;
  std::error_code ec;
  std::lock_guard lock(mu_);
  if (!fs::exists(final_dir / kManifestFile, ec)) {
    const fs::path tmp = model_dir / fmt::format(".tmp-{}-{}", version, ::getpid());
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    if (ec) return make_error(ErrorCode::kIo, "cannot create {}: {}", tmp.string(), ec.message());
    for (const auto& f : manifest.files) {
      const fs::path target = tmp / f.path;
      fs::create_directories(target.parent_path(), ec);
      fs::create_hard_link(blob_path(blob_key(manifest, f)), target, ec);
      if (ec) {
        fs::remove_all(tmp, ec);
        return make_error(ErrorCode::kIo, "cannot link {} into {}: {}", f.path, tmp.string(),
                          ec.message());
      }
    }
    LS_RETURN_IF_ERROR(write_file_atomically(tmp / kManifestFile, manifest_to_json(manifest)));
    fs::rename(tmp, final_dir, ec);
    if (ec) {
      fs::remove_all(tmp, ec);
      return make_error(ErrorCode::kIo, "cannot publish {}: {}", final_dir.string(), ec.message());
    }
  }
  // The version this replaces stays (a rollout's old replicas may restart
  // on it); older ones go, with the blobs only they held. An engine still
  // reading one keeps its open files; only its restart would need it, and
  // a rollout replaces that replica anyway.
  const auto previous = models_.find(name);
  const std::string kept = previous == models_.end() ? "" : previous->second.version;
  std::vector<fs::path> old_dirs;
  for (const auto& old : fs::directory_iterator(model_dir, ec))
    if (old.path() != final_dir && !old.path().filename().string().starts_with(".") &&
        old.path().filename() != kCurrentLink && old.path().filename() != kept)
      old_dirs.push_back(old.path());
  for (const auto& dir : old_dirs) remove_version_dir(dir);
  // models/NAME/current -> VERSION (relative, so it holds under any mount
  // point): engines started with /models/NAME/current read the newest.
  const fs::path link_tmp = model_dir / fmt::format(".tmp-current-{}", ::getpid());
  fs::remove(link_tmp, ec);
  fs::create_directory_symlink(version, link_tmp, ec);
  if (!ec) fs::rename(link_tmp, model_dir / kCurrentLink, ec);
  if (ec)
    spdlog::warn("cache: cannot point {}/current at {}: {}", model_dir.string(), version,
                 ec.message());
  CachedModel m;
  m.name = name;
  m.version = version;
  m.dir = final_dir;
  m.manifest = manifest;
  m.bytes = manifest.total_bytes();
  m.last_used_ms = now_ms();
  models_[name] = std::move(m);
  return final_dir;
}

uint64_t Cache::used_bytes() const {
  uint64_t total = 0;
  std::error_code ec;
  for (const char* sub : {"blobs", "partial"})
    for (const auto& e : fs::directory_iterator(options_.root / sub, ec))
      if (e.is_regular_file(ec)) total += e.file_size(ec);
  return total;
}

Status Cache::reserve(const std::string& for_model, uint64_t need) {
  std::vector<CacheEntry> entries;
  for (const auto& m : list())
    if (m.name != for_model)
      entries.push_back({m.name, m.own_bytes, m.last_used_ms, m.in_use > 0, m.pinned});
  LS_ASSIGN_OR_RETURN(auto victims, choose_victims(entries, used_bytes(), need,
                                                   options_.capacity_bytes, for_model));
  for (const auto& v : victims) {
    spdlog::info("cache: evicting '{}' (least recently used) to make room for '{}'", v, for_model);
    LS_RETURN_IF_ERROR(evict(v));
  }
  struct statvfs vfs {};
  if (::statvfs(options_.root.c_str(), &vfs) == 0) {
    const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (free_bytes < need)
      return make_error(ErrorCode::kResourceExhausted,
                        "model '{}' needs {} more but {} has only {} free", for_model,
                        format_bytes(need), options_.root.string(), format_bytes(free_bytes));
  }
  return {};
}

Status Cache::evict(const std::string& name) {
  std::lock_guard lock(mu_);
  return evict_locked(name);
}

Status Cache::evict_locked(const std::string& name) {
  auto it = models_.find(name);
  if (it == models_.end())
    return make_error(ErrorCode::kNotFound, "model '{}' is not cached", name);
  if (in_use_.count(name) && in_use_[name] > 0)
    return make_error(ErrorCode::kUnavailable, "model '{}' is in use", name);
  const CachedModel m = it->second;
  models_.erase(it);
  std::error_code ec;
  const fs::path model_dir = options_.root / "models" / name;
  const fs::path trash = options_.root / "models" / fmt::format(".evicting-{}", name);
  fs::rename(model_dir, trash, ec);  // gone from view at once, whatever remove_all meets
  const fs::path gone = ec ? model_dir : trash;
  std::vector<fs::path> versions;
  for (const auto& v : fs::directory_iterator(gone, ec))
    if (v.is_directory() && !v.is_symlink()) versions.push_back(v.path());
  for (const auto& v : versions) remove_version_dir(v);
  fs::remove_all(gone, ec);
  ++evictions_;
  return {};
}

void Cache::remove_version_dir(const fs::path& dir) {
  std::ifstream in(dir / kManifestFile);
  std::stringstream text;
  text << in.rdbuf();
  auto manifest = manifest_from_json(text.str());
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!manifest.ok()) return;
  for (const auto& f : manifest->files) {
    const fs::path blob = blob_path(blob_key(*manifest, f));
    struct stat st {};
    if (::stat(blob.c_str(), &st) == 0 && st.st_nlink == 1) fs::remove(blob, ec);
  }
}

std::optional<fs::path> Cache::version_dir(const std::string& name,
                                           const std::string& version) const {
  if (!validate_model_name(name).ok() || version.empty() || version.size() > 64 ||
      version.find_first_not_of("0123456789abcdef") != std::string::npos)
    return std::nullopt;
  const fs::path dir = options_.root / "models" / name / version;
  std::error_code ec;
  std::lock_guard lock(mu_);
  if (!fs::is_regular_file(dir / kManifestFile, ec)) return std::nullopt;
  return dir;
}

void Cache::touch(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return;
  it->second.last_used_ms = now_ms();
  ::utimensat(AT_FDCWD, (it->second.dir / kManifestFile).c_str(), nullptr, 0);
}

void Cache::acquire(const std::string& name) {
  touch(name);
  std::lock_guard lock(mu_);
  ++in_use_[name];
}

void Cache::release(const std::string& name) {
  {
    std::lock_guard lock(mu_);
    if (in_use_[name] > 0) --in_use_[name];
  }
  touch(name);
}

void Cache::set_in_use(const std::map<std::string, int>& uses) {
  {
    std::lock_guard lock(mu_);
    in_use_ = uses;
  }
  for (const auto& [name, count] : uses)
    if (count > 0) touch(name);
}

void Cache::pin(const std::string& name, bool pinned) {
  std::lock_guard lock(mu_);
  pinned_[name] = pinned;
}

uint64_t Cache::evictions() const {
  std::lock_guard lock(mu_);
  return evictions_;
}

}  // namespace loadstar::agent
