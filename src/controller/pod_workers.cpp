#include "controller/pod_workers.h"

#include <cmath>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api/schema.h"
#include "kube/objects.h"

namespace loadstar::controller {

using kube::json;

namespace {

constexpr const char* kManagedBy = "app.kubernetes.io/managed-by";
constexpr const char* kJobLabel = "loadstar.dev/job";
constexpr const char* kWorkerLabel = "loadstar.dev/worker-index";
// Its devices as the scheduler allocated them, for a controller that takes it over.
constexpr const char* kWorkerSharesAnnotation = "loadstar.dev/shares";
constexpr const char* kCheckpointMount = "/var/lib/loadstar/checkpoint";

// The job's own directory on its checkpoint volume: its name (a PVC is its
// namespace's; a node's directory is shared by the namespaces on it).
std::string checkpoint_dir_name(const api::Job& job) {
  const std::string name = kube::NamespaceScope::unflat(job.metadata.name);
  const size_t slash = name.rfind('/');
  return slash == std::string::npos ? name : name.substr(0, slash) + "_" + name.substr(slash + 1);
}

}  // namespace

json worker_pod(const WorkerLaunch& launch, const std::string& namespace_name,
                const std::string& job_uid, const std::string& leader_address,
                const PodWorkersOptions& options) {
  const api::Job& job = *launch.job;
  json env = json::array();
  for (const auto& [name, value] : worker_env(launch, leader_address))
    env.push_back({{"name", name}, {"value", value}});
  env.push_back(
      {{"name", "POD_IP"}, {"valueFrom", {{"fieldRef", {{"fieldPath", "status.podIP"}}}}}});
  // The leader is its own leader: its address is its Pod's.
  if (leader_address.empty())
    for (const char* name : {"LOADSTAR_LEADER_ADDRESS", "LWS_LEADER_ADDRESS"})
      for (auto& e : env)
        if (e["name"] == name)
          e = {{"name", name}, {"valueFrom", {{"fieldRef", {{"fieldPath", "status.podIP"}}}}}};
  json resources = json::object();
  if (job.spec.cpu > 0) resources["cpu"] = fmt::format("{}m", std::lround(job.spec.cpu * 1000));
  if (job.spec.memory_bytes > 0) resources["memory"] = std::to_string(job.spec.memory_bytes);
  uint32_t gpus = 0, mig = 0;
  for (const auto& s : launch.shares) {
    if (s.mig_slices > 0)
      ++mig;
    else if (s.milli >= 1000)
      ++gpus;
  }
  if (gpus > 0) resources["nvidia.com/gpu"] = std::to_string(gpus);
  if (mig > 0) resources["nvidia.com/mig-" + job.spec.gpu.mig] = std::to_string(mig);
  json container = {{"name", "worker"},
                    {"image", job.spec.image},
                    {"imagePullPolicy", options.image_pull_policy},
                    {"command", job.spec.command},
                    {"env", env},
                    // Its own last log lines reach the job's status.
                    {"terminationMessagePolicy", "FallbackToLogsOnError"}};
  if (!resources.empty()) container["resources"] = {{"requests", resources}, {"limits", resources}};
  // Its checkpoints on a volume that outlives the Pod, a directory per job
  // (the kubelet makes the subPath).
  json volumes = json::array();
  if (!job.spec.checkpoint_claim.empty() || !job.spec.checkpoint_host_path.empty()) {
    volumes.push_back(
        !job.spec.checkpoint_claim.empty()
            ? json{{"name", "checkpoint"},
                   {"persistentVolumeClaim", {{"claimName", job.spec.checkpoint_claim}}}}
            : json{{"name", "checkpoint"},
                   {"hostPath",
                    {{"path", job.spec.checkpoint_host_path}, {"type", "DirectoryOrCreate"}}}});
    container["volumeMounts"] = {{{"name", "checkpoint"},
                                  {"mountPath", kCheckpointMount},
                                  {"subPath", checkpoint_dir_name(job)}}};
    container["env"].push_back({{"name", "LOADSTAR_CHECKPOINT_DIR"}, {"value", kCheckpointMount}});
  }
  const std::string job_name = kube::NamespaceScope::unflat(job.metadata.name);
  const std::string bare = job_name.substr(job_name.rfind('/') + 1);
  json pod = {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata",
       {{"name", launch.worker.substr(launch.worker.rfind('/') + 1)},
        {"namespace", namespace_name},
        {"labels",
         {{kManagedBy, "loadstar"},
          {"app.kubernetes.io/component", "job-worker"},
          {kJobLabel, bare},
          {kWorkerLabel, std::to_string(launch.index)}}},
        {"annotations",
         {{"loadstar.dev/attempt", std::to_string(launch.attempt)},
          {"loadstar.dev/devices", launch.devices},
          {kWorkerSharesAnnotation, shares_to_json(launch.shares)}}}}},
      {"spec",
       {{"schedulerName", "loadstar"},
        {"nodeName", launch.node},
        {"restartPolicy", "Never"},
        {"terminationGracePeriodSeconds", std::lround(job.spec.termination_grace_s)},
        {"automountServiceAccountToken", false},
        {"tolerations",
         {{{"key", kube::kToleratedGpuTaint}, {"operator", "Exists"}, {"effect", "NoSchedule"}}}},
        {"containers", {container}}}}};
  if (!volumes.empty()) pod["spec"]["volumes"] = std::move(volumes);
  if (!job_uid.empty())
    pod["metadata"]["ownerReferences"] = {
        {{"apiVersion", fmt::format("{}/{}", api::kGroup, api::kVersion)},
         {"kind", "Job"},
         {"name", bare},
         {"uid", job_uid},
         {"controller", true},
         {"blockOwnerDeletion", true}}};
  return pod;
}

