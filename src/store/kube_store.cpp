#include "store/kube_store.h"

#include <cmath>
#include <type_traits>
#include <variant>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api/schema.h"
#include "common/strings.h"
#include "kube/objects.h"

namespace loadstar::store {

using kube::json;

api::Node node_from_kubernetes(const json& object) {
  const kube::Node node = kube::node_from_json(object);
  api::Node out;
  out.metadata.name = node.name;
  out.spec.cpu = node.allocatable_or_zero("cpu");
  out.spec.memory_bytes = static_cast<uint64_t>(node.allocatable_or_zero("memory"));
  // With NVIDIA's time-slicing each GPU is advertised `replicas` times;
  // GPU feature discovery labels the physical count and the replicas. The
  // scheduler places on physical GPUs.
  const double advertised = node.allocatable_or_zero("nvidia.com/gpu");
  const auto replicas = kube::parse_quantity(node.label("nvidia.com/gpu.replicas"));
  const auto physical = kube::parse_quantity(node.label("nvidia.com/gpu.count"));
  uint32_t gpus = static_cast<uint32_t>(
      std::lround(replicas && *replicas >= 1 ? advertised / *replicas : advertised));
  if (physical && *physical >= 1 && *physical <= advertised)
    gpus = static_cast<uint32_t>(std::lround(*physical));
  if (gpus > 0) {
    api::NodeGpu gpu;
    gpu.count = gpus;
    gpu.replicas = std::max<uint32_t>(1, static_cast<uint32_t>(std::lround(advertised / gpus)));
    // GPU feature discovery's labels: the product and its memory in MiB.
    gpu.model = node.label("nvidia.com/gpu.product");
    if (gpu.model.empty()) gpu.model = "gpu";
    if (auto mib = kube::parse_quantity(node.label("nvidia.com/gpu.memory")))
      gpu.memory_bytes = static_cast<uint64_t>(*mib) << 20;
    out.spec.gpus.push_back(gpu);
  }
  static const std::pair<const char*, const char*> kTopology[] = {
      {"topology.kubernetes.io/zone", "zone"},
      {"loadstar.dev/spine", "spine"},
      {"loadstar.dev/rack", "rack"},
      {"loadstar.dev/nvlink", "nvlink"}};
  for (const auto& [key, level] : kTopology)
    if (auto domain = node.label(key); !domain.empty()) out.spec.topology[level] = domain;
  out.spec.schedulable = node.ready && !node.unschedulable && !node.repels_replicas();
  return out;
}

std::string decodable_document(const json& object) {
  json doc = json::object();
  doc["apiVersion"] = object.value("apiVersion", "");
  doc["kind"] = object.value("kind", "");
  const json& meta = object.value("metadata", json::object());
  doc["metadata"] = {{"name", meta.value("name", "")}};
  if (meta.contains("labels")) doc["metadata"]["labels"] = meta["labels"];
  doc["spec"] = object.value("spec", json::object());
  return doc.dump();  // JSON is YAML
}

KubeStore::KubeStore(const kube::Client& client, kube::NamespaceScope scope, Options options)
    : client_(client), scope_(std::move(scope)), options_(std::move(options)) {
  const std::string gv = fmt::format("{}/{}", api::kGroup, api::kVersion);
  for (const api::KindSchema& k : api::kind_schemas())
    kinds_.push_back(
        {k.kind, k.plural, std::make_unique<kube::ScopedInformer>(client_, scope_, gv, k.plural)});
  if (options_.nodes)
    nodes_ = std::make_unique<kube::Informer>(client_, kube::collection_path("v1", "", "nodes"),
                                              options_.node_selector);
}

KubeStore::~KubeStore() {
  for (auto& k : kinds_) k.informer->stop();
  if (nodes_) nodes_->stop();
}

Status KubeStore::start(double timeout_s) {
  for (auto& k : kinds_) k.informer->start([this] { changed(); });
  if (nodes_) nodes_->start([this] { changed(); });
  for (auto& k : kinds_)
    if (!k.informer->wait_synced(timeout_s))
      return make_error(ErrorCode::kUnavailable,
                        "cannot list {} in {} from {} (are the CRDs installed? kubectl apply -f "
                        "deploy/crds; may this account list them there?)",
                        k.plural, scope_.describe(), client_.config().origin);
  if (nodes_ && !nodes_->wait_synced(timeout_s))
    return make_error(ErrorCode::kUnavailable, "cannot list nodes from {}",
                      client_.config().origin);
  return ok_status();
}

void KubeStore::changed() {
  WatchEvent event{EventType::kModified, "", "", ++revision_};
  std::vector<std::shared_ptr<WatchCallback>> callbacks;
  {
    std::lock_guard lock(mu_);
    for (auto it = watchers_.begin(); it != watchers_.end();) {
      if (auto cb = it->lock()) {
        callbacks.push_back(std::move(cb));
        ++it;
      } else {
        it = watchers_.erase(it);
      }
    }
  }
  for (const auto& cb : callbacks) (*cb)(event);
}

std::shared_ptr<void> KubeStore::watch(WatchCallback callback) {
  auto cb = std::make_shared<WatchCallback>(std::move(callback));
  std::lock_guard lock(mu_);
  watchers_.push_back(cb);
  return cb;
}

void KubeStore::qualify(api::Resource& resource, const std::string& namespace_name) const {
  if (namespace_name == scope_.home()) return;
  // A queue is the namespace's own when it declares one of that name, else
  // the home namespace's (queues shared by every team live there).
  auto queue = [&](std::string& name) {
    if (name.empty()) return;
    const Kind* queues = kind_named("Queue");
    if (queues && queues->informer->get({namespace_name, name}))
      name = scope_.qualify(namespace_name, name);
  };
  std::visit(
      [&](auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, api::InferenceService>) {
          r.spec.model = scope_.qualify(namespace_name, r.spec.model);
          if (r.spec.lora)
            for (std::string& adapter : r.spec.lora->adapters)
              adapter = scope_.qualify(namespace_name, adapter);
          queue(r.spec.queue);
        } else if constexpr (std::is_same_v<T, api::Route>) {
          for (auto& backend : r.spec.backends)
            if (!backend.service.empty())
              backend.service = scope_.qualify(namespace_name, backend.service);
        } else if constexpr (std::is_same_v<T, api::Model>) {
          if (!r.spec.adapter_of.empty())
            r.spec.adapter_of = scope_.qualify(namespace_name, r.spec.adapter_of);
        } else if constexpr (std::is_same_v<T, api::Queue>) {
          queue(r.spec.parent);
        } else if constexpr (std::is_same_v<T, api::Job>) {
          queue(r.spec.queue);
        }
        r.metadata.name = scope_.qualify(namespace_name, r.metadata.name);
      },
      resource);
}

