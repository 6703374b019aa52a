#include "gateway/endpoint_adapters.h"

#include <algorithm>

namespace loadstar::gateway {

void EndpointAdapters::reported(std::vector<std::string> active, uint32_t max_loras,
                                int64_t now_ms) {
  std::sort(active.begin(), active.end());  // vLLM lists an adapter both running and waiting
  active.erase(std::unique(active.begin(), active.end()), active.end());
  std::lock_guard lock(mu_);
  reported_ = std::move(active);
  reported_max_ = max_loras;
  reported_at_ms_ = now_ms;
}

void EndpointAdapters::sent(std::string_view adapter, uint32_t keep) {
  std::lock_guard lock(mu_);
  auto it = std::find_if(in_flight_.begin(), in_flight_.end(),
                         [&](const auto& a) { return a.first == adapter; });
  if (it == in_flight_.end())
    in_flight_.emplace_back(adapter, 1);
  else
    ++it->second;
  auto r = std::find(recent_.begin(), recent_.end(), adapter);
  if (r != recent_.end()) recent_.erase(r);
  recent_.emplace_back(adapter);
  const size_t bound = std::max<uint32_t>(keep, 1);
  if (recent_.size() > bound)
    recent_.erase(recent_.begin(),
                  recent_.begin() + static_cast<ptrdiff_t>(recent_.size() - bound));
}

void EndpointAdapters::finished(std::string_view adapter) {
  std::lock_guard lock(mu_);
  auto it = std::find_if(in_flight_.begin(), in_flight_.end(),
                         [&](const auto& a) { return a.first == adapter; });
  if (it == in_flight_.end()) return;
  if (--it->second <= 0) in_flight_.erase(it);
}

std::vector<std::string> EndpointAdapters::active(int64_t fresh_after_ms) const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  if (reported_at_ms_ > fresh_after_ms) out = reported_;
  for (const auto& [name, n] : in_flight_)
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  return out;
}

void EndpointAdapters::registered(std::string_view adapter, std::string_view path) {
  std::lock_guard lock(mu_);
  for (auto& [name, from] : registered_)
    if (name == adapter) {
      from = path;
      return;
    }
  registered_.emplace_back(adapter, path);
}

void EndpointAdapters::unregistered(std::string_view adapter) {
  std::lock_guard lock(mu_);
  std::erase_if(registered_, [&](const auto& r) { return r.first == adapter; });
}

std::optional<std::string> EndpointAdapters::registered_path(std::string_view adapter) const {
  std::lock_guard lock(mu_);
  for (const auto& [name, path] : registered_)
    if (name == adapter) return path;
  return std::nullopt;
}

EndpointAdapters::View EndpointAdapters::view(std::string_view adapter,
                                              int64_t fresh_after_ms) const {
  std::lock_guard lock(mu_);
  View v;
  const bool fresh = reported_at_ms_ > fresh_after_ms;
  if (fresh) {
    v.max_loras = reported_max_;
    v.active_adapters = static_cast<uint32_t>(reported_.size());
    v.active = std::find(reported_.begin(), reported_.end(), adapter) != reported_.end();
  }
  for (const auto& [name, n] : in_flight_) {
    if (name == adapter) v.active = true;
    if (!fresh || std::find(reported_.begin(), reported_.end(), name) == reported_.end())
      ++v.active_adapters;
  }
  v.recent = std::find(recent_.begin(), recent_.end(), adapter) != recent_.end() ||
             std::any_of(registered_.begin(), registered_.end(),
                         [&](const auto& r) { return r.first == adapter; });
  return v;
}

}  // namespace loadstar::gateway
