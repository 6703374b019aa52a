#include "controller/pod_runtime.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api/disaggregation.h"
#include "api/schema.h"
#include "common/digest.h"
#include "common/json_value.h"
#include "engines/engines.h"
#include "http/bearer.h"
#include "http/client.h"
#include "kube/objects.h"

namespace loadstar::controller {

using kube::json;

namespace {

constexpr const char* kManagedBy = "app.kubernetes.io/managed-by";
constexpr const char* kServiceLabel = "loadstar.dev/service";
constexpr const char* kIndexLabel = "loadstar.dev/index";
// The replica's revision (rollout.h), as a Deployment's pod-template-hash.
constexpr const char* kRevisionLabel = "loadstar.dev/revision";
constexpr const char* kSharesAnnotation = "loadstar.dev/devices";

std::vector<DeviceShare> shares_from(const json& pod) {
  const json meta = pod.value("metadata", json::object());
  const json annotations = meta.value("annotations", json::object());
  if (!annotations.contains(kSharesAnnotation) || !annotations[kSharesAnnotation].is_string())
    return {};
  return shares_from_json(annotations[kSharesAnnotation].get<std::string>());
}

}  // namespace

std::string shares_to_json(const std::vector<DeviceShare>& shares) {
  json out = json::array();
  for (const auto& s : shares)
    out.push_back({{"device", s.device}, {"milli", s.milli}, {"migSlices", s.mig_slices}});
  return out.dump();
}

std::vector<DeviceShare> shares_from_json(std::string_view text) {
  std::vector<DeviceShare> out;
  const json parsed = json::parse(text, nullptr, false);
  if (!parsed.is_array()) return out;
  for (const auto& s : parsed)
    if (s.is_object())
      out.push_back(
          {value_or(s, "device", 0), value_or(s, "milli", 0u), value_or(s, "migSlices", 0u)});
  return out;
}

std::string gguf_name(const std::string& source) {
  if (!source.ends_with(".gguf")) return "model.gguf";
  if (source.starts_with("hf://")) {
    // hf://ORG/NAME[@REV]/PATH: staged at PATH.
    const size_t first = source.find('/', 5);
    const size_t second = first == std::string::npos ? first : source.find('/', first + 1);
    if (second != std::string::npos) return source.substr(second + 1);
  }
  return source.substr(source.rfind('/') + 1);
}

json replica_pod(const EngineLaunch& launch, const PodRuntimeOptions& options,
                 const std::string& namespace_name, const std::string& service_uid, uint32_t rank) {
  const api::InferenceService& svc = *launch.service;
  const api::Model& model = *launch.model;
  const std::string models_mount = "/var/lib/loadstar/models";
  // A multi-node replica's pods: the leader (rank 0) serves; the others
  // run the same engine at their rank, joined to the leader's group.
  const bool group = !launch.members.empty();
  const uint32_t group_size = static_cast<uint32_t>(launch.members.size()) + 1;
  const std::string& node = rank == 0 ? launch.node : launch.members.at(rank - 1).node;
  const std::vector<DeviceShare>& shares =
      rank == 0 ? launch.shares : launch.members.at(rank - 1).shares;
  json labels = {{kManagedBy, "loadstar"},
                 {"app.kubernetes.io/component", rank == 0 ? "engine" : kGroupMemberComponent},
                 {kServiceLabel, svc.metadata.name},
                 {kIndexLabel, std::to_string(launch.index)}};
  if (!launch.revision.empty()) labels[kRevisionLabel] = launch.revision;
  if (group) {
    labels[kGroupSizeLabel] = std::to_string(group_size);
    labels[kGroupRankLabel] = std::to_string(rank);
  }
  // A disaggregated service's pools, as llm-d labels them.
  if (const std::string_view role = api::pd_role(svc); !role.empty())
    labels["llm-d.ai/role"] = std::string(role);
  const engines::Engine* kind = engines::find(svc.spec.engine.name);
  if (!kind) kind = engines::find("engine-sim");  // the decoder admits only the table's names
  // The model as the agent publishes it: a directory, or for GGUF the one
  // file in it (named as in its source).
  // Its own version when its revision names one (a Pod of an old revision
  // restarting mid-rollout reads its bytes, not the newest), else the newest.
  std::string model_path =
      fmt::format("{}/{}/{}", models_mount, model.metadata.name,
                  launch.model_version.empty() ? std::string("current") : launch.model_version);
  // GGUF: the one file in the directory, named as in its source.
  auto gguf_in = [&](const api::Model& m) {
    const std::string& source = m.spec.source;
    const size_t slash = source.rfind('/');
    return "/" + (source.ends_with(".gguf") && slash != std::string::npos
                      ? source.substr(slash + 1)
                      : std::string("model.gguf"));
  };
  if (kind->model_is_file) model_path += gguf_in(model);
  engines::LaunchSpec spec;
  spec.model = model_path;
  spec.served_name = api::served_name(svc);
  spec.kv_role = api::kv_role(svc);
  if (svc.spec.prefill) spec.kv_link = svc.spec.prefill->link;
  spec.host = "$(POD_IP)";
  spec.port = options.engine_port;
  for (const auto& share : shares) spec.gpus += share.milli >= 1000 && !share.mig_slices;
  if (group) {
    // The leader's group address is its Pod IP; the others are told it
    // (LWS_LEADER_ADDRESS, set when the leader has one). engine-sim's group
    // port is its HTTP port.
    spec.nnodes = group_size;
    spec.node_rank = rank;
    spec.master_addr = rank == 0 ? "$(POD_IP)" : "$(LWS_LEADER_ADDRESS)";
    spec.master_port = kind->writes_port_file ? options.engine_port : kGroupPort;
  }
  spec.context_length = svc.spec.engine.context_length;
  spec.max_sequences = svc.spec.engine.max_sequences;
  spec.threads = svc.spec.engine.threads;
  spec.prefix_cache = svc.spec.engine.prefix_cache;
  spec.extra_args = svc.spec.engine.args;
  const bool kv_events = svc.spec.engine.kv_events && kind->kv_events;
  const int events_port = options.engine_port == kKvEventsPort ? kKvEventsPort + 1 : kKvEventsPort;
  // A wildcard address: vLLM binds only those (it connects to others).
  if (kv_events) spec.kv_events_endpoint = fmt::format("tcp://*:{}", events_port);
  // LoRA adapters loaded at start: each staged by an init container of its
  // own (cached under its flat name, as models are), served under its name
  // in the service's namespace.
  if (svc.spec.lora) {
    spec.max_loras = svc.spec.lora->max_loras;
    spec.max_cpu_loras = svc.spec.lora->max_cpu_loras;
    spec.max_lora_rank = svc.spec.lora->max_rank;
    for (const api::Model& adapter : launch.adapters) {
      const std::string qualified = kube::NamespaceScope::unflat(adapter.metadata.name);
      std::string path = fmt::format("{}/{}/current", models_mount, adapter.metadata.name);
      if (kind->model_is_file) path += gguf_in(adapter);
      spec.adapters.push_back({qualified.substr(qualified.rfind('/') + 1), path});
    }
  }
  // The image: the service's, else this controller's per-engine setting,
  // else the table's pinned default (engine-sim is Loadstar's own image).
  std::string image = svc.spec.engine.image;
  if (auto it = options.engine_images.find(kind->name);
      image.empty() && it != options.engine_images.end())
    image = it->second;
  if (image.empty()) image = kind->name == "engine-sim" ? options.image : kind->image;
  json env = json::array(
      {{{"name", "POD_IP"}, {"valueFrom", {{"fieldRef", {{"fieldPath", "status.podIP"}}}}}},
       {{"name", "NODE_IP"}, {"valueFrom", {{"fieldRef", {{"fieldPath", "status.hostIP"}}}}}}});
  json engine_env = env;
  // Weights come from the agent's cache; no engine downloads behind it.
  engine_env.push_back({{"name", "HF_HUB_OFFLINE"}, {"value", "1"}});
  // What LeaderWorkerSet tells each pod of a group.
  if (group) {
    engine_env.push_back(
        {{"name", kLeaderAddressEnv}, {"value", rank == 0 ? std::string("$(POD_IP)") : ""}});
    engine_env.push_back({{"name", "LWS_GROUP_SIZE"}, {"value", std::to_string(group_size)}});
    engine_env.push_back({{"name", "LWS_WORKER_INDEX"}, {"value", std::to_string(rank)}});
  }
  // Disaggregated: a decode engine reaches its prefill's KV at the address
  // the prefill advertises, its Pod's (VLLM_NIXL_SIDE_CHANNEL_HOST, as
  // llm-d's manifests set it).
  const bool kv_transfer = !spec.kv_role.empty() && kind->kv_transfer;
  if (kv_transfer)
    engine_env.push_back({{"name", "VLLM_NIXL_SIDE_CHANNEL_HOST"},
                          {"valueFrom", {{"fieldRef", {{"fieldPath", "status.podIP"}}}}}});
  auto probe = [&](double period_s, int failures) {
    return json{{"httpGet", {{"path", kind->health_path}, {"port", options.engine_port}}},
                {"periodSeconds", static_cast<int>(period_s)},
                {"timeoutSeconds", std::max(1, static_cast<int>(period_s))},
                {"failureThreshold", failures}};
  };
  // A multi-minute load is covered by the startup probe; after it,
  // readiness follows load and liveness restarts a hung engine.
  json volume_mounts = {{{"name", "models"}, {"mountPath", models_mount}, {"readOnly", true}}};
  json engine_ports = {{{"name", "http"}, {"containerPort", options.engine_port}}};
  if (kv_events) engine_ports.push_back({{"name", "kv-events"}, {"containerPort", events_port}});
  // vLLM's NIXL side channel (engine-sim's is its HTTP port).
  if (kv_transfer && kind->name != "engine-sim")
    engine_ports.push_back({{"name", "nixl"}, {"containerPort", engines::kNixlSideChannelPort}});
  json engine = {{"name", "engine"},
                 {"image", image},
                 {"imagePullPolicy", options.image_pull_policy},
                 {"command", kind->container_command},
                 {"args", kind->flags(spec)},
                 {"env", engine_env},
                 {"ports", engine_ports},
                 // A failed engine's last log lines become its termination message,
                 // so its own error reaches the replica's status.
                 {"terminationMessagePolicy", "FallbackToLogsOnError"},
                 {"volumeMounts", volume_mounts}};
  // An engine that spans nodes through its own launcher (vLLM: Ray): the
  // leader forms the cluster first; the others run the launcher alone.
  // `sh -c '... && exec "$0" "$@"' ENGINE FLAGS...` keeps every flag one
  // word, unquoted, as Kubernetes expands $(VARS) in it.
  if (group && !kind->group_worker_command.empty()) {
    if (rank == 0) {
      json args = kind->container_command;
      for (const auto& flag : engine["args"]) args.push_back(flag);
      engine["command"] = {"sh", "-c", kind->group_leader_prelude + R"( && exec "$0" "$@")"};
      engine["args"] = std::move(args);
    } else {
      engine["command"] = {"sh", "-c", kind->group_worker_command};
      engine.erase("args");
    }
  }
  // The leader serves; the group's other pods (headless) have nothing to probe.
  if (rank == 0) {
    engine["startupProbe"] =
        probe(5, std::max(1, static_cast<int>(std::ceil(kind->startup_allowance_s / 5))));
    engine["readinessProbe"] = probe(kind->name == "engine-sim" ? 1 : 5, 3);
    engine["livenessProbe"] = probe(10, 3);
  } else {
    engine.erase("ports");
  }
  if (kind->needs_shm)
    engine["volumeMounts"].push_back({{"name", "shm"}, {"mountPath", "/dev/shm"}});
  json resources = json::object();
  if (svc.spec.cpu > 0) resources["cpu"] = fmt::format("{}m", std::lround(svc.spec.cpu * 1000));
  if (svc.spec.memory_bytes > 0) resources["memory"] = std::to_string(svc.spec.memory_bytes);
  // Asked for as NVIDIA's device plugin advertises them: a whole card is one
  // nvidia.com/gpu; a MIG slice one nvidia.com/mig-PROFILE (mixed
  // strategy). On a time-sliced node (each card advertised R times) a
  // fraction of a card is one replica and a whole card all R of its
  // replicas, so the kubelet's count agrees with the scheduler's; on other
  // nodes a fraction is the scheduler's bookkeeping alone (the devices
  // annotation says which card).
  const uint32_t replicas = std::max<uint32_t>(1, launch.device_replicas);
  uint32_t gpu = 0, mig = 0;
  for (const auto& s : shares) {
    if (s.mig_slices > 0)
      ++mig;
    else if (s.milli >= 1000)
      gpu += replicas;
    else if (replicas > 1)
      ++gpu;
  }
  if (gpu > 0) resources["nvidia.com/gpu"] = std::to_string(gpu);
  if (mig > 0 && !svc.spec.gpu.mig.empty())
    resources["nvidia.com/mig-" + svc.spec.gpu.mig] = std::to_string(mig);
  if (!resources.empty()) engine["resources"] = {{"requests", resources}, {"limits", resources}};
  // The stage container alone holds the internal token (the engine never
  // talks to the agent).
  json stage_env = env;
  if (!options.token_secret.empty())
    stage_env.push_back(
        {{"name", "LOADSTAR_TOKEN"},
         {"valueFrom", {{"secretKeyRef", {{"name", options.token_secret}, {"key", "token"}}}}}});
  json stage = {{"name", "stage"},
                {"image", options.image},
                {"imagePullPolicy", options.image_pull_policy},
                {"command", {"loadstar"}},
                {"args",
                 {"stage", model.metadata.name, "--source", model.spec.source, "--agent",
                  fmt::format("http://$(NODE_IP):{}", options.agent_port), "--timeout", "3600"}},
                {"env", stage_env},
                // A failed stage's last lines (the agent's error) reach the
                // Pod's status and the replica's, as the engine's do.
                {"terminationMessagePolicy", "FallbackToLogsOnError"}};
  if (!launch.model_version.empty()) {
    stage["args"].push_back("--version");
    stage["args"].push_back(launch.model_version);
  }
  json init_containers = json::array({stage});
  for (size_t i = 0; i < launch.adapters.size(); ++i) {
    json adapter_stage = stage;
    adapter_stage["name"] = fmt::format("stage-lora-{}", i);
    adapter_stage["args"] = {"stage",     launch.adapters[i].metadata.name,
                             "--source",  launch.adapters[i].spec.source,
                             "--agent",   fmt::format("http://$(NODE_IP):{}", options.agent_port),
                             "--timeout", "3600"};
    init_containers.push_back(std::move(adapter_stage));
  }
  json pod = {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata",
       {{"name", group_pod_name(launch.replica, rank)},
        {"namespace", namespace_name},
        {"labels", labels},
        {"annotations",
         {{kSharesAnnotation, shares_to_json(shares)},
          {"loadstar.dev/model", model.metadata.name}}}}},
      // Created bound where the scheduler put it: one write per replica (a
      // create and then a Binding were two, and placement at scale is
      // bounded by the API server's writes).
      {"spec",
       {{"schedulerName", "loadstar"},
        {"nodeName", node},
        {"tolerations",
         {{{"key", kube::kToleratedGpuTaint}, {"operator", "Exists"}, {"effect", "NoSchedule"}}}},
        // A group restarts as a whole (LWS's RecreateGroupOnPodRestart):
        // its pods end, and the controller starts the group again.
        {"restartPolicy", group ? "Never" : "Always"},
        {"automountServiceAccountToken", false},  // engines never call the API
        {"terminationGracePeriodSeconds",
         std::max<int64_t>(options.termination_grace_s, std::lround(kind->stop_grace_s))},
        {"initContainers", init_containers},
        {"containers", {engine}},
        {"volumes",
         {{{"name", "models"},
           {"hostPath",
            {{"path", options.cache_host_path + "/models"}, {"type", "DirectoryOrCreate"}}}}}}}}};
  if (!spec.adapters.empty()) {
    std::string names;
    for (const auto& a : spec.adapters) names += (names.empty() ? "" : ",") + a.name;
    pod["metadata"]["annotations"][kube::kLoraAdaptersAnnotation] = names;
  }
  if (kind->needs_shm)
    pod["spec"]["volumes"].push_back(
        {{"name", "shm"}, {"emptyDir", {{"medium", "Memory"}, {"sizeLimit", options.shm_size}}}});
  if (!service_uid.empty())
    pod["metadata"]["ownerReferences"] = {
        {{"apiVersion", fmt::format("{}/{}", api::kGroup, api::kVersion)},
         {"kind", "InferenceService"},
         {"name", api::served_name(svc)},
         {"uid", service_uid},
         {"controller", true},
         {"blockOwnerDeletion", true}}};
  return pod;
}