std::vector<api::Resource> KubeStore::list() const {
  std::vector<api::Resource> out;
  for (const Kind& k : kinds_) {
    for (const json& object : k.informer->items()) {
      const json& meta = object.value("metadata", json::object());
      const std::string ns = meta.value("namespace", scope_.home());
      const std::pair<std::string, std::string> key{k.kind,
                                                    scope_.qualify(ns, meta.value("name", ""))};
      const std::string version = meta.value("resourceVersion", "");
      std::lock_guard lock(mu_);
      if (auto it = decoded_.find(key); it != decoded_.end() && it->second.first == version) {
        out.push_back(it->second.second);
        continue;
      }
      auto decoded = api::decode_resources(
          decodable_document(object), fmt::format("{} {}/{}", k.kind, ns, meta.value("name", "")));
      if (!decoded.ok() || decoded->size() != 1) {
        if (rejected_[key] != version) {
          rejected_[key] = version;
          const std::string why = decoded.ok() ? "not one resource" : decoded.error().message;
          spdlog::warn("{}", why);
          if (!options_.write_status) continue;
          // The user reads this in `kubectl get -o yaml`.
          json status = {{"error", why}};
          (void)client_.merge_patch(status_path(k, key.second), {{"status", status}});
        }
        continue;
      }
      qualify(decoded->front(), ns);
      decoded_[key] = {version, decoded->front()};
      out.push_back(decoded->front());
    }
  }
  if (nodes_)
    for (const json& node : nodes_->items()) out.push_back(node_from_kubernetes(node));
  return out;
}

std::string KubeStore::status_path(const Kind& kind, std::string_view name) const {
  const kube::NamespaceScope::Name n = scope_.split(name);
  return kube::collection_path(fmt::format("{}/{}", api::kGroup, api::kVersion), n.namespace_name,
                               kind.plural) +
         "/" + n.name + "/status";
}

