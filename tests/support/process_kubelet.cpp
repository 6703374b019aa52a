// A "process kubelet" for tests against a real API server that has no
// kubelet: it registers a Node, watches the Pods bound to it, and runs their
// containers as local processes, the way a kubelet would — init containers
// in order, then the containers, restarted when they exit (restartPolicy
// Always; Never: the Pod ends Succeeded or Failed), $(VAR) references expanded from env and the
// downward API (status.podIP, status.hostIP, metadata.name, spec.nodeName) and Secrets, readiness
// from the httpGet probe — and writes the Pod's status (phase, podIP,
// conditions, container states). Each Pod gets its own loopback address
// (127.0.N.M), so engines of several Pods listen on the same port, as in a
// cluster. Images are not pulled: a command "loadstar" runs the binary
// under test, and --command maps another image's command (llama.cpp's
// /app/llama-server) onto a program of this machine. hostPath volumes live under --host-root (the
// node's disk), and a container sees a mount by its paths being rewritten onto the hostPath (no
// mount namespaces). A Pod being deleted gets SIGTERM, then SIGKILL after its grace period, and is
// then removed (grace 0), as a kubelet confirms a deletion.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "common/digest.h"

#include "common/process.h"
#include "http/client.h"
#include "kube/client.h"
#include "kube/informer.h"
#include "kube/leader.h"
#include "kube/scope.h"

namespace fs = std::filesystem;
using loadstar::kube::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string kubeconfig, node, node_ip, loadstar_bin, host_root, namespace_name;
  uint32_t gpus = 0;
  std::string gpu_product = "A100-80GB";
  std::string gpu_memory_mib = "81920";
  std::vector<std::string> labels;
  std::string pod_net = "127.0.9";  // pods get 127.0.9.2, .3, ...
  // An image's command run as a program of this machine ("/app/llama-server=/path/to/it"):
  // what the image would have put at that path.
  std::vector<std::string> commands;
};

struct Container {
  std::string name;
  json spec;
  std::optional<loadstar::Subprocess> process;
  uint32_t restarts = 0;
  std::optional<int> last_exit;
  Clock::time_point next_start;
  bool ready = false;
  Clock::time_point next_probe;
};

struct Pod {
  std::string name, namespace_name, ip;
  json object;
  std::vector<Container> init, main;
  size_t init_done = 0;
  bool deleting = false;
  Clock::time_point kill_at;
  std::string last_status;
};

std::string now_rfc3339() {
  return loadstar::kube::micro_time(std::chrono::system_clock::now()).substr(0, 19) + "Z";
}

class Kubelet {
 public:
  Kubelet(const Args& args, const loadstar::kube::Client& client,
          const loadstar::kube::NamespaceScope& scope)
      : args_(args), client_(client), pods_(client, scope, "v1", "pods") {}

  loadstar::Status register_node() {
    json labels = {{"kubernetes.io/hostname", args_.node}};
    for (const auto& l : args_.labels)
      if (auto eq = l.find('='); eq != std::string::npos)
        labels[l.substr(0, eq)] = l.substr(eq + 1);
    if (args_.gpus > 0) {
      labels["nvidia.com/gpu.product"] = args_.gpu_product;
      labels["nvidia.com/gpu.memory"] = args_.gpu_memory_mib;
    }
    json node = {{"apiVersion", "v1"},
                 {"kind", "Node"},
                 {"metadata", {{"name", args_.node}, {"labels", labels}}}};
    auto created = client_.create("/api/v1/nodes", node);
    if (!created.ok() && created.error().code != loadstar::ErrorCode::kConflict)
      return std::move(created).error();
    json resources = {{"cpu", "8"}, {"memory", "32Gi"}, {"pods", "110"}};
    if (args_.gpus > 0) resources["nvidia.com/gpu"] = std::to_string(args_.gpus);
    json status = {{"capacity", resources},
                   {"allocatable", resources},
                   {"addresses", {{{"type", "InternalIP"}, {"address", args_.node_ip}}}},
                   {"conditions",
                    {{{"type", "Ready"},
                      {"status", "True"},
                      {"reason", "KubeletReady"},
                      {"message", "process kubelet"},
                      {"lastHeartbeatTime", now_rfc3339()},
                      {"lastTransitionTime", now_rfc3339()}}}}};
    auto patched =
        client_.merge_patch("/api/v1/nodes/" + args_.node + "/status", {{"status", status}});
    if (!patched.ok()) return std::move(patched).error();
    // The API server's admission taints a new Node not-ready; the node
    // lifecycle controller (not run by the test server) lifts it once the
    // node is Ready, so this does.
    auto current = client_.get("/api/v1/nodes/" + args_.node);
    if (!current.ok()) return std::move(current).error();
    json taints = json::array();
    for (const json& t : current->value("spec", json::object()).value("taints", json::array()))
      if (t.value("key", "") != "node.kubernetes.io/not-ready") taints.push_back(t);
    auto untainted =
        client_.merge_patch("/api/v1/nodes/" + args_.node, {{"spec", {{"taints", taints}}}});
    if (!untainted.ok()) return std::move(untainted).error();
    return loadstar::ok_status();
  }