PodRuntime::PodRuntime(const kube::Client& client, const store::KubeStore& store,
                       PodRuntimeOptions options)
    : client_(client),
      store_(store),
      options_(std::move(options)),
      scope_(store.scope()),
      pods_(std::make_unique<kube::ScopedInformer>(
          client_, scope_, "v1", "pods",
          fmt::format("{}=loadstar,app.kubernetes.io/component in (engine,{})", kManagedBy,
                      kGroupMemberComponent))),
      groups_(client_, scope_, *pods_) {}

PodRuntime::~PodRuntime() {
  pods_->stop();
}

Status PodRuntime::start(double timeout_s) {
  pods_->start(nullptr);
  if (!pods_->wait_synced(timeout_s))
    return make_error(ErrorCode::kUnavailable, "cannot list pods in {}", scope_.describe());
  return ok_status();
}

std::string PodRuntime::pod_path(const std::string& replica) const {
  const kube::NamespaceScope::Name pod = scope_.split(replica);
  return kube::collection_path("v1", pod.namespace_name, "pods") + "/" + pod.name;
}

Status PodRuntime::ensure_token_secret(const std::string& namespace_name) {
  if (namespace_name == scope_.home() || options_.internal_token.empty() ||
      options_.token_secret.empty() || token_secrets_.count(namespace_name))
    return ok_status();
  auto root = http::BearerToken::from_string(options_.internal_token, "the internal token");
  if (!root.ok()) return root.error();
  const std::string token = root->for_namespace(namespace_name).value();
  const std::string path =
      kube::collection_path("v1", namespace_name, "secrets") + "/" + options_.token_secret;
  const json secret = {{"apiVersion", "v1"},
                       {"kind", "Secret"},
                       {"metadata",
                        {{"name", options_.token_secret},
                         {"namespace", namespace_name},
                         {"labels", {{kManagedBy, "loadstar"}}}}},
                       {"type", "Opaque"},
                       {"stringData", {{"token", token}}}};
  auto existing = client_.get(path);
  if (!existing.ok() && existing.error().code != ErrorCode::kNotFound)
    return make_error(existing.error().code, "reading Secret {}/{}: {}", namespace_name,
                      options_.token_secret, existing.error().message);
  if (!existing.ok()) {
    auto created = client_.create(kube::collection_path("v1", namespace_name, "secrets"), secret);
    if (!created.ok() && created.error().code != ErrorCode::kConflict)
      return make_error(created.error().code, "creating Secret {}/{}: {}", namespace_name,
                        options_.token_secret, created.error().message);
    spdlog::info("created Secret {}/{} with the namespace's token", namespace_name,
                 options_.token_secret);
  } else {
    // Someone else's Secret of that name is never overwritten.
    const json labels = existing->value("metadata", json::object()).value("labels", json::object());
    if (labels.value(kManagedBy, "") != "loadstar")
      return make_error(ErrorCode::kConflict,
                        "Secret {}/{} exists and is not Loadstar's (label {}=loadstar); replicas "
                        "there stage with it: delete or rename it",
                        namespace_name, options_.token_secret, kManagedBy);
    std::string held;
    if (const json data = existing->value("data", json::object());
        data.contains("token") && data["token"].is_string())
      held = base64_decode(data["token"].get<std::string>()).value_or("");
    if (held != token) {
      // The internal token was rotated: the namespace's follows.
      auto patched = client_.merge_patch(path, {{"stringData", {{"token", token}}}});
      if (!patched.ok())
        return make_error(patched.error().code, "updating Secret {}/{}: {}", namespace_name,
                          options_.token_secret, patched.error().message);
      spdlog::info("updated Secret {}/{} to the namespace's current token", namespace_name,
                   options_.token_secret);
    }
  }
  token_secrets_.insert(namespace_name);
  return ok_status();
}

