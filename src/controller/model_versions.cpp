#include "controller/model_versions.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include <spdlog/spdlog.h>

namespace loadstar::controller {

bool source_has_versions(std::string_view source) {
  return source.starts_with("hf://") || source.starts_with("s3://") ||
         source.starts_with("http://") || source.starts_with("https://");
}

bool source_is_pinned(std::string_view source) {
  if (!source.starts_with("hf://")) return false;
  // hf://ORG/NAME@REV[/PATH]
  const size_t at = source.find('@');
  if (at == std::string_view::npos) return false;
  std::string_view rev = source.substr(at + 1);
  rev = rev.substr(0, rev.find('/'));
  return rev.size() == 40 && rev.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

bool valid_model_version(std::string_view version) {
  return version.size() == 16 &&
         version.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

ModelVersions::ModelVersions(Resolve resolve, double interval_s, std::function<void()> changed)
    : resolve_(std::move(resolve)),
      interval_s_(interval_s),
      retry_s_(std::min(interval_s, 10.0)),
      changed_(std::move(changed)) {}

ModelVersions::~ModelVersions() {
  stop();
}

void ModelVersions::start() {
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  thread_ = std::thread([this] { run(); });
}

void ModelVersions::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ModelVersions::want(const std::set<std::string>& sources) {
  bool added = false;
  {
    std::lock_guard lock(mu_);
    std::erase_if(known_, [&](const auto& kv) { return !sources.count(kv.first); });
    for (const auto& s : sources) added = known_.try_emplace(s).second || added;
  }
  if (added) cv_.notify_all();  // a new one is resolved now, not at the next tick
}

std::optional<std::string> ModelVersions::version(const std::string& source) const {
  std::lock_guard lock(mu_);
  auto it = known_.find(source);
  if (it == known_.end() || it->second.version.empty()) return std::nullopt;
  return it->second.version;
}

std::string ModelVersions::error(const std::string& source) const {
  std::lock_guard lock(mu_);
  auto it = known_.find(source);
  return it == known_.end() ? std::string() : it->second.error;
}

uint64_t ModelVersions::generation() const {
  std::lock_guard lock(mu_);
  return generation_;
}

bool ModelVersions::due(const std::string& source, const Known& k, double now_s) const {
  if (k.tried_at < 0) return true;
  if (!k.error.empty()) return now_s - k.tried_at >= retry_s_;
  if (source_is_pinned(source)) return false;
  return now_s - k.resolved_at >= interval_s_;
}

void ModelVersions::poll(double now_s) {
  std::vector<std::string> sources;
  {
    std::lock_guard lock(mu_);
    for (const auto& [source, k] : known_)
      if (due(source, k, now_s)) sources.push_back(source);
  }
  bool changed = false;
  for (const auto& source : sources) {
    Result<std::string> v = resolve_(source);
    if (v.ok() && !valid_model_version(*v))
      v = make_error(ErrorCode::kCorrupt, "the resolver answered '{}', not a version id", *v);
    std::lock_guard lock(mu_);
    auto it = known_.find(source);
    if (it == known_.end()) continue;  // no longer wanted
    Known& k = it->second;
    k.tried_at = now_s;
    if (!v.ok()) {
      if (k.error != v.error().message)
        spdlog::warn("model source {}: cannot resolve: {}", source, v.error().message);
      k.error = v.error().message;  // the version known stays
      continue;
    }
    k.error.clear();
    k.resolved_at = now_s;
    if (k.version == *v) continue;
    if (!k.version.empty())
      spdlog::info("model source {}: now version {} (was {})", source, *v, k.version);
    k.version = *v;
    ++generation_;
    changed = true;
  }
  if (changed && changed_) changed_();
}

void ModelVersions::run() {
  const auto epoch = std::chrono::steady_clock::now();
  auto now_s = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch).count();
  };
  std::unique_lock lock(mu_);
  while (!stopping_) {
    lock.unlock();
    poll(now_s());
    lock.lock();
    // Once a second at most, or at once when a new source is wanted.
    const size_t wanted = known_.size();
    cv_.wait_for(lock, std::chrono::seconds(1), [&] {
      return stopping_ ||
             std::any_of(known_.begin(), known_.end(),
                         [](const auto& kv) { return kv.second.tried_at < 0; }) ||
             known_.size() != wanted;
    });
  }
}

}  // namespace loadstar::controller
