#include "kube/scope.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kube/informer.h"

namespace loadstar::kube {

namespace {

// A DNS-1123 label, as Kubernetes requires of a namespace's name.
bool is_namespace_name(std::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

}  // namespace

Result<NamespaceScope> NamespaceScope::parse(std::string home, std::string_view list, bool all) {
  if (all && !list.empty())
    return make_error(ErrorCode::kInvalidArgument,
                      "--namespaces and --all-namespaces: give one or the other");
  NamespaceScope scope(std::move(home));
  scope.all_ = all;
  if (all) scope.namespaces_.clear();
  size_t begin = 0;
  while (begin < list.size()) {
    size_t end = std::min(list.find(',', begin), list.size());
    std::string_view name = list.substr(begin, end - begin);
    while (!name.empty() && name.front() == ' ') name.remove_prefix(1);
    while (!name.empty() && name.back() == ' ') name.remove_suffix(1);
    if (!is_namespace_name(name))
      return make_error(ErrorCode::kInvalidArgument,
                        "--namespaces: '{}' is not a namespace name (lower-case letters, digits "
                        "and '-', at most 63)",
                        name);
    if (std::find(scope.namespaces_.begin(), scope.namespaces_.end(), name) ==
        scope.namespaces_.end())
      scope.namespaces_.emplace_back(name);
    begin = end + 1;
  }
  return scope;
}

bool NamespaceScope::covers(std::string_view namespace_name) const {
  return all_ ||
         std::find(namespaces_.begin(), namespaces_.end(), namespace_name) != namespaces_.end();
}

std::string NamespaceScope::describe() const {
  if (all_) return "all namespaces";
  return fmt::format("namespace{} {}", namespaces_.size() > 1 ? "s" : "",
                     fmt::join(namespaces_, ", "));
}

std::vector<std::string> NamespaceScope::collections(std::string_view group_version,
                                                     std::string_view plural) const {
  if (all_) return {collection_path(group_version, "", plural)};
  std::vector<std::string> out;
  for (const auto& ns : namespaces_) out.push_back(collection_path(group_version, ns, plural));
  return out;
}

std::string NamespaceScope::qualify(std::string_view namespace_name, std::string_view name) const {
  if (namespace_name == home_) return std::string(name);
  return fmt::format("{}/{}", namespace_name, name);
}

NamespaceScope::Name NamespaceScope::split(std::string_view qualified) const {
  const size_t slash = qualified.find('/');
  if (slash == std::string_view::npos) return {home_, std::string(qualified)};
  return {std::string(qualified.substr(0, slash)), std::string(qualified.substr(slash + 1))};
}

std::string NamespaceScope::flat(std::string_view qualified) {
  std::string out(qualified);
  std::replace(out.begin(), out.end(), '/', '_');
  return out;
}

std::string NamespaceScope::unflat(std::string_view flat) {
  std::string out(flat);
  std::replace(out.begin(), out.end(), '_', '/');
  return out;
}

ScopedInformer::ScopedInformer(const Client& client, const NamespaceScope& scope,
                               std::string_view group_version, std::string_view plural,
                               const std::string& label_selector)
    : all_(scope.all()), namespaces_(scope.namespaces()) {
  for (const std::string& collection : scope.collections(group_version, plural))
    informers_.push_back(std::make_unique<Informer>(client, collection, label_selector));
}

ScopedInformer::~ScopedInformer() {
  stop();
}

void ScopedInformer::start(const std::function<void()>& on_change) {
  for (auto& informer : informers_) informer->start(on_change);
}

void ScopedInformer::stop() {
  for (auto& informer : informers_) informer->stop();
}

bool ScopedInformer::synced() const {
  return std::all_of(informers_.begin(), informers_.end(),
                     [](const auto& informer) { return informer->synced(); });
}

bool ScopedInformer::wait_synced(double timeout_s) const {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  for (const auto& informer : informers_) {
    const double left =
        std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    if (!informer->wait_synced(std::max(0.0, left))) return false;
  }
  return true;
}

std::vector<json> ScopedInformer::items() const {
  if (informers_.size() == 1) return informers_.front()->items();
  std::vector<json> out;
  for (const auto& informer : informers_) {
    std::vector<json> some = informer->items();
    std::move(some.begin(), some.end(), std::back_inserter(out));
  }
  return out;
}

const Informer* ScopedInformer::informer_for(const std::string& namespace_name) const {
  if (all_) return informers_.front().get();
  for (size_t i = 0; i < namespaces_.size(); ++i)
    if (namespaces_[i] == namespace_name) return informers_[i].get();
  return nullptr;
}

std::optional<json> ScopedInformer::get(const NamespaceScope::Name& name) const {
  const Informer* informer = informer_for(name.namespace_name);
  return informer ? informer->get(name.key()) : std::nullopt;
}

bool ScopedInformer::read(const NamespaceScope::Name& name,
                          const std::function<void(const json&)>& read) const {
  const Informer* informer = informer_for(name.namespace_name);
  return informer && informer->read(name.key(), read);
}

uint64_t ScopedInformer::relists() const {
  uint64_t n = 0;
  for (const auto& informer : informers_) n += informer->relists();
  return n;
}

}  // namespace loadstar::kube