Status PodRuntime::launch(const EngineLaunch& launch) {
  if (launch.service->spec.lora && launch.service->spec.lora->on_demand)
    return make_error(ErrorCode::kInvalidArgument,
                      "spec.lora.loading: onDemand is served in local mode only so far (in "
                      "Kubernetes the adapters are staged with each replica: use loading: start)");
  const kube::NamespaceScope::Name pod_name = scope_.split(launch.replica);
  if (auto pod = pods_->get(pod_name)) {
    if (pod->value("metadata", json::object()).contains("deletionTimestamp"))
      return make_error(ErrorCode::kUnavailable, "its previous pod is still terminating");
    stopping_.erase(launch.replica);
    return ok_status();  // created before (by us, or a controller before us)
  }
  // A group starts again once every pod of its previous run is gone.
  for (uint32_t rank = 1; rank <= launch.members.size(); ++rank) {
    kube::NamespaceScope::Name member = pod_name;
    member.name = group_pod_name(pod_name.name, rank);
    if (pods_->get(member))
      return make_error(ErrorCode::kUnavailable, "its previous group's pod {} is still terminating",
                        member.name);
  }
  LS_RETURN_IF_ERROR(ensure_token_secret(pod_name.namespace_name));
  // A prefill pool's Pods belong to the service it is the prefill of.
  const std::string uid = store_.uid_of("InferenceService", api::served_name(*launch.service));
  // The Pod speaks its namespace's names: the service and replica bare, the
  // model as the agents' caches name it.
  api::InferenceService service = *launch.service;
  service.metadata.name = scope_.split(service.metadata.name).name;
  if (!service.spec.prefill_of.empty())
    service.spec.prefill_of = scope_.split(service.spec.prefill_of).name;
  api::Model model = *launch.model;
  model.metadata.name = kube::NamespaceScope::flat(model.metadata.name);
  EngineLaunch local = launch;
  for (api::Model& adapter : local.adapters)
    adapter.metadata.name = kube::NamespaceScope::flat(adapter.metadata.name);
  local.replica = pod_name.name;
  local.service = &service;
  local.model = &model;
  json pod = replica_pod(local, options_, pod_name.namespace_name, uid);
  auto created = client_.create(kube::collection_path("v1", pod_name.namespace_name, "pods"), pod);
  if (!created.ok() && created.error().code != ErrorCode::kConflict)
    return make_error(created.error().code, "creating pod {}: {}", launch.replica,
                      created.error().message);
  // A multi-node group's other pods follow once the leader has an address.
  if (!launch.members.empty()) {
    std::vector<json> members;
    for (uint32_t rank = 1; rank <= launch.members.size(); ++rank)
      members.push_back(replica_pod(local, options_, pod_name.namespace_name, uid, rank));
    groups_.launched(launch.replica, std::move(members));
  }
  stopping_.erase(launch.replica);
  created_[launch.replica] = std::chrono::steady_clock::now();
  spdlog::info("replica {}: pod created on {}", launch.replica, launch.node);
  return ok_status();
}