  void run(const std::atomic<bool>& stop) {
    pods_.start(nullptr);
    pods_.wait_synced(30);
    while (!stop.load()) {
      sync();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (auto& [name, pod] : pods_running_)
      for (auto* list : {&pod.init, &pod.main})
        for (auto& c : *list)
          if (c.process) c.process->stop(std::chrono::milliseconds(2000));
  }

 private:
  static std::string pod_path(const Pod& pod) {
    return loadstar::kube::collection_path("v1", pod.namespace_name, "pods") + "/" + pod.name;
  }

  // $(VAR) from the container's env (values and the downward API).
  std::map<std::string, std::string> environment(const Pod& pod, const json& container) const {
    std::map<std::string, std::string> env;
    for (const auto& e : container.value("env", json::array())) {
      const std::string name = e.value("name", "");
      if (e.contains("value")) {
        env[name] = e["value"].get<std::string>();
      } else if (e.contains("valueFrom") && e["valueFrom"].contains("fieldRef")) {
        const std::string field = e["valueFrom"]["fieldRef"].value("fieldPath", "");
        if (field == "status.podIP") env[name] = pod.ip;
        if (field == "status.hostIP") env[name] = args_.node_ip;
        if (field == "metadata.name") env[name] = pod.name;
        if (field == "metadata.namespace") env[name] = pod.namespace_name;
        if (field == "spec.nodeName") env[name] = args_.node;
      } else if (e.contains("valueFrom") && e["valueFrom"].contains("secretKeyRef")) {
        // Read from the API, as a kubelet does (it would hold the container
        // back while the Secret is missing; here it starts without it).
        const json& ref = e["valueFrom"]["secretKeyRef"];
        auto secret =
            client_.get(loadstar::kube::collection_path("v1", pod.namespace_name, "secrets") + "/" +
                        ref.value("name", ""));
        const std::string key = ref.value("key", "");
        std::optional<std::string> value;
        if (secret.ok() && (*secret)["data"].is_object() && (*secret)["data"].contains(key))
          value = loadstar::base64_decode((*secret)["data"][key].get<std::string>());
        if (value)
          env[name] = *value;
        else
          spdlog::warn("pod {}: secret {} key {} not readable", pod.name, ref.value("name", ""),
                       key);
      }
    }
    return env;
  }

  std::string expand(std::string text, const std::map<std::string, std::string>& env) const {
    for (const auto& [name, value] : env) {
      const std::string ref = "$(" + name + ")";
      for (size_t at; (at = text.find(ref)) != std::string::npos;)
        text.replace(at, ref.size(), value);
    }
    return text;
  }

  std::optional<loadstar::Subprocess> start(Pod& pod, Container& c) {
    const json& spec = c.spec;
    auto env = environment(pod, spec);
    std::vector<std::string> argv;
    for (const auto& part :
         {spec.value("command", json::array()), spec.value("args", json::array())})
      for (const auto& a : part) argv.push_back(expand(a.get<std::string>(), env));
    if (argv.empty()) return std::nullopt;
    if (argv[0] == "loadstar") argv[0] = args_.loadstar_bin;
    // An image's program by name (sh, python): this machine's, from PATH.
    if (argv[0].find('/') == std::string::npos)
      for (const char* dir : {"/usr/local/bin", "/usr/bin", "/bin"})
        if (fs::exists(fs::path(dir) / argv[0])) {
          argv[0] = (fs::path(dir) / argv[0]).string();
          break;
        }
    for (const auto& c : args_.commands)
      if (c.starts_with(argv[0] + "=")) argv[0] = c.substr(argv[0].size() + 1);
    // Mounts: paths under a mountPath are rewritten onto the hostPath (its
    // subPath made, as a kubelet makes it), in the arguments — also after a
    // NAME= prefix (vLLM's --lora-modules NAME=PATH) — and in env values.
    const json volumes = pod.object["spec"].value("volumes", json::array());
    for (const auto& m : spec.value("volumeMounts", json::array())) {
      const std::string mount = m.value("mountPath", "");
      for (const auto& v : volumes) {
        if (v.value("name", "") != m.value("name", "") || !v.contains("hostPath")) continue;
        std::string host = args_.host_root + v["hostPath"].value("path", "");
        if (const std::string sub = m.value("subPath", ""); !sub.empty()) host += "/" + sub;
        std::error_code ec;
        fs::create_directories(host, ec);
        for (auto& [k, value] : env)
          if (value.compare(0, mount.size(), mount) == 0 &&
              (value.size() == mount.size() || value[mount.size()] == '/'))
            value = host + value.substr(mount.size());
        for (auto& a : argv) {
          const size_t eq = a.find('=');
          const size_t at =
              eq != std::string::npos && a.compare(eq + 1, mount.size(), mount) == 0 ? eq + 1 : 0;
          if (a.compare(at, mount.size(), mount) == 0 &&
              (a.size() == at + mount.size() || a[at + mount.size()] == '/'))
            a = a.substr(0, at) + host + a.substr(at + mount.size());
        }
      }
    }
    loadstar::ProcessOptions p;
    p.argv = argv;
    for (const auto& [k, v] : env) p.env.push_back(k + "=" + v);
    p.output_path =
        fmt::format("{}/logs/{}_{}_{}.log", args_.host_root, pod.namespace_name, pod.name, c.name);
    std::error_code ec;
    fs::create_directories(args_.host_root + "/logs", ec);
    auto process = loadstar::Subprocess::start(p);
    if (!process.ok()) {
      spdlog::warn("pod {}: container {}: {}", pod.name, c.name, process.error().message);
      return std::nullopt;
    }
    spdlog::info("pod {}: container {} started (pid {})", pod.name, c.name, process->pid());
    return std::move(process).value();
  }

  // Starts, restarts and probes the containers; false when nothing changed.
  void step(Pod& pod) {
    const auto now = Clock::now();
    auto tend = [&](Container& c) {
      if (c.process && !c.process->running()) {
        c.last_exit = c.process->wait_for(std::chrono::milliseconds(0)).value_or(-1);
        c.process.reset();
        c.ready = false;
        c.next_start = now + std::chrono::milliseconds(500 << std::min(c.restarts, 5u));
        return true;  // exited
      }
      return false;
    };
    if (pod.init_done < pod.init.size()) {
      Container& c = pod.init[pod.init_done];
      if (tend(c) && c.last_exit == 0) {
        ++pod.init_done;
        return;
      }
      if (!c.process && now >= c.next_start) {
        if (c.last_exit) ++c.restarts;
        c.process = start(pod, c);
      }
      return;
    }
    for (Container& c : pod.main) {
      tend(c);
      if (never_restarts(pod) && c.last_exit) continue;  // restartPolicy Never: ended
      if (!c.process && now >= c.next_start) {
        if (c.last_exit) ++c.restarts;
        c.process = start(pod, c);
      }
      if (c.process && now >= c.next_probe) {
        c.next_probe = now + std::chrono::milliseconds(200);
        const json probe = c.spec.value("readinessProbe", json::object());
        if (!probe.contains("httpGet")) {
          c.ready = true;
        } else {
          loadstar::http::ClientRequest req;
          req.host = pod.ip;
          req.port = static_cast<uint16_t>(probe["httpGet"].value("port", 80));
          req.target = probe["httpGet"].value("path", "/");
          req.timeout_s = 0.5;
          auto r = loadstar::http::fetch(req);
          c.ready = r.ok() && r->status >= 200 && r->status < 400;
        }
      }
    }
  }

  static bool never_restarts(const Pod& pod) {
    return pod.object["spec"].value("restartPolicy", "Always") == "Never";
  }

  // With terminationMessagePolicy FallbackToLogsOnError, a failed
  // container's message is the tail of its log (at most 2 KiB), as a
  // kubelet's.
  std::string log_tail(const Pod& pod, const Container& c) const {
    if (c.spec.value("terminationMessagePolicy", "") != "FallbackToLogsOnError") return "";
    std::ifstream in(
        fmt::format("{}/logs/{}_{}_{}.log", args_.host_root, pod.namespace_name, pod.name, c.name));
    std::string text((std::istreambuf_iterator<char>(in)), {});
    if (text.size() > 2048) text = text.substr(text.size() - 2048);
    return text;
  }

  json container_status(const Pod& pod, const Container& c, bool is_init, bool done) const {
    json state;
    if (c.process)
      state = {{"running", {{"startedAt", now_rfc3339()}}}};
    else if (is_init && done)
      state = {{"terminated", {{"exitCode", 0}, {"reason", "Completed"}}}};
    else if (!is_init && c.last_exit && never_restarts(pod)) {
      state = {
          {"terminated",
           {{"exitCode", *c.last_exit}, {"reason", *c.last_exit == 0 ? "Completed" : "Error"}}}};
      if (*c.last_exit != 0) state["terminated"]["message"] = log_tail(pod, c);
    } else if (c.last_exit)
      state = {{"waiting",
                {{"reason", "CrashLoopBackOff"},
                 {"message", fmt::format("exited with code {}", *c.last_exit)}}}};
    else
      state = {{"waiting", {{"reason", "PodInitializing"}}}};
    json out = {{"name", c.name},
                {"state", state},
                {"ready", c.ready},
                {"restartCount", c.restarts},
                {"image", c.spec.value("image", "")},
                {"imageID", ""},
                {"started", c.process.has_value()}};
    // As a kubelet does: the last run's end, and with
    // terminationMessagePolicy FallbackToLogsOnError a failed one's message
    // is the tail of its log (at most 80 lines, 2 KiB).
    if (c.last_exit && *c.last_exit != 0 && !never_restarts(pod)) {
      json terminated = {{"exitCode", *c.last_exit}, {"reason", "Error"}};
      if (std::string tail = log_tail(pod, c); !tail.empty()) terminated["message"] = tail;
      out["lastState"] = {{"terminated", terminated}};
    }
    return out;
  }

  void write_status(Pod& pod) {
    const bool initialized = pod.init_done == pod.init.size();
    bool ready = initialized && !pod.main.empty();
    bool running = initialized;
    for (const auto& c : pod.main) {
      ready &= c.ready;
      running &= c.process.has_value();
    }
    json init_statuses = json::array(), statuses = json::array();
    for (size_t i = 0; i < pod.init.size(); ++i)
      init_statuses.push_back(container_status(pod, pod.init[i], true, i < pod.init_done));
    for (const auto& c : pod.main) statuses.push_back(container_status(pod, c, false, false));
    auto cond = [](const char* type, bool value) {
      return json{{"type", type}, {"status", value ? "True" : "False"}};
    };
    // restartPolicy Never: every container ended ends the Pod.
    std::string phase = running ? "Running" : "Pending";
    if (initialized && never_restarts(pod) && !pod.main.empty()) {
      bool ended = true, failed = false;
      for (const auto& c : pod.main) {
        ended &= !c.process && c.last_exit.has_value();
        failed |= c.last_exit.value_or(0) != 0;
      }
      if (ended) phase = failed ? "Failed" : "Succeeded";
    }
    json status = {{"phase", phase},
                   {"hostIP", args_.node_ip},
                   {"podIP", pod.ip},
                   {"podIPs", {{{"ip", pod.ip}}}},
                   {"conditions",
                    {cond("PodScheduled", true), cond("Initialized", initialized),
                     cond("ContainersReady", ready), cond("Ready", ready)}},
                   {"initContainerStatuses", init_statuses},
                   {"containerStatuses", statuses}};
    // startedAt changes each time; compare without it.
    std::string key = status.dump();
    for (size_t at; (at = key.find("startedAt")) != std::string::npos;) key.replace(at, 9, "x");
    if (key == pod.last_status) return;
    auto r = client_.merge_patch(pod_path(pod) + "/status", {{"status", status}});
    if (r.ok()) pod.last_status = key;
  }

  void sync() {
    std::set<std::string> seen;
    for (const json& object : pods_.items()) {
      const json meta = object.value("metadata", json::object());
      if (object.value("spec", json::object()).value("nodeName", "") != args_.node) continue;
      const std::string name = loadstar::kube::object_key(object);  // namespace/name
      seen.insert(name);
      auto it = pods_running_.find(name);
      if (it == pods_running_.end()) {
        Pod pod;
        pod.name = meta.value("name", "");
        pod.namespace_name = meta.value("namespace", "");
        if (meta.contains("deletionTimestamp")) {
          (void)client_.remove(pod_path(pod), 0);
          continue;
        }
        pod.ip = fmt::format("{}.{}", args_.pod_net, next_ip_++);
        pod.object = object;
        for (const auto& c : object["spec"].value("initContainers", json::array()))
          pod.init.push_back({c.value("name", ""), c});
        for (const auto& c : object["spec"].value("containers", json::array()))
          pod.main.push_back({c.value("name", ""), c});
        spdlog::info("pod {}: bound here; ip {}", name, pod.ip);
        it = pods_running_.emplace(name, std::move(pod)).first;
      }
      Pod& pod = it->second;
      if (meta.contains("deletionTimestamp") && !pod.deleting) {
        pod.deleting = true;
        const int64_t grace = meta.value("deletionGracePeriodSeconds", int64_t{30});
        pod.kill_at = Clock::now() + std::chrono::seconds(grace);
        for (auto* list : {&pod.init, &pod.main})
          for (auto& c : *list)
            if (c.process) c.process->signal(SIGTERM);
        spdlog::info("pod {}: deleting (grace {}s)", name, grace);
      }
      if (pod.deleting) {
        bool alive = false;
        for (auto* list : {&pod.init, &pod.main})
          for (auto& c : *list) {
            if (c.process && Clock::now() >= pod.kill_at) c.process->signal(SIGKILL);
            if (c.process && c.process->running()) alive = true;
          }
        if (!alive) {
          (void)client_.remove(pod_path(pod), 0);  // confirm the deletion
          pods_running_.erase(it);
        }
        continue;
      }
      step(pod);
      write_status(pod);
    }
    // Pods deleted at once (grace 0): their processes go now.
    for (auto it = pods_running_.begin(); it != pods_running_.end();) {
      if (seen.count(it->first)) {
        ++it;
        continue;
      }
      for (auto* list : {&it->second.init, &it->second.main})
        for (auto& c : *list)
          if (c.process) c.process->stop(std::chrono::milliseconds(0));
      spdlog::info("pod {}: gone", it->first);
      it = pods_running_.erase(it);
    }
  }

  const Args& args_;
  const loadstar::kube::Client& client_;
  loadstar::kube::ScopedInformer pods_;
  std::map<std::string, Pod> pods_running_;
  int next_ip_ = 2;
};

std::atomic<bool> g_stop{false};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"process kubelet: runs the Pods bound to one node as local processes (tests)"};
  Args args;
  app.add_option("--kubeconfig", args.kubeconfig)->required();
  app.add_option("--node", args.node)->required();
  app.add_option("--node-ip", args.node_ip)->required();
  app.add_option("--loadstar", args.loadstar_bin)->required();
  app.add_option("--host-root", args.host_root)->required();
  app.add_option("-n,--namespace", args.namespace_name,
                 "NS[,NS...]: the namespaces whose Pods run here")
      ->required();
  app.add_option("--gpus", args.gpus);
  app.add_option("--gpu-product", args.gpu_product);
  app.add_option("--label", args.labels, "key=value on the Node (repeat)");
  app.add_option("--pod-net", args.pod_net, "First three octets of pod addresses");
  app.add_option("--command", args.commands,
                 "IMAGE-PATH=LOCAL-PATH: run an image's command from this machine (repeat)");
  CLI11_PARSE(app, argc, argv);
  auto config = loadstar::kube::load_config(args.kubeconfig);
  if (!config.ok()) {
    fmt::print(stderr, "{}\n", config.error().message);
    return 2;
  }
  const size_t comma = args.namespace_name.find(',');
  auto scope = loadstar::kube::NamespaceScope::parse(
      args.namespace_name.substr(0, comma),
      comma == std::string::npos ? "" : args.namespace_name.substr(comma + 1), false);
  if (!scope.ok()) {
    fmt::print(stderr, "{}\n", scope.error().message);
    return 2;
  }
  loadstar::kube::Client client(*config);
  Kubelet kubelet(args, client, *scope);
  if (auto s = kubelet.register_node(); !s.ok()) {
    fmt::print(stderr, "registering node {}: {}\n", args.node, s.error().message);
    return 1;
  }
  signal(SIGTERM, [](int) { g_stop = true; });
  signal(SIGINT, [](int) { g_stop = true; });
  fmt::print("node {} ready at {}\n", args.node, args.node_ip);
  std::fflush(stdout);
  kubelet.run(g_stop);
  return 0;
}
