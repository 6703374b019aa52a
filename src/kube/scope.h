// The namespaces a controller follows: its own, a list, or all of them
// (as controller-runtime's cache options and KServe's controller allow).
// Objects keep their bare names in the home namespace (the controller's
// own, where its Lease and internal token live) and are named
// "NAMESPACE/NAME" elsewhere, so that two teams may each have a service
// "chat"; the scope turns one form into the other at the API's edge.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "kube/client.h"

namespace loadstar::kube {

class Informer;

class NamespaceScope {
 public:
  // The home namespace alone.
  explicit NamespaceScope(std::string home) : home_(std::move(home)) {}
  // `list`: "a,b" (names of namespaces, the home one included or not);
  // `all`: every namespace. Neither: the home namespace alone.
  static Result<NamespaceScope> parse(std::string home, std::string_view list, bool all);

  const std::string& home() const { return home_; }
  bool all() const { return all_; }
  // The namespaces followed (the home one first); empty when all.
  const std::vector<std::string>& namespaces() const { return namespaces_; }
  bool single() const { return !all_ && namespaces_.size() <= 1; }
  bool covers(std::string_view namespace_name) const;
  // "namespace X", "namespaces X, Y", "all namespaces".
  std::string describe() const;

  // The collections that hold `plural` in the scope: one per namespace, or
  // one cluster-wide.
  std::vector<std::string> collections(std::string_view group_version,
                                       std::string_view plural) const;

  // NAME in the home namespace, NAMESPACE/NAME elsewhere.
  std::string qualify(std::string_view namespace_name, std::string_view name) const;
  struct Name {
    std::string namespace_name, name;
    std::string key() const { return namespace_name + "/" + name; }  // an informer's key
  };
  // The inverse of qualify().
  Name split(std::string_view qualified) const;

  // One path segment for a qualified name (an agent's cache names a model
  // by it): NAMESPACE_NAME outside the home namespace. No Kubernetes name
  // has '_', so the two forms never collide.
  static std::string flat(std::string_view qualified);
  static std::string unflat(std::string_view flat);

 private:
  std::string home_;
  std::vector<std::string> namespaces_{home_};
  bool all_ = false;
};

// One collection followed across a scope: an informer per namespace, or
// one cluster-wide. Keys are "namespace/name", as an Informer's.
class ScopedInformer {
 public:
  ScopedInformer(const Client& client, const NamespaceScope& scope, std::string_view group_version,
                 std::string_view plural, const std::string& label_selector = "");
  ~ScopedInformer();
  ScopedInformer(const ScopedInformer&) = delete;
  ScopedInformer& operator=(const ScopedInformer&) = delete;

  void start(const std::function<void()>& on_change);
  void stop();
  bool synced() const;
  bool wait_synced(double timeout_s) const;
  std::vector<json> items() const;
  std::optional<json> get(const NamespaceScope::Name& name) const;
  bool read(const NamespaceScope::Name& name, const std::function<void(const json&)>& read) const;
  uint64_t relists() const;

 private:
  const Informer* informer_for(const std::string& namespace_name) const;

  bool all_;
  std::vector<std::string> namespaces_;
  std::vector<std::unique_ptr<Informer>> informers_;  // by namespaces_, or the one for all
};

}  // namespace loadstar::kube