PodWorkers::PodWorkers(const kube::Client& client, const store::KubeStore& store,
                       PodWorkersOptions options)
    : client_(client),
      store_(store),
      options_(std::move(options)),
      scope_(store.scope()),
      pods_(std::make_unique<kube::ScopedInformer>(
          client_, scope_, "v1", "pods",
          fmt::format("{}=loadstar,app.kubernetes.io/component=job-worker", kManagedBy))) {}

PodWorkers::~PodWorkers() {
  pods_->stop();
}

Status PodWorkers::start(double timeout_s) {
  pods_->start(nullptr);
  if (!pods_->wait_synced(timeout_s))
    return make_error(ErrorCode::kUnavailable, "cannot list pods in {}", scope_.describe());
  return ok_status();
}

std::string PodWorkers::pod_path(const std::string& worker) const {
  const auto name = scope_.split(worker);
  return kube::collection_path("v1", name.namespace_name, "pods") + "/" + name.name;
}

std::string PodWorkers::logs_of(const std::string& job) const {
  const auto name = scope_.split(job);
  return fmt::format("kubectl -n {} logs -l {}={} --prefix", name.namespace_name, kJobLabel,
                     name.name);
}

std::optional<std::pair<std::string, std::string>> PodWorkers::ended(const std::string& job) {
  const auto name = scope_.split(job);
  auto object = client_.get(kube::collection_path(fmt::format("{}/{}", api::kGroup, api::kVersion),
                                                  name.namespace_name, "jobs") +
                            "/" + name.name);
  if (!object.ok()) return std::nullopt;
  const json status = object->value("status", json::object());
  const std::string phase = status.value("phase", "");
  if (phase != "Succeeded" && phase != "Failed") return std::nullopt;
  return std::pair{phase, status.value("message", std::string())};
}

Status PodWorkers::create(const WorkerLaunch& launch, const std::string& leader_address) {
  const auto name = scope_.split(launch.worker);
  const std::string uid = store_.uid_of("Job", launch.job->metadata.name);
  json pod = worker_pod(launch, name.namespace_name, uid, leader_address, options_);
  auto created = client_.create(kube::collection_path("v1", name.namespace_name, "pods"), pod);
  if (!created.ok() && created.error().code != ErrorCode::kConflict)
    return make_error(created.error().code, "creating pod {}: {}", launch.worker,
                      created.error().message);
  created_[launch.worker] = std::chrono::steady_clock::now();
  spdlog::info("job {}: worker {} pod created on {}", launch.job->metadata.name, launch.index,
               launch.node);
  return ok_status();
}

Status PodWorkers::start(const WorkerLaunch& launch) {
  addresses_.erase(launch.worker);  // a new attempt's pod has its own
  if (launch.job->spec.image.empty())
    return make_error(ErrorCode::kInvalidArgument,
                      "spec.image: required in Kubernetes mode (the workers' container image)");
  if (auto pod = pods_->get(scope_.split(launch.worker))) {
    // A worker of an attempt this controller does not know (a controller
    // before it started it): stopped within its grace period (it
    // checkpoints), and the job runs again once it is gone.
    if (!kube::pod_from_json(*pod).deleting) {
      auto r = client_.remove(pod_path(launch.worker),
                              std::lround(launch.job->spec.termination_grace_s));
      if (!r.ok() && r.error().code != ErrorCode::kNotFound)
        spdlog::warn("deleting pod {}: {}", launch.worker, r.error().message);
    }
    return make_error(ErrorCode::kUnavailable,
                      "its pod from an earlier attempt (another controller's) is stopping");
  }
  stopping_.erase(launch.worker);
  if (launch.index == 0) return create(launch, "");
  // The others once the leader has an address.
  Waiting w{launch, *launch.job, launch.worker.substr(0, launch.worker.rfind('-') + 1) + "0"};
  w.launch.job = nullptr;
  waiting_[launch.worker] = std::move(w);
  return ok_status();
}