std::optional<api::Resource> KubeStore::get(std::string_view kind, std::string_view name) const {
  // A Node is read from its informer alone (list() would convert them all).
  if (kind == "Node") {
    if (!nodes_) return std::nullopt;
    auto node = nodes_->get(std::string(name));
    return node ? std::optional<api::Resource>(node_from_kubernetes(*node)) : std::nullopt;
  }
  // list() keeps the decoded objects current; a miss lists again.
  for (int attempt = 0; attempt < 2; ++attempt) {
    {
      std::lock_guard lock(mu_);
      auto it = decoded_.find({std::string(kind), std::string(name)});
      const Kind* k = kind_named(kind);
      if (it != decoded_.end() && k) {
        auto live = k->informer->get(scope_.split(name));
        if (!live) return std::nullopt;
        if (live->value("metadata", json::object()).value("resourceVersion", "") ==
            it->second.first)
          return it->second.second;
      }
    }
    if (attempt == 0) (void)list();
  }
  return std::nullopt;
}

const KubeStore::Kind* KubeStore::kind_named(std::string_view kind) const {
  for (const Kind& k : kinds_)
    if (k.kind == kind) return &k;
  return nullptr;
}

std::string KubeStore::uid_of(std::string_view kind, std::string_view name) const {
  const Kind* k = kind_named(kind);
  if (!k) return "";
  // Read in place: a service's object carries the status of every replica
  // (a copy per launch was quadratic in the replicas).
  std::string uid;
  k->informer->read(scope_.split(name), [&](const json& object) {
    uid = object.value("metadata", json::object()).value("uid", "");
  });
  return uid;
}

std::map<std::string, std::string> KubeStore::node_addresses() const {
  std::map<std::string, std::string> out;
  if (!nodes_) return out;
  for (const json& object : nodes_->items()) {
    kube::Node node = kube::node_from_json(object);
    if (!node.internal_ip.empty()) out[node.name] = std::move(node.internal_ip);
  }
  return out;
}

namespace {

json optional_json(const auto& v) {
  return v ? json(*v) : json(nullptr);
}

// What `loadstar rollout undo` writes back, as a merge patch of the spec:
// null removes a field the revision did not set.
json shape_patch(const api::Resource& resource) {
  if (const auto* model = std::get_if<api::Model>(&resource))
    return {{"source", model->spec.source},
            {"format", model->spec.format},
            {"size", optional_json(model->spec.size_bytes)}};
  const api::InferenceServiceSpec& s = std::get<api::InferenceService>(resource).spec;
  const api::EngineSpec& e = s.engine;
  const api::GpuRequirements& g = s.gpu;
  return {{"model", s.model},
          {"engine",
           {{"name", e.name},
            {"args", e.args},
            {"image", e.image.empty() ? json(nullptr) : json(e.image)},
            {"contextLength", optional_json(e.context_length)},
            {"maxSequences", optional_json(e.max_sequences)},
            {"threads", optional_json(e.threads)},
            {"prefixCache", e.prefix_cache}}},
          {"resources",
           {{"cpu", s.cpu > 0 ? json(s.cpu) : json(nullptr)},
            {"memory", s.memory_bytes > 0 ? json(s.memory_bytes) : json(nullptr)},
            {"gpu",
             {{"count", g.count},
              {"type", g.type.empty() ? json(nullptr) : json(g.type)},
              {"memory", optional_json(g.memory_bytes)},
              {"fraction", optional_json(g.fraction)},
              {"mig", g.mig.empty() ? json(nullptr) : json(g.mig)}}}}}};
}

constexpr const char* kRevisionServiceLabel = "loadstar.dev/service";
constexpr const char* kRevisionHashLabel = "loadstar.dev/revision";
constexpr const char* kRolloutStateAnnotation = "loadstar.dev/rollout-state";

}  // namespace

