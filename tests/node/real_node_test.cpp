// Kubernetes mode on a real node: Loadstar's images built from Debian's
// archive (scripts/images.sh), a one-node cluster with a real kubelet,
// containerd and runc, kube-scheduler, kube-proxy and a fake-GPU device
// plugin (scripts/node.sh), and the manifests applied as a user applies them
// (`kubectl apply -k deploy/`, through an overlay that only lets the agent
// fetch from this test's HTTP origin). The tests run in order on one cluster
// brought up once; they need root and change the host, which `node.sh down`
// restores. Without root they skip (or fail under LOADSTAR_REQUIRE_NODE=1).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/process.h"
#include "integration/support.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;
using loadstar::ProcessOptions;
using loadstar::Subprocess;
using loadstar::testing::free_port;
using loadstar::testing::run_loadstar;
using loadstar::testing::run_shell;
using loadstar::testing::scratch_dir;

namespace {

const std::string kSource = LOADSTAR_SOURCE_DIR;
const std::string kNs = "loadstar-system";

std::string g_skip;         // why the suite cannot run
bool g_up = false;          // node.sh up ran (down must too)
std::string g_kubeconfig;   // the cluster's admin kubeconfig
std::string g_node_ip;      // the node's address
std::string g_containerd;   // the node's containerd socket
std::string g_llama_image;  // the llama.cpp image's reference
uint16_t g_origin_port = 0;
uint64_t g_model_size = 0;
std::unique_ptr<Subprocess> g_origin;  // the models' HTTP origin

std::string node_script() {
  return fmt::format("LOADSTAR_K8S_APISERVER={} {}/scripts/node.sh",
                     std::getenv("LOADSTAR_K8S_APISERVER"), kSource);
}

std::pair<int, std::string> kubectl(const std::string& args) {
  return run_shell(fmt::format("kubectl --kubeconfig {} {} 2>&1", g_kubeconfig, args));
}

json kubectl_json(const std::string& args) {
  auto [status, out] = kubectl(args + " -o json");
  if (status != 0) return json();
  return json::parse(out, nullptr, false);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

template <class Pred>
bool eventually(Pred pred, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(500ms);
  }
  return pred();
}

// The setup step's failure: the suite cannot run.
bool setup_failed(const std::string& what, const std::pair<int, std::string>& result) {
  if (result.first == 0) return false;
  g_skip = what + ": " + result.second;
  return true;
}

json pods(const std::string& selector) {
  json list = kubectl_json(fmt::format("-n {} get pods -l {}", kNs, selector));
  return list.is_object() ? list.value("items", json::array()) : json::array();
}

bool ready(const json& pod) {
  for (const auto& c : pod["status"].value("conditions", json::array()))
    if (c.value("type", "") == "Ready") return c.value("status", "") == "True";
  return false;
}

// The chat service through the gateway Service's cluster IP with the
// official openai client; the client's JSON report, or its error.
std::pair<int, std::string> openai_chat(const std::string& model) {
  const json svc = kubectl_json(fmt::format("-n {} get service loadstar-gateway", kNs));
  if (!svc.is_object()) return {1, "no gateway Service"};
  return run_shell(fmt::format("node {}/tests/js/openai_chat.mjs http://{}/v1 {} 6 2>&1", kSource,
                               svc["spec"]["clusterIP"].get<std::string>(), model));
}

// The environment containerd gave a Pod's container (the device plugin's
// part of it included).
std::vector<std::string> container_env(const std::string& pod, const std::string& container) {
  const std::string ctr = "ctr --address " + g_containerd + " -n k8s.io containers";
  auto [status, ids] = run_shell(ctr + " ls -q");
  std::istringstream lines(ids);
  for (std::string id; std::getline(lines, id);) {
    const json info = json::parse(run_shell(ctr + " info " + id).second, nullptr, false);
    if (!info.is_object()) continue;
    const json labels = info.value("Labels", json::object());
    if (labels.value("io.kubernetes.pod.name", "") != pod ||
        labels.value("io.kubernetes.container.name", "") != container)
      continue;
    return info["Spec"]["process"]["env"].get<std::vector<std::string>>();
  }
  return {};
}

std::string describe_all() {
  return kubectl(fmt::format("-n {} get pods -o wide", kNs)).second +
         kubectl(fmt::format("-n {} describe pods", kNs)).second;
}

// Applies `yaml` (written under `name`.yaml) and waits until `service` has
// one Ready Pod, which it returns (null on a failed wait, with a failure).
json apply_and_wait_ready(const std::string& name, const std::string& yaml,
                          const std::string& service, double timeout_s) {
  const fs::path file = scratch_dir() / (name + ".yaml");
  std::ofstream(file) << yaml;
  auto [status, out] = kubectl("apply -f " + file.string());
  if (status != 0) {
    ADD_FAILURE() << out;
    return json();
  }
  json pod;
  if (!eventually(
          [&] {
            const json p = pods("loadstar.dev/service=" + service);
            if (p.size() != 1 || !ready(p[0])) return false;
            pod = p[0];
            return true;
          },
          timeout_s))
    ADD_FAILURE() << "no Ready Pod of " << service << "\n" << describe_all();
  return pod;
}

}  // namespace