EngineStatus PodRuntime::status(const std::string& replica) {
  EngineStatus st;
  auto pod = pods_->get(scope_.split(replica));
  if (pod) created_.erase(replica);
  if (!pod && created_.count(replica) &&
      std::chrono::steady_clock::now() - created_[replica] < std::chrono::seconds(30)) {
    st.exists = true;
    st.message = "pod created";
    return st;
  }
  if (!pod) {
    // Not in the informer yet right after creation is no exit: a pod we
    // created shows up within a watch round trip; one that vanished was
    // deleted by someone else.
    st.exists = false;
    st.exited = !stopping_.count(replica);
    st.message = "its pod was deleted";
    stopping_.erase(replica);
    groups_.remove(replica, 0);
    return st;
  }
  st.exists = true;
  const kube::Pod p = kube::pod_from_json(*pod);
  if (p.phase == "Failed" || p.phase == "Succeeded") {
    st.exited = !stopping_.count(replica);
    st.exists = false;
    const kube::ContainerState* c = p.container("engine");
    st.message = fmt::format("pod {}: {} {}", p.phase, p.reason, p.message);
    if (c && !c->message.empty()) st.message += ": " + c->message;
    if (groups_.is_group(replica)) st.message = "multi-node group ended: leader " + st.message;
    remove(replica, 0);
    return st;
  }
  if (!p.deleting && !stopping_.count(replica))
    if (auto ended = groups_.tend(replica, p)) {
      // One pod of a group ended: the group ends, and starts again as a whole.
      spdlog::warn("replica {}: {}; its group stops", replica, *ended);
      remove(replica, 0);
      st.exists = false;
      st.exited = true;
      st.message = "multi-node group ended: " + *ended;
      return st;
    }
  st.staged = p.initialized;
  if (st.staged) {
    // Its init container staged the model there: that agent holds it.
    auto model = p.annotations.find("loadstar.dev/model");
    if (!p.node_name.empty() && model != p.annotations.end())
      held_[p.node_name].insert(kube::NamespaceScope::unflat(model->second));
  }
  st.cards = cards_of(p, *pod);
  const kube::ContainerState* engine = p.container("engine");
  st.started = engine && engine->state == "running";
  st.ready = p.ready;
  st.host = p.pod_ip;
  st.port = options_.engine_port;
  if (auto events = p.port("engine", "kv-events"); events && !p.pod_ip.empty())
    st.kv_events = fmt::format("tcp://{}:{}", p.pod_ip, *events);
  if (st.ready) return st;
  if (p.node_name.empty()) {
    st.message = "pod not bound yet";
  } else if (!st.staged) {
    std::string s;
    for (const auto& c : p.init_containers)
      if (c.name == "stage") s = c.describe();
    st.message = "staging the model" + (s.empty() ? "" : " (" + s + ")");
  } else {
    std::string s = engine ? engine->describe() : "";
    st.message = st.started ? "loading weights" : s.empty() ? "starting the engine" : s;
  }
  return st;
}