WorkerStatus PodWorkers::status(const std::string& worker) {
  WorkerStatus st;
  if (auto it = waiting_.find(worker); it != waiting_.end()) {
    Waiting& w = it->second;
    auto leader = pods_->get(scope_.split(w.leader));
    kube::Pod p = leader ? kube::pod_from_json(*leader) : kube::Pod{};
    // A leader that ended quickly may be gone already: its address as seen.
    if (auto seen = addresses_.find(w.leader); p.pod_ip.empty() && seen != addresses_.end())
      p.pod_ip = seen->second;
    if (!leader && !created_.count(w.leader) && p.pod_ip.empty()) {
      st.exited = true;
      st.exit_code = -1;
      st.message = "its leader's pod ended before it had an address";
      waiting_.erase(it);
      return st;
    }
    st.exists = true;
    if (p.pod_ip.empty()) return st;
    w.launch.job = &w.job;
    Status s = create(w.launch, p.pod_ip);
    waiting_.erase(it);
    if (!s.ok()) {
      st.exists = false;
      st.exited = true;
      st.exit_code = -1;
      st.message = s.error().message;
    }
    return st;
  }
  auto pod = pods_->get(scope_.split(worker));
  if (pod) created_.erase(worker);
  if (!pod && created_.count(worker) &&
      std::chrono::steady_clock::now() - created_[worker] < std::chrono::seconds(30)) {
    st.exists = true;
    return st;
  }
  if (!pod) {
    created_.erase(worker);
    st.exited = !stopping_.erase(worker);
    st.exit_code = -1;
    st.message = "its pod was deleted";
    return st;
  }
  const kube::Pod p = kube::pod_from_json(*pod);
  if (!p.pod_ip.empty()) addresses_[worker] = p.pod_ip;
  if (p.phase != "Succeeded" && p.phase != "Failed") {
    st.exists = true;
    return st;
  }
  st.exited = true;
  const kube::ContainerState* c = p.container("worker");
  st.exit_code = c && c->state == "terminated" ? c->exit_code : (p.phase == "Succeeded" ? 0 : -1);
  st.message = fmt::format("pod {}: {}", p.name, c ? c->describe() : p.phase + " " + p.message);
  if (c && !c->message.empty()) st.message += ": " + c->message;
  // Ended: the Pod goes (its logs went to the job's status, its attempt is over).
  stopping_.erase(worker);
  auto r = client_.remove(pod_path(worker), 0);
  if (!r.ok() && r.error().code != ErrorCode::kNotFound)
    spdlog::warn("deleting pod {}: {}", worker, r.error().message);
  return st;
}

std::vector<RunningWorker> PodWorkers::running_workers(const std::string& job) {
  const auto name = scope_.split(job);
  std::vector<RunningWorker> out;
  for (const json& object : pods_->items()) {
    const kube::Pod p = kube::pod_from_json(object);
    auto label = p.labels.find(kJobLabel);
    auto index = p.labels.find(kWorkerLabel);
    if (p.namespace_name != name.namespace_name || label == p.labels.end() ||
        label->second != name.name || index == p.labels.end() || p.deleting ||
        p.node_name.empty() || p.phase == "Succeeded" || p.phase == "Failed")
      continue;
    auto annotation = [&](const char* key) {
      auto it = p.annotations.find(key);
      return it == p.annotations.end() ? std::string() : it->second;
    };
    RunningWorker w;
    w.worker = scope_.qualify(p.namespace_name, p.name);
    w.index = static_cast<uint32_t>(std::atoi(index->second.c_str()));
    w.attempt = static_cast<uint32_t>(std::atoi(annotation("loadstar.dev/attempt").c_str()));
    w.node = p.node_name;
    w.devices = annotation("loadstar.dev/devices");
    w.shares = shares_from_json(annotation(kWorkerSharesAnnotation));
    out.push_back(std::move(w));
  }
  return out;
}

void PodWorkers::stop(const std::string& worker, double grace_s) {
  addresses_.erase(worker);
  if (waiting_.erase(worker)) return;
  if (!stopping_.insert(worker).second) return;
  auto r = client_.remove(pod_path(worker), std::lround(grace_s));
  if (!r.ok() && r.error().code != ErrorCode::kNotFound)
    spdlog::warn("deleting pod {}: {}", worker, r.error().message);
}

}  // namespace loadstar::controller
