// Kubernetes mode against a real API server (../shared/k8s/apiserver: etcd +
// kube-apiserver v1.20 from Debian's source). It has no kubelet, so each
// test node is a process_kubelet that runs its bound Pods as local
// processes, next to a real `loadstar agent` on the node's address. Every
// test has its own namespace and nodes (labelled, selected with
// --node-selector), so tests do not see each other's.
//
// Without the server the tests are skipped, unless LOADSTAR_REQUIRE_K8S=1
// (scripts/test.sh sets it), which makes a missing server a failure.
//
// The fixture the Kubernetes tests share (kubernetes_test.cpp,
// kubernetes_faults_test.cpp): the API server, a namespace per test, nodes,
// controllers and gateways as processes.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <set>
#include <thread>

#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/digest.h"
#include "kube/client.h"
#include "kube/informer.h"
#include "support.h"

namespace loadstar::testing {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

inline std::string g_kubeconfig;
inline std::string g_skip_reason;
inline bool g_started_server = false;
inline fs::path g_script;

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::pair<int, std::string> kubectl(const std::string& args) {
  return run_shell("KUBECONFIG=" + g_kubeconfig + " kubectl " + args + " 2>&1");
}

class KubernetesTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    const char* env = std::getenv("LOADSTAR_K8S_APISERVER");
    g_script = env && *env ? fs::path(env)
                           : fs::path(LOADSTAR_SOURCE_DIR) / ".." / "shared" / "k8s" / "apiserver";
    if (!fs::exists(g_script)) {
      g_skip_reason = "no test API server script at " + g_script.string();
      return;
    }
    auto [env_status, env_out] = run_shell(g_script.string() + " env");
    std::smatch m;
    const std::regex export_re(R"(export KUBECONFIG=(\S+))");
    if (env_status != 0 || !std::regex_search(env_out, m, export_re)) {
      g_skip_reason = "apiserver env: " + env_out;
      return;
    }
    g_kubeconfig = m[1];
    if (kubectl("get --raw /readyz").first != 0) {
      auto [status, out] = run_shell(g_script.string() + " start 2>&1");
      if (status != 0) {
        g_skip_reason =
            "cannot start the test API server (run `" + g_script.string() + " setup` once): " + out;
        return;
      }
      g_started_server = true;
    }
    auto [crd_status, crd_out] =
        kubectl(std::string("apply -f ") + LOADSTAR_SOURCE_DIR + "/deploy/crds/");
    if (crd_status != 0) {
      g_skip_reason = "applying deploy/crds: " + crd_out;
      return;
    }
    kubectl(
        "wait --for condition=established --timeout=60s crd -l app.kubernetes.io/part-of=loadstar");
  }

  static void TearDownTestSuite() {
    if (g_started_server) run_shell(g_script.string() + " stop");
  }

  void SetUp() override {
    if (!g_skip_reason.empty()) {
      if (const char* req = std::getenv("LOADSTAR_REQUIRE_K8S"); req && std::string(req) == "1")
        FAIL() << g_skip_reason;
      GTEST_SKIP() << g_skip_reason;
    }
    static int counter = 0;
    std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::string lower;
    for (char c : test.substr(0, 20))
      lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    ns_ = fmt::format("ls-{}-{}-{}", lower, getpid() % 100000, counter);
    net_ = 20 + (getpid() + counter * 7) % 200;
    ++counter;
    create_namespace(ns_);
    root_ = scratch_dir() / ns_;
    fs::create_directories(root_);
  }

  void TearDown() override {
    processes_.clear();  // SIGKILL and reap every process of the test
    if (ns_.empty() || !g_skip_reason.empty()) return;
    kubectl("delete nodes -l loadstar.test/ns=" + ns_ + " --wait=false");
    kubectl("delete namespace " + ns_ + " --wait=false");
    for (const auto& ns : other_namespaces_) kubectl("delete namespace " + ns + " --wait=false");
  }

 protected:
  struct Proc {
    Subprocess process;
    fs::path log;
  };

  static void create_namespace(const std::string& ns) {
    ASSERT_EQ(kubectl("create namespace " + ns).first, 0);
    // The test server runs no controller manager, which would create each
    // namespace's default ServiceAccount; Pods are refused without it. (With
    // one, the create may lose a race to it; either way the account exists.)
    kubectl("-n " + ns + " create serviceaccount default");
    ASSERT_EQ(kubectl("-n " + ns + " get serviceaccount default").first, 0);
  }

  // Another namespace for this test ("<ns_>-<suffix>"), deleted with it;
  // nodes added afterwards run its Pods too.
  std::string add_namespace(const std::string& suffix) {
    const std::string ns = ns_ + "-" + suffix;
    create_namespace(ns);
    other_namespaces_.push_back(ns);
    return ns;
  }

  Proc& spawn(const std::string& name, std::vector<std::string> argv) {
    ProcessOptions p;
    p.argv = std::move(argv);
    p.env = {"KUBECONFIG=" + g_kubeconfig};
    auto proc = std::make_unique<Proc>();
    proc->log = root_ / (name + ".log");
    p.output_path = proc->log.string();
    auto started = Subprocess::start(p);
    if (!started.ok()) throw std::runtime_error(started.error().message);
    proc->process = std::move(started).value();
    processes_[name] = std::move(proc);
    return *processes_[name];
  }

  // Waits until `re` matches the process's output; its first group.
  std::string wait_output(const std::string& name, const std::string& re, double timeout_s = 30) {
    const std::regex pattern(re);
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string text = read_text(processes_.at(name)->log);
      std::smatch m;
      if (std::regex_search(text, m, pattern)) return m.size() > 1 ? m[1].str() : m[0].str();
      if (!processes_.at(name)->process.running())
        throw std::runtime_error(name + " exited:\n" + text);
      std::this_thread::sleep_for(50ms);
    }
    throw std::runtime_error(name + ": no '" + re + "' within the time:\n" +
                             read_text(processes_.at(name)->log));
  }

  // A node: a process kubelet with `gpus` GPUs and an agent on its address.
  void add_node(int index, int gpus, std::vector<std::string> kubelet_extra = {}) {
    const std::string node = fmt::format("{}-n{}", ns_, index);
    const std::string ip = fmt::format("127.{}.{}.1", net_, index);
    const fs::path host = root_ / node;
    fs::create_directories(host / "var/lib/loadstar/agent");
    std::vector<std::string> kubelet = {
        PROCESS_KUBELET_BIN,
        "--kubeconfig",
        g_kubeconfig,
        "--node",
        node,
        "--node-ip",
        ip,
        "--pod-net",
        fmt::format("127.{}.{}", net_, index),
        "--loadstar",
        LOADSTAR_BIN,
        "--host-root",
        host.string(),
        "-n",
        fmt::format("{},{}", ns_, fmt::join(other_namespaces_, ",")),
        "--gpus",
        std::to_string(gpus),
        "--label",
        "loadstar.test/ns=" + ns_};
    kubelet.insert(kubelet.end(), kubelet_extra.begin(), kubelet_extra.end());
    spawn(node, kubelet);
    spawn(node + "-agent",
          {LOADSTAR_BIN, "agent", "--host", ip, "--port", "8070", "--cache-dir",
           (host / "var/lib/loadstar/agent").string(), "--token-file", token_file().string()});
    wait_output(node, "node .* ready");
    wait_output(node + "-agent", "agent serving on");
  }

  // The internal token, in a file for the processes started here: read
  // from the Secret loadstar-internal, made (as the controller would) when
  // a test starts nodes before any controller.
  fs::path token_file() {
    const fs::path file = root_ / "token";
    if (fs::exists(file)) return file;
    json secret = get_json("secret loadstar-internal");
    if (!secret.contains("data")) {
      kubectl("-n " + ns_ + " create secret generic loadstar-internal --from-literal=token=" +
              fmt::format("test-token-{}-{}", ns_, getpid()));
      secret = get_json("secret loadstar-internal");
    }
    auto token = base64_decode(secret["data"].value("token", ""));
    EXPECT_TRUE(token.has_value());
    std::ofstream(file) << token.value_or("");
    return file;
  }

  // GET http://HOST:PORT/TARGET with the internal token (or without).
  http::ClientResponse internal_get(const std::string& host, uint16_t port,
                                    const std::string& target, bool with_token = true) {
    std::vector<http::Header> headers;
    if (with_token) headers.push_back({"Authorization", "Bearer " + read_text(token_file())});
    auto r = http::fetch(
        {.host = host, .port = port, .target = target, .headers = headers, .timeout_s = 5});
    EXPECT_TRUE(r.ok()) << target;
    return r.ok() ? *r : http::ClientResponse{};
  }

  // `loadstar controller`; returns nothing, its admin port is in its log.
  void start_controller(const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {LOADSTAR_BIN,
                                     "controller",
                                     "-n",
                                     ns_,
                                     "--host",
                                     "127.0.0.1",
                                     "--admin-port",
                                     "0",
                                     "--identity",
                                     name,
                                     "--node-selector",
                                     "loadstar.test/ns=" + ns_,
                                     "--lease-duration",
                                     "3"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    spawn(name, argv);
  }

  // A gateway for `ns` (default: the test's), with that namespace's token.
  uint16_t start_gateway(const std::string& name, std::string ns = "", fs::path token = {}) {
    if (ns.empty()) ns = ns_;
    if (token.empty()) token = token_file();
    spawn(name, {LOADSTAR_BIN, "gateway", "-n", ns, "--host", "127.0.0.1", "--port", "0",
                 "--token-file", token.string()});
    return static_cast<uint16_t>(std::stoi(
        wait_output(name, R"(gateway serving namespace \S+ on http://127\.0\.0\.1:(\d+))")));
  }

  void apply(const std::string& yaml, const std::string& ns = "") {
    const fs::path file = root_ / fmt::format("apply-{}.yaml", applied_++);
    std::ofstream(file) << yaml;
    auto [status, out] = kubectl("-n " + (ns.empty() ? ns_ : ns) + " apply -f " + file.string());
    ASSERT_EQ(status, 0) << out;
  }

  json get_json(const std::string& what, const std::string& ns = "") {
    auto [status, out] = kubectl("-n " + (ns.empty() ? ns_ : ns) + " get " + what + " -o json");
    json parsed = json::parse(out, nullptr, false);
    return status == 0 && parsed.is_object() ? parsed : json::object();
  }

  std::vector<json> pods(const std::string& ns = "") {
    json list = get_json("pods -l app.kubernetes.io/managed-by=loadstar", ns);
    std::vector<json> out;
    if (list.is_object())
      for (const auto& p : list["items"]) out.push_back(p);
    return out;
  }

  int ready_pods() {
    int n = 0;
    for (const auto& p : pods())
      for (const auto& c : p["status"].value("conditions", json::array()))
        n += c.value("type", "") == "Ready" && c.value("status", "") == "True" &&
             !p["metadata"].contains("deletionTimestamp");
    return n;
  }

  template <typename Pred>
  bool eventually(Pred pred, double timeout_s = 60) {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    while (std::chrono::steady_clock::now() < deadline) {
      if (pred()) return true;
      std::this_thread::sleep_for(200ms);
    }
    return false;
  }

  // A gateway as a Pod on node `node` (the controller finds gateways by
  // their labels and polls their load), listening on the Pod's address port
  // 8080; returns that address once the Pod is Ready.
  std::string gateway_pod(int node, std::string ns = "") {
    if (ns.empty()) ns = ns_;
    apply(fmt::format(R"(apiVersion: v1
kind: Pod
metadata:
  name: gateway-0
  labels: {{app.kubernetes.io/name: loadstar-gateway}}
spec:
  nodeName: {}-n{}
  automountServiceAccountToken: false
  containers:
  - name: gateway
    image: loadstar:test
    command: [loadstar]
    args: [gateway, -n, {}, --kubeconfig, {}, --host, $(POD_IP), --port, "8080"]
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    - name: LOADSTAR_TOKEN
      valueFrom: {{secretKeyRef: {{name: loadstar-internal, key: token}}}}
    ports:
    - {{name: http, containerPort: 8080}}
    readinessProbe:
      httpGet: {{path: /health, port: 8080}}
)",
                      ns_, node, ns, g_kubeconfig),
          ns);
    std::string gateway_ip;
    EXPECT_TRUE(eventually(
        [&] {
          const json pod = get_json("pod gateway-0", ns);
          const json status = pod.value("status", json::object());
          bool ready = false;
          const json conditions = status.value("conditions", json::array());
          for (const auto& c : conditions)
            ready |= c.value("type", "") == "Ready" && c.value("status", "") == "True";
          gateway_ip = status.value("podIP", "");
          return ready && !gateway_ip.empty();
        },
        30));

    return gateway_ip;
  }

  std::string model_yaml() {
    const fs::path model = synth_model("k8s-tiny", "2MiB");
    return fmt::format(
        "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {{name: tiny}}\n"
        "spec: {{source: \"file://{}\"}}\n",
        model.string());
  }

  static std::string service_yaml(int replicas) {
    return fmt::format(
        "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: chat}}\n"
        "spec:\n  model: tiny\n  replicas: {}\n  resources: {{gpu: {{count: 1}}}}\n",
        replicas);
  }

  // A short chat completion for the service "chat" through a gateway.
  static Result<http::ClientResponse> chat_request(const std::string& host, uint16_t port,
                                                   double timeout_s) {
    return http::fetch({.host = host,
                        .port = port,
                        .method = "POST",
                        .target = "/v1/chat/completions",
                        .body = R"({"model":"chat","messages":[{"role":"user","content":"hi"}],)"
                                R"("max_tokens":4})",
                        .headers = {{"Content-Type", "application/json"}},
                        .timeout_s = timeout_s});
  }

  static int chat(uint16_t port) {
    auto r = chat_request("127.0.0.1", port, 5);
    return r.ok() ? r->status : 0;
  }

  std::string ns_;
  std::vector<std::string> other_namespaces_;
  int net_ = 20;
  fs::path root_;
  int applied_ = 0;
  std::map<std::string, std::unique_ptr<Proc>> processes_;
};

}  // namespace loadstar::testing