class RealNode : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    if (::geteuid() != 0) {
      g_skip = "needs root (it runs a kubelet and containerd and changes the host)";
      return;
    }
    const char* apiserver = std::getenv("LOADSTAR_K8S_APISERVER");
    if (!apiserver || !fs::exists(apiserver)) {
      g_skip = "no test API server script (set LOADSTAR_K8S_APISERVER)";
      return;
    }
    auto images =
        run_shell(fmt::format("{}/scripts/images.sh build {} 2>&1", kSource, LOADSTAR_BIN));
    if (setup_failed("scripts/images.sh build", images)) return;
    auto llama_ref = run_shell(kSource + "/scripts/images.sh llama-ref");
    g_llama_image = trimmed(llama_ref.second);
    if (setup_failed("scripts/node.sh setup", run_shell(node_script() + " setup 2>&1"))) return;
    g_up = true;
    if (setup_failed("scripts/node.sh up", run_shell(node_script() + " up 2>&1"))) return;
    std::smatch m;
    const std::string archives = images.second;
    std::string to_import;
    const std::regex tar_re(R"((\S+\.tar)\n)");
    for (std::sregex_iterator it(archives.begin(), archives.end(), tar_re), end; it != end; ++it)
      to_import += " " + (*it)[1].str();
    if (setup_failed("scripts/node.sh import",
                     run_shell(node_script() + " import" + to_import + " 2>&1")))
      return;
    const std::string env = run_shell(node_script() + " env").second;
    if (std::regex_search(env, m, std::regex(R"(KUBECONFIG=(\S+))"))) g_kubeconfig = m[1];
    if (std::regex_search(env, m, std::regex(R"(LOADSTAR_NODE_IP=(\S+))"))) g_node_ip = m[1];
    if (std::regex_search(env, m, std::regex(R"(LOADSTAR_NODE_CONTAINERD=(\S+))")))
      g_containerd = m[1];
    if (g_kubeconfig.empty() || g_node_ip.empty()) {
      g_skip = "node.sh env: " + env;
      return;
    }
    start_origin();
    if (!g_skip.empty()) return;
    apply_manifests();
  }

  static void TearDownTestSuite() {
    // TERM, so that nginx's master ends its workers too.
    if (g_origin) g_origin->stop(std::chrono::milliseconds(2000));
    g_origin.reset();
    // LOADSTAR_KEEP_NODE=1 leaves the cluster up to look at (`scripts/node.sh down` after).
    const char* keep = std::getenv("LOADSTAR_KEEP_NODE");
    if (g_up && !(keep && std::string(keep) == "1")) {
      auto [status, out] = run_shell(node_script() + " down 2>&1");
      if (status != 0) ADD_FAILURE() << "node.sh down: " << out;
    }
  }

  void SetUp() override {
    if (g_skip.empty()) return;
    if (const char* req = std::getenv("LOADSTAR_REQUIRE_NODE"); req && std::string(req) == "1")
      FAIL() << g_skip;
    GTEST_SKIP() << g_skip;
  }

 private:
  // A GGUF model served over HTTP on the node's address, as a model mirror
  // inside a cluster would serve it.
  static void start_origin() {
    const fs::path dir = scratch_dir() / "origin";
    fs::create_directories(dir);
    std::string out;
    if (run_loadstar({"model", "synth", "--format", "gguf", "--size", "26MiB", "-o",
                      (dir / "model.gguf").string()},
                     &out) != 0) {
      g_skip = "loadstar model synth: " + out;
      return;
    }
    g_model_size = fs::file_size(dir / "model.gguf");
    // A safetensors model for engine-sim, as a directory the agent lists
    // through its index and config files.
    fs::copy(loadstar::testing::synth_model("node-tiny", "2MiB"), dir / "tiny",
             fs::copy_options::recursive);
    fs::create_directories(dir / "slow");
    fs::copy(loadstar::testing::synth_model("node-slow", "128MiB"), dir / "slow" / "m",
             fs::copy_options::recursive);
    // nginx, as an HTTP mirror serves models (ranges, so the agent fetches
    // chunks in parallel).
    g_origin_port = free_port(g_node_ip);
    const fs::path conf = scratch_dir() / "origin.conf";
    // `user root`: workers must be allowed into the scratch directory.
    std::ofstream(conf) << fmt::format(
        "daemon off;\nuser root;\nworker_processes 1;\npid {0}/origin.pid;\n"
        "error_log {0}/origin-error.log;\nevents {{ worker_connections 64; }}\n"
        "http {{\n  log_format sent $bytes_sent;\n  access_log off;\n"
        "  client_body_temp_path {0}/origin-tmp;\n"
        "  server {{\n    listen {1}:{2};\n    root {3};\n"
        // /slow/: a slow origin, each response's bytes logged.
        "    location /slow/ {{ limit_rate 4m; access_log {0}/origin-slow.log sent; }}\n"
        "  }}\n}}\n",
        scratch_dir().string(), g_node_ip, g_origin_port, dir.string());
    ProcessOptions p;
    p.argv = {"/usr/sbin/nginx", "-c", conf.string(), "-p", scratch_dir().string()};
    p.output_path = (scratch_dir() / "origin.out").string();
    auto started = Subprocess::start(p);
    if (!started.ok()) {
      g_skip = "nginx: " + started.error().message;
      return;
    }
    g_origin = std::make_unique<Subprocess>(std::move(*started));
    const std::string url = fmt::format("http://{}:{}/model.gguf", g_node_ip, g_origin_port);
    if (!eventually([&] { return run_shell("curl -sfI " + url).first == 0; }, 10))
      g_skip = "the model origin did not start: " + read_text(scratch_dir() / "origin-error.log");
  }
  // deploy/ as a kustomize base, overlaid only to let the agent fetch from
  // the test's origin (its default allows Hub, S3 and HTTPS sources).
  static void apply_manifests() {
    const fs::path overlay = scratch_dir() / "overlay";
    fs::create_directories(overlay);
    std::ofstream(overlay / "kustomization.yaml") << fmt::format(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [{}]\n"
        "patchesJson6902:\n"
        "- target: {{group: apps, version: v1, kind: DaemonSet, name: loadstar-agent}}\n"
        "  path: agent-origin.yaml\n",
        fs::relative(fs::path(kSource) / "deploy", overlay).string());
    std::ofstream(overlay / "agent-origin.yaml") << fmt::format(
        "- op: add\n  path: /spec/template/spec/containers/0/args/-\n"
        "  value: --source-allow=http://{}:{}/\n",
        g_node_ip, g_origin_port);
    if (setup_failed("kubectl apply -k", kubectl("apply -k " + overlay.string()))) return;
    for (const char* what : {"deployment/loadstar-controller", "deployment/loadstar-gateway",
                             "daemonset/loadstar-agent"})
      if (setup_failed(std::string("rollout of ") + what,
                       kubectl(fmt::format("-n {} rollout status {} --timeout=120s", kNs, what)))) {
        g_skip += describe_all();
        return;
      }
  }
};