Status KubeStore::apply(const api::Resource& resource) {
  const std::string_view kind = api::kind_of(resource);
  const std::string& name = api::metadata_of(resource).name;
  const Kind* k = kind_named(kind);
  if (!k || (kind != "InferenceService" && kind != "Model") || !get(kind, name))
    return make_error(ErrorCode::kInvalidArgument,
                      "{} '{}': in Kubernetes mode resources are applied with kubectl", kind, name);
  const kube::NamespaceScope::Name n = scope_.split(name);
  const std::string path = kube::collection_path(fmt::format("{}/{}", api::kGroup, api::kVersion),
                                                 n.namespace_name, k->plural) +
                           "/" + n.name;
  auto patched = client_.merge_patch(path, {{"spec", shape_patch(resource)}});
  if (!patched.ok())
    return std::move(patched).error().context(fmt::format("writing {} {}", kind, name));
  return ok_status();
}

void KubeStore::record_event(const Event& event) {
  const kube::NamespaceScope::Name n = scope_.split(event.name);
  const std::string collection = kube::collection_path("v1", n.namespace_name, "events");
  const std::string key =
      fmt::format("{}\n{}\n{}\n{}", event.kind, event.name, event.reason, event.message);
  std::string known;
  {
    std::lock_guard lock(mu_);
    if (auto it = event_names_.find(key); it != event_names_.end()) known = it->second;
  }
  if (event.count > 1 && !known.empty()) {
    auto patched = client_.merge_patch(collection + "/" + known,
                                       {{"count", event.count}, {"lastTimestamp", event.time}});
    if (patched.ok()) return;
  }
  json involved = {{"kind", event.kind}, {"name", n.name}, {"namespace", n.namespace_name}};
  if (kind_named(event.kind)) {
    involved["apiVersion"] = fmt::format("{}/{}", api::kGroup, api::kVersion);
    if (const std::string uid = uid_of(event.kind, event.name); !uid.empty()) involved["uid"] = uid;
  }
  const json object = {
      {"apiVersion", "v1"},
      {"kind", "Event"},
      {"metadata", {{"generateName", n.name + "."}, {"namespace", n.namespace_name}}},
      {"involvedObject", involved},
      {"reason", event.reason},
      {"message", utf8_clip(event.message, 1024)},
      {"type", event.type},
      {"count", event.count},
      {"firstTimestamp", event.time},
      {"lastTimestamp", event.time},
      {"source", {{"component", "loadstar-controller"}}},
      {"reportingComponent", "loadstar-controller"}};
  auto created = client_.create(collection, object);
  if (!created.ok()) {
    spdlog::warn("event {} on {} {}: {}", event.reason, event.kind, event.name,
                 created.error().message);
    return;
  }
  std::lock_guard lock(mu_);
  if (event_names_.size() > 4096) event_names_.clear();
  event_names_[key] = created->value("metadata", json::object()).value("name", "");
}

Result<std::vector<RevisionRecord>> KubeStore::revisions(std::string_view service) const {
  const kube::NamespaceScope::Name n = scope_.split(service);
  LS_ASSIGN_OR_RETURN(json list, client_.list(kube::collection_path("apps/v1", n.namespace_name,
                                                                    "controllerrevisions"),
                                              fmt::format("{}={}", kRevisionServiceLabel, n.name)));
  std::vector<RevisionRecord> out;
  for (const json& item : list.value("items", json::array())) {
    const json labels = item.value("metadata", json::object()).value("labels", json::object());
    const json hash = labels.value(kRevisionHashLabel, json());
    const json number = item.value("revision", json());
    if (!hash.is_string() || !number.is_number_unsigned()) continue;  // not one of ours
    const json annotations =
        item.value("metadata", json::object()).value("annotations", json::object());
    const json state = annotations.value(kRolloutStateAnnotation, json());
    out.push_back({hash.get<std::string>(), number.get<uint32_t>(),
                   item.value("data", json::object()).dump(),
                   state.is_string() ? state.get<std::string>() : std::string()});
  }
  return out;
}

namespace {
constexpr const char* kUsageConfigMap = "loadstar-usage";
}  // namespace

Result<std::string> KubeStore::load_usage() const {
  auto got =
      client_.get(kube::collection_path("v1", scope_.home(), "configmaps") + "/" + kUsageConfigMap);
  if (!got.ok())
    return got.error().code == ErrorCode::kNotFound ? Result<std::string>(std::string())
                                                    : Result<std::string>(got.error());
  const json text = got->value("data", json::object()).value("usage.json", json());
  return text.is_string() ? text.get<std::string>() : std::string();
}