std::vector<int> PodRuntime::cards_of(const kube::Pod& pod, const json& object) {
  auto node = devices_.find(pod.node_name);
  const std::string uid = object.value("metadata", json::object()).value("uid", "");
  if (node == devices_.end() || uid.empty()) return {};
  std::vector<int> cards = agent::cards_of(node->second, uid);
  // The annotation says where the replica is, for a controller that takes
  // the Pod over: the cards the kubelet handed it.
  if (auto moved = shares_on(shares_from(object), cards)) {
    const json patch = {
        {"metadata", {{"annotations", {{kSharesAnnotation, shares_to_json(*moved)}}}}}};
    auto r = client_.merge_patch(
        kube::collection_path("v1", pod.namespace_name, "pods") + "/" + pod.name, patch);
    if (!r.ok() && r.error().code != ErrorCode::kNotFound)
      spdlog::warn("pod {}: recording its cards: {}", pod.name, r.error().message);
  }
  return cards;
}

void PodRuntime::remove(const std::string& name, int64_t grace_s) {
  created_.erase(name);
  groups_.remove(name, grace_s);
  auto r = client_.remove(pod_path(name), grace_s);
  if (!r.ok() && r.error().code != ErrorCode::kNotFound)
    spdlog::warn("deleting pod {}: {}", name, r.error().message);
}