TEST_F(RealNode, TheManifestsRunAsContainersFromTheImagesBuiltHere) {
  const json controllers = pods("app.kubernetes.io/name=loadstar-controller");
  const json gateways = pods("app.kubernetes.io/name=loadstar-gateway");
  const json agents = pods("app.kubernetes.io/name=loadstar-agent");
  ASSERT_EQ(controllers.size(), 2u) << describe_all();
  ASSERT_EQ(gateways.size(), 2u);
  ASSERT_EQ(agents.size(), 1u);
  for (const json* group : {&controllers, &gateways, &agents})
    for (const auto& pod : *group) {
      EXPECT_TRUE(ready(pod)) << pod["metadata"]["name"];
      const json& status = pod["status"]["containerStatuses"][0];
      EXPECT_EQ(status["image"], "docker.io/library/loadstar:0.1.0");
      EXPECT_EQ(status["restartCount"], 0) << pod["metadata"]["name"];
    }
  // One controller leads, through the Lease, from inside its Pod (in-cluster
  // config, its ServiceAccount's RBAC, the API through the kubernetes Service).
  const json lease = kubectl_json(fmt::format("-n {} get lease loadstar-controller", kNs));
  ASSERT_TRUE(lease.is_object());
  const std::string holder = lease["spec"].value("holderIdentity", "");
  std::set<std::string> names;
  for (const auto& pod : controllers) names.insert(pod["metadata"]["name"].get<std::string>());
  EXPECT_TRUE(names.count(holder)) << holder;
  // The first controller made the internal token; the gateways and the agent
  // started only once they could read it.
  EXPECT_EQ(kubectl(fmt::format("-n {} get secret loadstar-internal", kNs)).first, 0);
  // Their ports answer only with the token.
  const std::string gw_ip = gateways[0]["status"]["podIP"];
  auto [code, out] = run_shell(
      fmt::format("curl -s -o /dev/null -w '%{{http_code}}' http://{}:8080/metrics", gw_ip));
  EXPECT_EQ(out, "401");
  // The agent follows its peers' headless Service from inside its Pod: the
  // Endpoints hold its node's address (host network), which is itself.
  const json peers = kubectl_json(fmt::format("-n {} get endpoints loadstar-agent-peers", kNs));
  ASSERT_TRUE(peers.is_object());
  EXPECT_EQ(peers["subsets"][0]["addresses"][0].value("ip", ""), g_node_ip) << peers.dump();
  const std::string agent_log =
      kubectl(fmt::format("-n {} logs daemonset/loadstar-agent", kNs)).second;
  EXPECT_NE(agent_log.find("following Endpoints " + std::string(kNs) +
                           "/loadstar-agent-peers for peers (0 now)"),
            std::string::npos)
      << agent_log;
}