Status KubeStore::save_usage(const std::string& document) {
  const std::string collection = kube::collection_path("v1", scope_.home(), "configmaps");
  json object = {{"apiVersion", "v1"},
                 {"kind", "ConfigMap"},
                 {"metadata",
                  {{"name", kUsageConfigMap},
                   {"namespace", scope_.home()},
                   {"labels", {{"app.kubernetes.io/managed-by", "loadstar"}}}}},
                 {"data", {{"usage.json", document}}}};
  auto replaced = client_.replace(collection + "/" + kUsageConfigMap, object);
  if (replaced.ok()) return ok_status();
  if (replaced.error().code != ErrorCode::kNotFound) return replaced.error();
  auto created = client_.create(collection, object);
  if (!created.ok()) return created.error();
  return ok_status();
}

Status KubeStore::save_revision(std::string_view service, const RevisionRecord& record) {
  const kube::NamespaceScope::Name n = scope_.split(service);
  const std::string collection =
      kube::collection_path("apps/v1", n.namespace_name, "controllerrevisions");
  const std::string name = fmt::format("{}-{}", n.name, record.hash);
  // Its data never changes: an existing one is renumbered, its state updated.
  const json state = record.state.empty() ? json(nullptr) : json(record.state);
  auto renumbered =
      client_.merge_patch(collection + "/" + name,
                          {{"revision", record.number},
                           {"metadata", {{"annotations", {{kRolloutStateAnnotation, state}}}}}});
  if (renumbered.ok()) return ok_status();
  if (renumbered.error().code != ErrorCode::kNotFound) return renumbered.error();
  json data = json::parse(record.data, nullptr, false);
  if (data.is_discarded()) return make_error(ErrorCode::kInvalidArgument, "revision data not JSON");
  json object = {{"apiVersion", "apps/v1"},
                 {"kind", "ControllerRevision"},
                 {"metadata",
                  {{"name", name},
                   {"namespace", n.namespace_name},
                   {"labels",
                    {{"app.kubernetes.io/managed-by", "loadstar"},
                     {kRevisionServiceLabel, n.name},
                     {kRevisionHashLabel, record.hash}}}}},
                 {"data", std::move(data)},
                 {"revision", record.number}};
  if (const std::string uid = uid_of("InferenceService", service); !uid.empty())
    object["metadata"]["ownerReferences"] = {
        {{"apiVersion", fmt::format("{}/{}", api::kGroup, api::kVersion)},
         {"kind", "InferenceService"},
         {"name", n.name},
         {"uid", uid},
         {"blockOwnerDeletion", true}}};
  if (!record.state.empty())
    object["metadata"]["annotations"] = {{kRolloutStateAnnotation, record.state}};
  auto created = client_.create(collection, object);
  if (!created.ok()) return created.error();
  return ok_status();
}

Status KubeStore::remove_revision(std::string_view service, std::string_view hash) {
  const kube::NamespaceScope::Name n = scope_.split(service);
  Status removed =
      client_.remove(kube::collection_path("apps/v1", n.namespace_name, "controllerrevisions") +
                     "/" + fmt::format("{}-{}", n.name, hash));
  if (!removed.ok() && removed.error().code == ErrorCode::kNotFound) return ok_status();
  return removed;
}

Status KubeStore::remove(std::string_view kind, std::string_view name) {
  return make_error(ErrorCode::kInvalidArgument,
                    "{} '{}': in Kubernetes mode resources are deleted with kubectl", kind, name);
}

void KubeStore::publish_status(std::string_view kind, std::string_view name,
                               const std::string& status_json) {
  const Kind* k = kind_named(kind);
  if (!k || !options_.write_status) return;
  const std::pair<std::string, std::string> key{std::string(kind), std::string(name)};
  {
    std::lock_guard lock(mu_);
    if (published_[key] == status_json) return;
  }
  json status = json::parse(status_json, nullptr, false);
  if (status.is_discarded()) return;
  status["error"] = nullptr;  // a merge patch removes an earlier decoding error
  auto r = client_.merge_patch(status_path(*k, name), {{"status", status}});
  if (!r.ok()) {
    if (r.error().code != ErrorCode::kNotFound)
      spdlog::warn("status of {} {}: {}", kind, name, r.error().message);
    return;
  }
  std::lock_guard lock(mu_);
  published_[key] = status_json;
}

}  // namespace loadstar::store