void PodRuntime::stop(const std::string& replica) {
  if (stopping_.insert(replica).second) remove(replica, options_.termination_grace_s);
}

void PodRuntime::unroute(const std::string& replica) {
  auto pod = pods_->get(scope_.split(replica));
  if (!pod) return;  // not created yet, or gone: nothing routes to it
  const json patch = {{"metadata", {{"annotations", {{kDrainingAnnotation, "true"}}}}}};
  auto r = client_.merge_patch(pod_path(replica), patch);
  if (!r.ok() && r.error().code != ErrorCode::kNotFound)
    spdlog::warn("marking pod {} draining: {} (gateways keep routing to it until it stops)",
                 replica, r.error().message);
}

void PodRuntime::route_share(const std::string& replica, uint32_t weight) {
  auto pod = pods_->get(scope_.split(replica));
  if (!pod) return;
  const json value = weight > 0 ? json(std::to_string(weight)) : json(nullptr);
  const json patch = {{"metadata", {{"annotations", {{kube::kCanaryWeightAnnotation, value}}}}}};
  auto r = client_.merge_patch(pod_path(replica), patch);
  if (!r.ok() && r.error().code != ErrorCode::kNotFound)
    spdlog::warn("setting pod {}'s canary weight to {}: {}", replica, weight, r.error().message);
}