TEST_F(RealNode,
       ALlamaCppServiceIsStagedByTheNodesAgentAndAnswersTheOpenAiClientThroughTheService) {
  const std::string yaml = fmt::format(
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {{name: tiny-gguf, namespace: "
      "{0}}}\n"
      "spec: {{source: \"http://{1}:{2}/model.gguf\", format: gguf}}\n---\n"
      "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\n"
      "metadata: {{name: chat, namespace: {0}}}\n"
      "spec:\n  model: tiny-gguf\n  replicas: 1\n"
      "  engine: {{name: llama.cpp, image: \"{3}\", contextLength: 1024, maxSequences: 2, "
      "threads: 1}}\n",
      kNs, g_node_ip, g_origin_port, g_llama_image);
  const json pod = apply_and_wait_ready("chat", yaml, "chat", 180);
  ASSERT_TRUE(pod.is_object());
  // The init container staged the weights through the node's agent, which
  // fetched them from the origin into its hostPath cache.
  const json& stage = pod["status"]["initContainerStatuses"][0];
  EXPECT_EQ(stage["state"]["terminated"]["exitCode"], 0) << stage;
  const fs::path staged = "/var/lib/loadstar/agent/models/tiny-gguf/current/model.gguf";
  ASSERT_TRUE(fs::exists(staged));
  EXPECT_EQ(fs::file_size(staged), g_model_size);
  // The engine reads the version its revision names (the controller had
  // the node's agent resolve the source), not the `current` link.
  const std::string engine = pod["spec"]["containers"][0].dump();
  std::smatch version;
  ASSERT_TRUE(std::regex_search(
      engine, version, std::regex("/var/lib/loadstar/models/tiny-gguf/([0-9a-f]{16})/model.gguf")))
      << engine;
  EXPECT_EQ(
      fs::file_size("/var/lib/loadstar/agent/models/tiny-gguf/" + version[1].str() + "/model.gguf"),
      g_model_size);
  EXPECT_EQ(pod["status"]["containerStatuses"][0]["image"], "docker.io/" + g_llama_image);

  // The official openai client, through the gateway Service's cluster IP
  // (kube-proxy), as a user inside the cluster reaches it.
  const json svc = kubectl_json(fmt::format("-n {} get service loadstar-gateway", kNs));
  ASSERT_TRUE(svc.is_object());
  const std::string cluster_ip = svc["spec"]["clusterIP"];
  auto [code, reply] = run_shell(fmt::format(
      "node {}/tests/js/openai_chat.mjs http://{}/v1 chat 6 2>&1", kSource, cluster_ip));
  ASSERT_EQ(code, 0) << reply
                     << kubectl(fmt::format("-n {} logs deploy/loadstar-gateway", kNs)).second;
  const json r = json::parse(reply.substr(reply.find('{')), nullptr, false);
  ASSERT_TRUE(r.is_object()) << reply;
  EXPECT_EQ(r["reply"]["role"], "assistant");
  EXPECT_GT(r["reply"]["usage"]["prompt_tokens"].get<int>(), 3);
  EXPECT_GE(r["reply"]["usage"]["completion_tokens"].get<int>(), 1);
  EXPECT_LE(r["reply"]["usage"]["completion_tokens"].get<int>(), 6);
  EXPECT_GE(r["stream"]["usage"]["completion_tokens"].get<int>(), 1);
  EXPECT_LE(r["stream"]["chunks"].get<int>(), r["stream"]["usage"]["completion_tokens"].get<int>());
}

// A service asking for a whole GPU: the controller's Pod requests
// nvidia.com/gpu, the kubelet admits it only through the device plugin, which
// hands it one of the node's GPUs as NVIDIA's plugin does.
TEST_F(RealNode, AGpuReplicaIsAdmittedWithAGpuFromTheDevicePlugin) {
  const json node = kubectl_json("get node loadstar-node");
  ASSERT_TRUE(node.is_object());
  EXPECT_EQ(node["status"]["allocatable"].value("nvidia.com/gpu", ""), "2");
  const json pod = apply_and_wait_ready(
      "gpu",
      fmt::format("apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {{name: tiny, "
                  "namespace: {0}}}\n"
                  "spec: {{source: \"http://{1}:{2}/tiny/\"}}\n---\n"
                  "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\n"
                  "metadata: {{name: sim, namespace: {0}}}\n"
                  "spec:\n  model: tiny\n  replicas: 1\n  resources: {{gpu: {{count: 1}}}}\n",
                  kNs, g_node_ip, g_origin_port),
      "sim", 120);
  ASSERT_TRUE(pod.is_object());
  EXPECT_EQ(pod["spec"]["containers"][0]["resources"]["limits"].value("nvidia.com/gpu", ""), "1");
  std::string visible;
  for (const std::string& e : container_env(pod["metadata"]["name"], "engine"))
    if (e.starts_with("NVIDIA_VISIBLE_DEVICES=")) visible = e.substr(e.find('=') + 1);
  EXPECT_TRUE(std::regex_match(visible, std::regex("GPU-[0-9a-f-]{36}"))) << visible;
  // The scheduler's bookkeeping holds one whole device for it.
  const json devices = json::parse(
      pod["metadata"]["annotations"].value("loadstar.dev/devices", "[]"), nullptr, false);
  ASSERT_EQ(devices.size(), 1u) << devices;
  EXPECT_EQ(devices[0]["milli"], 1000);
  auto [code, reply] = openai_chat("sim");
  EXPECT_EQ(code, 0) << reply;

  // Two replicas on the two cards. Which card a Pod gets is the kubelet's
  // choice (the fake plugin, like NVIDIA's, states a preference of its
  // own: the highest IDs), so the bookkeeping follows what the node's
  // agent reads in the kubelet's device checkpoint: each replica's
  // devices annotation names the card (by its place among the node's
  // cards in ID order) whose UUID the plugin put in its container.
  ASSERT_EQ(kubectl(fmt::format("-n {} patch inferenceservice sim --type merge -p "
                                "'{{\"spec\":{{\"replicas\":2}}}}'",
                                kNs))
                .first,
            0);
  ASSERT_TRUE(eventually(
      [&] {
        const auto p = pods("loadstar.dev/service=sim");
        return p.size() == 2 && ready(p[0]) && ready(p[1]);
      },
      120))
      << describe_all();
  const json checkpoint = json::parse(
      read_text("/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint"), nullptr, false);
  ASSERT_TRUE(checkpoint.is_object());
  std::vector<std::string> cards =
      checkpoint["Data"]["RegisteredDevices"]["nvidia.com/gpu"].get<std::vector<std::string>>();
  std::sort(cards.begin(), cards.end());
  ASSERT_EQ(cards.size(), 2u);
  auto booked_on_the_given_card = [&] {
    std::set<int> given;
    for (const json& p : pods("loadstar.dev/service=sim")) {
      std::string uuid;
      for (const std::string& e : container_env(p["metadata"]["name"], "engine"))
        if (e.starts_with("NVIDIA_VISIBLE_DEVICES=")) uuid = e.substr(e.find('=') + 1);
      const auto at = std::find(cards.begin(), cards.end(), uuid);
      const json booked = json::parse(
          p["metadata"]["annotations"].value("loadstar.dev/devices", "[]"), nullptr, false);
      if (at == cards.end() || !booked.is_array() || booked.size() != 1 ||
          booked[0].value("device", -1) != at - cards.begin())
        return false;
      given.insert(static_cast<int>(at - cards.begin()));
    }
    return given == std::set<int>{0, 1};
  };
  EXPECT_TRUE(eventually(booked_on_the_given_card, 30)) << describe_all();
  // Back to one, as the tests after this one expect.
  ASSERT_EQ(kubectl(fmt::format("-n {} patch inferenceservice sim --type merge -p "
                                "'{{\"spec\":{{\"replicas\":1}}}}'",
                                kNs))
                .first,
            0);
  EXPECT_TRUE(eventually(
      [&] {
        size_t live = 0;
        for (const auto& p : pods("loadstar.dev/service=sim"))
          live += !p["metadata"].contains("deletionTimestamp");
        return live == 1;
      },
      60))
      << describe_all();
}

// Scale to zero and back on the real node: an idle llama.cpp service loses
// its Pod; a request through the Service is held by a gateway until the
// controller, reading the gateways' load, has started one again.
TEST_F(RealNode, TheLlamaCppServiceScalesToZeroAndBackForAHeldRequest) {
  auto [status, out] =
      kubectl(fmt::format("-n {} patch inferenceservice chat --type merge -p "
                          "'{{\"spec\":{{\"minReplicas\":0,\"idleTimeout\":\"3s\"}}}}'",
                          kNs));
  ASSERT_EQ(status, 0) << out;
  ASSERT_TRUE(eventually([&] { return pods("loadstar.dev/service=chat").empty(); }, 90))
      << describe_all();
  auto [code, reply] = openai_chat("chat");
  ASSERT_EQ(code, 0) << reply << describe_all();
  const json r = json::parse(reply.substr(reply.find('{')), nullptr, false);
  ASSERT_TRUE(r.is_object()) << reply;
  EXPECT_EQ(r["reply"]["role"], "assistant");
  EXPECT_EQ(pods("loadstar.dev/service=chat").size(), 1u);
}

// The leading controller's Pod deleted: the other controller takes the
// Lease, and no replica is created twice.
TEST_F(RealNode, TheLeadersPodDeletedTheOtherControllerLeadsAndNothingIsDuplicated) {
  auto holder = [] {
    const json lease = kubectl_json(fmt::format("-n {} get lease loadstar-controller", kNs));
    return lease.is_object() ? lease["spec"].value("holderIdentity", "") : std::string();
  };
  // Replicas of a service, less Pods already on their way out.
  auto live = [](const std::string& service) {
    size_t n = 0;
    for (const auto& pod : pods("loadstar.dev/service=" + service))
      n += !pod["metadata"].contains("deletionTimestamp");
    return n;
  };
  const std::string leader = holder();
  ASSERT_FALSE(leader.empty());
  ASSERT_EQ(live("sim"), 1u);
  auto [status, out] = kubectl(fmt::format("-n {} delete pod {} --wait=false", kNs, leader));
  ASSERT_EQ(status, 0) << out;
  std::string next;
  ASSERT_TRUE(eventually(
      [&] {
        next = holder();
        return !next.empty() && next != leader;
      },
      60))
      << describe_all();
  // The new leader is a controller Pod that is not the deleted one.
  bool found = false;
  for (const auto& pod : pods("app.kubernetes.io/name=loadstar-controller"))
    found |= pod["metadata"]["name"] == next;
  EXPECT_TRUE(found) << next;
  // For a while after the handover the replicas stay as they were: one of
  // `sim`, at most one of `chat` (idle, it may be scaling to zero).
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(live("sim"), 1u);
    EXPECT_LE(live("chat"), 1u);
    std::this_thread::sleep_for(500ms);
  }
  // The standby controllers were never restarted: their liveness probe
  // passes while they wait for the Lease.
  for (const auto& pod : pods("app.kubernetes.io/name=loadstar-controller"))
    EXPECT_EQ(pod["status"]["containerStatuses"][0]["restartCount"], 0) << pod["metadata"]["name"];
  auto [code, reply] = openai_chat("sim");
  EXPECT_EQ(code, 0) << reply;
}

// The agent's Pod restarted while it stages a model from a slow origin: the
// replica still comes up, and the new agent resumes from the chunks already
// written (the origin sends well under two copies).
TEST_F(RealNode, AnAgentRestartedMidStagingResumes) {
  const fs::path slow = scratch_dir() / "origin" / "slow" / "m";
  uint64_t size = 0;
  for (const auto& f : fs::directory_iterator(slow)) size += fs::file_size(f.path());
  const fs::path file = scratch_dir() / "slow.yaml";
  std::ofstream(file) << fmt::format(
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {{name: slow, namespace: {0}}}\n"
      "spec: {{source: \"http://{1}:{2}/slow/m/\"}}\n---\n"
      "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\n"
      "metadata: {{name: slow, namespace: {0}}}\nspec:\n  model: slow\n  replicas: 1\n",
      kNs, g_node_ip, g_origin_port);
  auto [status, out] = kubectl("apply -f " + file.string());
  ASSERT_EQ(status, 0) << out;
  // Chunks (16 MiB) written and logged in the agent's resume log, the
  // model not yet published: then the agent's Pod goes.
  auto chunks_done = [] {
    size_t n = 0;
    std::error_code ec;
    for (const auto& f : fs::directory_iterator("/var/lib/loadstar/agent/partial", ec)) {
      if (f.path().extension() != ".chunks") continue;
      std::ifstream in(f.path());
      for (std::string line; std::getline(in, line);) n += !line.empty();
    }
    return n;
  };
  const fs::path sent_log = scratch_dir() / "origin-slow.log";
  auto origin_sent = [&] {
    uint64_t n = 0;
    std::ifstream in(sent_log);
    for (uint64_t b; in >> b;) n += b;
    return n;
  };
  const fs::path published = "/var/lib/loadstar/agent/models/slow/current";
  ASSERT_TRUE(eventually([&] { return chunks_done() >= 1; }, 90)) << describe_all();
  const size_t reusable = chunks_done();
  ASSERT_FALSE(fs::exists(published)) << "staged before the restart: nothing to resume";
  const json agent = pods("app.kubernetes.io/name=loadstar-agent").at(0);
  auto [deleted, del_out] = kubectl(fmt::format("-n {} delete pod {} --wait=true --timeout=60s",
                                                kNs, agent["metadata"]["name"].get<std::string>()));
  ASSERT_EQ(deleted, 0) << del_out;
  std::this_thread::sleep_for(1s);  // nginx logs the responses the restart cut
  const uint64_t sent_before = origin_sent();
  ASSERT_TRUE(eventually(
      [&] {
        const json p = pods("loadstar.dev/service=slow");
        return p.size() == 1 && ready(p[0]);
      },
      240))
      << describe_all();
  auto shard_bytes = [](const fs::path& dir) {
    uint64_t n = 0;
    for (const auto& f : fs::directory_iterator(dir))
      if (f.path().extension() == ".safetensors") n += fs::file_size(f.path());
    return n;
  };
  EXPECT_EQ(shard_bytes(published), shard_bytes(slow));
  // After the restart the origin sent what was still missing: without
  // resuming it would have sent the whole model again.
  const uint64_t sent = origin_sent();
  const uint64_t reused = reusable * (uint64_t{16} << 20);
  EXPECT_LT(sent - sent_before, size - reused / 2)
      << "origin sent " << sent - sent_before << " after the restart for " << size << " with "
      << reusable << " chunks done before";
  EXPECT_GE(sent, size);
}

// batch/v1 Jobs users already have, admitted through Loadstar's queues by
// the controller as deployed (its RBAC as shipped), with Kubernetes' own
// Job controller and the kubelet: a Job whose pods name `schedulerName:
// loadstar` is held (its pods unbound) while its gang fits nowhere, and
// runs once admitted, its pods bound by Loadstar; one that cannot be held
// says so on its annotation.
TEST_F(RealNode, BatchJobsWaitUnboundInTheirQueueUntilAdmittedAndOneThatCannotBeHeldSaysSo) {
  auto job = [](const std::string& name, int parallelism, bool held) {
    return fmt::format(R"(apiVersion: batch/v1
kind: Job
metadata:
  name: {0}
  namespace: {1}
  labels: {{loadstar.dev/queue: default}}
spec:
  parallelism: {2}
  completions: {2}
  backoffLimit: 0
  template:
    spec:
{3}      restartPolicy: Never
      containers:
      - name: work
        image: loadstar:0.1.0
        imagePullPolicy: IfNotPresent
        command: [loadstar, --version]
{4}
---
)",
                       name, kNs, parallelism,
                       // One that is not held waits for a node that no node is: had it run,
                       // it could finish before the controller's next pass read it, and a
                       // finished Job is not annotated.
                       held ? "      schedulerName: loadstar\n"
                            : "      nodeSelector: {loadstar.dev/test: no-such-node}\n",
                       // One that is not held asks for no GPU: the default scheduler would
                       // hand it a card behind Loadstar's back (its bookkeeping is not told).
                       held ? "        resources: {limits: {nvidia.com/gpu: 1}}" : "");
  };
  // Three one-GPU pods as a gang never fit the node's two cards.
  const fs::path file = scratch_dir() / "batch.yaml";
  std::ofstream(file) << job("big", 3, true) + job("small", 1, true) + job("unheld", 1, false);
  auto [status, out] = kubectl("apply -f " + file.string());
  ASSERT_EQ(status, 0) << out;
  auto admission = [](const std::string& name) {
    const json j = kubectl_json(fmt::format("-n {} get job {}", kNs, name));
    return j.is_object() ? j["metadata"]
                               .value("annotations", json::object())
                               .value("loadstar.dev/admission", "")
                         : std::string();
  };
  auto complete = [](const std::string& name) {
    const json j = kubectl_json(fmt::format("-n {} get job {}", kNs, name));
    if (!j.is_object()) return false;
    for (const json& c : j.value("status", json::object()).value("conditions", json::array()))
      if (c.value("type", "") == "Complete" && c.value("status", "") == "True") return true;
    return false;
  };
  EXPECT_TRUE(eventually([&] { return complete("small"); }, 90))
      << admission("small") << describe_all();
  EXPECT_EQ(admission("small"), "Admitted: queue default, nodes loadstar-node");
  // Where it was placed, for a controller that takes over: its node and card.
  const json small = kubectl_json(fmt::format("-n {} get job small", kNs));
  const json placed = json::parse(
      small["metadata"]["annotations"].value("loadstar.dev/placement", "[]"), nullptr, false);
  ASSERT_TRUE(placed.is_array() && placed.size() == 1) << small.dump();
  EXPECT_EQ(placed[0].value("node", ""), "loadstar-node");
  EXPECT_NE(placed[0].value("shares", "").find("\"milli\":1000"), std::string::npos) << placed;
  EXPECT_TRUE(eventually([&] { return admission("big").starts_with("Waiting: "); }, 30))
      << admission("big");
  EXPECT_NE(admission("big").find("GPU"), std::string::npos) << admission("big");
  // Its Job controller made its pods; none is bound or ran.
  const json held = pods("job-name=big");
  EXPECT_EQ(held.size(), 3u);
  for (const json& p : held) {
    EXPECT_EQ(p["spec"].value("nodeName", ""), "") << p.dump();
    EXPECT_EQ(p["status"].value("phase", ""), "Pending");
  }
  EXPECT_TRUE(eventually(
      [&] { return admission("unheld").starts_with("NotAdmitted: not held: set spec.template"); },
      30))
      << admission("unheld");
  kubectl(fmt::format("-n {} delete job big small unheld --wait=false", kNs));
}