void PodRuntime::kill(const std::string& replica) {
  stopping_.insert(replica);
  remove(replica, 0);
}

std::vector<http::Header> PodRuntime::agent_headers() const {
  std::vector<http::Header> headers = {{"Content-Type", "application/json"}};
  if (!options_.agent_authorization.empty())
    headers.push_back({"Authorization", options_.agent_authorization});
  return headers;
}

Result<std::string> PodRuntime::resolve_version(const std::string& source) {
  std::string why = "no node has an agent address yet";
  for (const auto& [node, address] : store_.node_addresses()) {
    auto r = http::fetch({.host = address,
                          .port = options_.agent_port,
                          .method = "POST",
                          .target = "/v1/resolve",
                          .body = json({{"source", source}}).dump(),
                          .headers = agent_headers(),
                          .timeout_s = 15});
    if (!r.ok()) {
      why = fmt::format("agent on {}: {}", node, r.error().message);
      continue;
    }
    const json answer = json::parse(r->body, nullptr, false);
    if (r->status == 200 && answer.is_object() && answer.contains("version") &&
        answer["version"].is_string() && !answer["version"].get<std::string>().empty())
      return answer["version"].get<std::string>();
    std::string message = r->body;
    if (answer.is_object() && answer.contains("error") && answer["error"].is_object())
      message = value_or(answer["error"], "message", r->body);
    // The source's own answer (refused, not found) is the same from every agent.
    if (r->status == 400 || r->status == 403 || r->status == 404)
      return make_error(ErrorCode::kInvalidArgument, "{}", message);
    why = fmt::format("agent on {}: {} {}", node, r->status, message);
  }
  return make_error(ErrorCode::kUnavailable, "{}", why);
}

void PodRuntime::refresh_holdings(bool force) {
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - listed_ < std::chrono::seconds(10)) return;
  listed_ = now;
  for (const auto& [node, address] : store_.node_addresses()) {
    auto r = http::fetch({.host = address,
                          .port = options_.agent_port,
                          .target = "/v1/models",
                          .headers = agent_headers(),
                          .timeout_s = 2});
    const json listing = r.ok() && r->status == 200 ? json::parse(r->body, nullptr, false) : json();
    if (!listing.is_object() || !listing.contains("models") || !listing["models"].is_array())
      continue;  // unreachable or not an agent: keep what we knew
    std::set<std::string, std::less<>> models;
    for (const json& m : listing["models"])
      if (m.is_object() && m.contains("model") && m["model"].is_string())
        models.insert(kube::NamespaceScope::unflat(m["model"].get<std::string>()));
    held_[node] = std::move(models);
    if (no_devices_.count(node)) continue;
    auto d = http::fetch({.host = address,
                          .port = options_.agent_port,
                          .target = "/v1/devices",
                          .headers = agent_headers(),
                          .timeout_s = 2});
    if (d.ok() && d->status == 404) {
      no_devices_.insert(node);  // not on a kubelet's node (or an older agent)
      continue;
    }
    if (d.ok() && d->status == 200)
      if (auto assignments = agent::parse_device_listing(d->body); assignments.ok())
        devices_[node] = std::move(*assignments);
  }
}

void PodRuntime::end_pass(const std::vector<std::string>& /*models_in_use*/) {
  refresh_holdings();
  keep_token_secrets();
}

void PodRuntime::keep_token_secrets() {
  if (scope_.single() || options_.internal_token.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - secrets_checked_ < std::chrono::seconds(10)) return;
  secrets_checked_ = now;
  std::set<std::string> namespaces(scope_.namespaces().begin(), scope_.namespaces().end());
  if (scope_.all())
    for (const api::Resource& r : store_.list())
      if (const auto* svc = std::get_if<api::InferenceService>(&r))
        namespaces.insert(scope_.split(svc->metadata.name).namespace_name);
  for (const std::string& ns : namespaces)
    if (Status s = ensure_token_secret(ns); !s.ok()) spdlog::warn("{}", s.error().message);
}

void PodRuntime::keep_warm(const api::Model& model, uint32_t nodes,
                           const std::string& model_version) {
  const std::string& name = model.metadata.name;
  // A model new to keep warm is placed by what the agents hold now.
  refresh_holdings(warmed_.insert(name).second);
  // Candidates: schedulable GPU nodes, those that hold the model first.
  std::vector<std::string> holding, others;
  for (const api::Resource& r : store_.list())
    if (const auto* node = std::get_if<api::Node>(&r);
        node && node->spec.schedulable && !node->spec.gpus.empty())
      (held_[node->metadata.name].count(name) ? holding : others).push_back(node->metadata.name);
  std::sort(holding.begin(), holding.end());
  std::sort(others.begin(), others.end());
  holding.insert(holding.end(), others.begin(), others.end());
  if (holding.size() > nodes) holding.resize(nodes);
  const auto now = std::chrono::steady_clock::now();
  const auto addresses = store_.node_addresses();
  for (const std::string& node : holding) {
    auto& asked = asked_[{name, node}];
    if (now - asked < std::chrono::seconds(5)) continue;
    asked = now;
    auto address = addresses.find(node);
    if (address == addresses.end()) continue;
    // The agent's answer is its progress; "ready" means it holds the model.
    json body = {{"model", kube::NamespaceScope::flat(name)}, {"source", model.spec.source}};
    if (!model_version.empty()) body["version"] = model_version;
    auto r = http::fetch({.host = address->second,
                          .port = options_.agent_port,
                          .method = "POST",
                          .target = "/v1/stage",
                          .body = body.dump(),
                          .headers = agent_headers(),
                          .timeout_s = 2});
    const json answer = r.ok() ? json::parse(r->body, nullptr, false) : json();
    if (!r.ok() || r->status != 202 || !answer.is_object()) {
      spdlog::warn("warm weights: agent on {} ({}): {}", node, address->second,
                   r.ok() ? fmt::format("answered {}", r->status) : r.error().message);
      continue;
    }
    const std::string state = value_or(answer, "state", "");
    if (state == "ready") {
      if (held_[node].insert(name).second)
        spdlog::info("warm weights: {} staged on {}", name, node);
    } else if (state == "failed") {
      spdlog::warn("warm weights: staging {} on {}: {}", name, node, value_or(answer, "error", ""));
    }
  }
}

std::set<std::string, std::less<>> PodRuntime::models_on(const std::string& node) {
  auto it = held_.find(node);
  return it == held_.end() ? std::set<std::string, std::less<>>{} : it->second;
}

std::vector<ExistingEngine> PodRuntime::existing() {
  std::vector<ExistingEngine> out;
  for (const json& object : pods_->items()) {
    const kube::Pod pod = kube::pod_from_json(object);
    if (pod.deleting) continue;
    if (auto component = pod.labels.find("app.kubernetes.io/component");
        component != pod.labels.end() && component->second == kGroupMemberComponent)
      continue;  // taken over with its leader
    if (pod.node_name.empty()) {
      // Created but never bound (the controller stopped in between): place it anew.
      remove(scope_.qualify(pod.namespace_name, pod.name), 0);
      continue;
    }
    ExistingEngine e;
    e.replica = scope_.qualify(pod.namespace_name, pod.name);
    auto service = pod.labels.find(kServiceLabel);
    auto index = pod.labels.find(kIndexLabel);
    e.service =
        service != pod.labels.end() ? scope_.qualify(pod.namespace_name, service->second) : "";
    e.index =
        index != pod.labels.end() ? static_cast<uint32_t>(std::atoi(index->second.c_str())) : 0;
    e.node = pod.node_name;
    if (auto revision = pod.labels.find(kRevisionLabel); revision != pod.labels.end())
      e.revision = revision->second;
    e.shares = shares_from(object);
    e.draining = pod.annotations.count(kDrainingAnnotation) > 0;
    if (auto w = pod.annotations.find(kube::kCanaryWeightAnnotation); w != pod.annotations.end())
      e.canary_weight = static_cast<uint32_t>(std::max(0, std::atoi(w->second.c_str())));
    // A multi-node leader: its group's other pods come with it. One that is
    // missing ends the group at the first status (the controller then
    // starts it again whole).
    if (auto size = pod.labels.find(kGroupSizeLabel); size != pod.labels.end()) {
      groups_.adopted(e.replica,
                      static_cast<uint32_t>(std::clamp(std::atoi(size->second.c_str()), 1, 64)));
      for (const json& member : groups_.members(e.replica).value_or(std::vector<json>{}))
        e.members.push_back({kube::pod_from_json(member).node_name, "", shares_from(member)});
    }
    if (!e.service.empty()) out.push_back(std::move(e));
  }
  // Group pods whose leader is not taken over (gone, or going) go too.
  for (const json& object : pods_->items()) {
    const kube::Pod pod = kube::pod_from_json(object);
    auto component = pod.labels.find("app.kubernetes.io/component");
    if (pod.deleting || component == pod.labels.end() || component->second != kGroupMemberComponent)
      continue;
    const std::string leader =
        scope_.qualify(pod.namespace_name, pod.name.substr(0, pod.name.rfind("-node")));
    if (!groups_.is_group(leader)) {
      spdlog::info("pod {}: its group's leader is gone; deleting it", pod.name);
      auto r = client_.remove(
          kube::collection_path("v1", pod.namespace_name, "pods") + "/" + pod.name, 0);
      if (!r.ok() && r.error().code != ErrorCode::kNotFound)
        spdlog::warn("deleting pod {}: {}", pod.name, r.error().message);
    }
  }
  return out;
}

}  // namespace loadstar::controller
