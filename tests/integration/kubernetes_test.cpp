// Kubernetes mode against a real API server (../shared/k8s/apiserver: etcd +
// kube-apiserver v1.20 from Debian's source). It has no kubelet, so each
// test node is a process_kubelet that runs its bound Pods as local
// processes, next to a real `loadstar agent` on the node's address. Every
// test has its own namespace and nodes (labelled, selected with
// --node-selector), so tests do not see each other's.
//
// Without the server the tests are skipped, unless LOADSTAR_REQUIRE_K8S=1
// (scripts/test.sh sets it), which makes a missing server a failure.
#include "kubernetes_fixture.h"

#include <signal.h>
#include <unistd.h>

#include <future>

namespace loadstar::testing {
namespace {

TEST_F(KubernetesTest, KubectlApplyToAnOpenAIAnswerThroughTwoGateways) {
  add_node(1, 1);
  add_node(2, 1);
  start_controller("controller");
  wait_output("controller", "controller reconciling");
  const uint16_t gw1 = start_gateway("gateway-1");
  const uint16_t gw2 = start_gateway("gateway-2");
  apply(model_yaml() + "---\n" + service_yaml(2));

  ASSERT_TRUE(eventually([&] { return chat(gw1) == 200 && chat(gw2) == 200; }, 90))
      << read_text(processes_["controller"]->log) << read_text(processes_["gateway-1"]->log);
  EXPECT_TRUE(eventually([&] { return ready_pods() == 2; }, 30));
  // Each Pod: bound by Loadstar to a node of its own (one GPU each), owned
  // by the service, staged by that node's agent.
  std::set<std::string> nodes;
  for (const auto& pod : pods()) {
    EXPECT_EQ(pod["spec"]["schedulerName"], "loadstar");
    nodes.insert(pod["spec"].value("nodeName", ""));
    ASSERT_TRUE(pod["metadata"].contains("ownerReferences"));
    EXPECT_EQ(pod["metadata"]["ownerReferences"][0]["kind"], "InferenceService");
    EXPECT_EQ(pod["metadata"]["ownerReferences"][0]["name"], "chat");
  }
  EXPECT_EQ(nodes, (std::set<std::string>{ns_ + "-n1", ns_ + "-n2"}));
  for (int i : {1, 2})
    EXPECT_TRUE(fs::exists(root_ / fmt::format("{}-n{}", ns_, i) /
                           "var/lib/loadstar/agent/models/tiny/current/config.json"));
  // The agents, the gateways' internal endpoints and the controller's admin
  // API answer only callers with the internal token (the replica Pods' stage
  // containers got it from the Secret; so did the staging above).
  const std::string agent = fmt::format("127.{}.1.1", net_);
  EXPECT_EQ(internal_get(agent, 8070, "/v1/models", false).status, 401);
  EXPECT_EQ(internal_get(agent, 8070, "/v1/models").status, 200);
  EXPECT_EQ(internal_get(agent, 8070, "/health", false).status, 200);
  EXPECT_EQ(internal_get("127.0.0.1", gw1, "/loadstar/v1/load", false).status, 401);
  EXPECT_EQ(internal_get("127.0.0.1", gw1, "/metrics", false).status, 401);
  EXPECT_EQ(internal_get("127.0.0.1", gw1, "/loadstar/v1/load").status, 200);
  const uint16_t admin = static_cast<uint16_t>(
      std::stoi(wait_output("controller", R"(admin API on http://127\.0\.0\.1:(\d+))")));
  EXPECT_EQ(internal_get("127.0.0.1", admin, "/api/v1/replicas", false).status, 401);
  EXPECT_EQ(internal_get("127.0.0.1", admin, "/api/v1/replicas").status, 200);
  EXPECT_EQ(internal_get("127.0.0.1", admin, "/healthz", false).status, 200);
  // Status through the status subresource, as printer columns show it.
  EXPECT_TRUE(eventually([&] {
    return get_json("inferenceservice chat")
               .value("status", json::object())
               .value("readyReplicas", 0) == 2;
  }));
  auto [st, table] = kubectl("-n " + ns_ + " get lsvc chat");
  EXPECT_NE(table.find("READY"), std::string::npos) << table;
  // A third replica fits on neither node, and its status says why.
  apply(service_yaml(3));
  auto pending_message = [&] {
    const json status = get_json("inferenceservice chat").value("status", json::object());
    const json replicas = status.value("replicaStatus", json::object());
    for (const auto& [name, replica] : replicas.items())
      if (replica.value("state", "") == "Pending") return replica.value("message", "");
    return std::string();
  };
  EXPECT_TRUE(eventually([&] {
    return pending_message().find("insufficient GPU") != std::string::npos;
  })) << pending_message();
  EXPECT_EQ(pods().size(), 2u);

  // Deleting the service removes its Pods, and the gateways stop routing it.
  ASSERT_EQ(kubectl("-n " + ns_ + " delete inferenceservice chat").first, 0);
  EXPECT_TRUE(eventually([&] { return pods().empty(); }, 60));
  EXPECT_TRUE(eventually([&] { return chat(gw1) == 404 && chat(gw2) == 404; }, 20));
}

TEST_F(KubernetesTest, ARestartedControllerConvergesWithoutDuplicatePods) {
  add_node(1, 4);
  start_controller("controller-a", {"--no-leader-elect"});
  apply(model_yaml() + "---\n" + service_yaml(3));
  // Mid-rollout: as soon as the first Pod is bound, the controller dies.
  auto bound = [&] {
    std::map<std::string, std::string> uids;
    for (const auto& pod : pods())
      if (pod["spec"].contains("nodeName")) uids[pod["metadata"]["name"]] = pod["metadata"]["uid"];
    return uids;
  };
  ASSERT_TRUE(eventually([&] { return !bound().empty(); }, 60));
  processes_["controller-a"]->process.signal(SIGKILL);
  // Bound Pods are taken over as they are. (One created but not yet bound
  // when the controller died is deleted and made again: it never ran.)
  std::map<std::string, std::string> uids = bound();
  ASSERT_FALSE(uids.empty());
  start_controller("controller-b", {"--no-leader-elect"});
  ASSERT_TRUE(eventually([&] { return ready_pods() == 3; }, 90))
      << read_text(processes_["controller-b"]->log);
  std::this_thread::sleep_for(2s);  // nothing more appears afterwards
  const auto now = pods();
  ASSERT_EQ(now.size(), 3u);
  std::set<std::string> names;
  for (const auto& pod : now) {
    names.insert(pod["metadata"]["name"]);
    const std::string name = pod["metadata"]["name"];
    if (uids.count(name)) {
      EXPECT_EQ(pod["metadata"]["uid"], uids[name]) << name << " recreated";
    }
  }
  EXPECT_EQ(names, (std::set<std::string>{"chat-0", "chat-1", "chat-2"}));
  // Three GPUs of four used, none twice.
  std::set<std::string> devices;
  for (const auto& pod : now)
    devices.insert(pod["metadata"]["annotations"].value("loadstar.dev/devices", ""));
  EXPECT_EQ(devices.size(), 3u);
}

TEST_F(KubernetesTest, TwoControllersElectOneLeader) {
  start_controller("controller-a");
  wait_output("controller-a", "leading as controller-a");
  // The first controller made the internal token's Secret: 64 hex digits.
  const json secret = get_json("secret loadstar-internal");
  ASSERT_TRUE(secret.contains("data")) << read_text(processes_["controller-a"]->log);
  const auto token = base64_decode(secret["data"].value("token", "")).value_or("");
  EXPECT_EQ(token.size(), 64u);
  EXPECT_EQ(token.find_first_not_of("0123456789abcdef"), std::string::npos);
  add_node(1, 2);
  start_controller("controller-b");
  wait_output("controller-b", "waiting for lease");
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(read_text(processes_["controller-b"]->log).find("leading as"), std::string::npos);
  json lease = get_json("lease loadstar-controller");
  EXPECT_EQ(lease["spec"]["holderIdentity"], "controller-a");
  apply(model_yaml() + "---\n" + service_yaml(1));
  ASSERT_TRUE(eventually([&] { return ready_pods() == 1; }, 60));
  // The leader stops (SIGTERM releases the Lease): the other takes over and
  // keeps the running Pod.
  const std::string uid = pods().front()["metadata"]["uid"];
  processes_["controller-a"]->process.signal(SIGTERM);
  wait_output("controller-b", "leading as controller-b", 20);
  wait_output("controller-b", "taken over", 10);
  EXPECT_EQ(get_json("lease loadstar-controller")["spec"]["holderIdentity"], "controller-b");
  apply(service_yaml(2));
  ASSERT_TRUE(eventually([&] { return ready_pods() == 2; }, 60))
      << read_text(processes_["controller-b"]->log);
  bool kept = false;
  for (const auto& pod : pods()) kept |= pod["metadata"]["uid"] == uid;
  EXPECT_TRUE(kept);
}

TEST_F(KubernetesTest, ScalesFromZeroOnWarmWeightsForAHeldRequestAndBackToZero) {
  add_node(1, 1);
  add_node(2, 1);
  start_controller("controller", {"--no-leader-elect"});
  wait_output("controller", "controller reconciling");
  const std::string gateway_ip = gateway_pod(1);
  ASSERT_FALSE(gateway_ip.empty());

  // The second node's agent already holds the model (a replica ran there
  // once): the controller learns it from the agent's listing, keeps the
  // weights warm there rather than on the first node, and the scheduler
  // places the replica there.
  const std::string model = model_yaml();
  std::string out;
  ASSERT_EQ(run_loadstar(
                {"stage", "tiny", "--source", "file://" + synth_model("k8s-tiny", "2MiB").string(),
                 "--agent", fmt::format("http://127.{}.2.1:8070", net_), "--token-file",
                 token_file().string()},
                &out),
            0)
      << out;
  apply(model + "---\n" +
        "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: chat}\n"
        "spec:\n  model: tiny\n  replicas: 1\n  minReplicas: 0\n  idleTimeout: 3s\n"
        "  warmNodes: 1\n  resources: {gpu: {count: 1}}\n");
  // Nobody has asked for it: no replica, but its weights are staged on one
  // node (warm weights, cold GPUs).
  auto staged_on = [&] {
    std::vector<std::string> nodes;
    for (int i : {1, 2})
      if (fs::exists(root_ / fmt::format("{}-n{}", ns_, i) /
                     "var/lib/loadstar/agent/models/tiny/current/config.json"))
        nodes.push_back(fmt::format("{}-n{}", ns_, i));
    return nodes;
  };
  const std::string warm_node = ns_ + "-n2";
  ASSERT_EQ(staged_on(), std::vector<std::string>{warm_node});
  std::this_thread::sleep_for(3s);  // passes in which it could stage elsewhere
  EXPECT_TRUE(pods().empty());
  EXPECT_EQ(staged_on(), std::vector<std::string>{warm_node})
      << read_text(processes_["controller"]->log);
  // A request is held by the gateway; the controller sees it in the
  // gateway's load report, starts a replica, and the request is answered.
  auto held = chat_request(gateway_ip, 8080, 60);
  ASSERT_TRUE(held.ok()) << held.error().message;
  EXPECT_EQ(held->status, 200) << held->body << read_text(processes_["controller"]->log);
  EXPECT_FALSE(held->header("x-loadstar-held-seconds").empty());
  // The replica went where the weights were.
  const auto running = pods();
  ASSERT_EQ(running.size(), 1u);
  EXPECT_EQ(running[0]["spec"].value("nodeName", ""), warm_node);
  // Three idle seconds later the service is back at zero.
  EXPECT_TRUE(eventually([&] { return pods().empty(); }, 30))
      << read_text(processes_["controller"]->log);
  const json status = get_json("inferenceservice chat").value("status", json::object());
  EXPECT_EQ(status.value("desiredReplicas", -1), 0) << status.dump();
}

TEST_F(KubernetesTest, AScaledDownReplicaLeavesTheGatewaysAndFinishesItsRequestsBeforeItStops) {
  add_node(1, 2);
  start_controller("controller", {"--no-leader-elect"});
  wait_output("controller", "controller reconciling");
  const std::string gateway_ip = gateway_pod(1);
  ASSERT_FALSE(gateway_ip.empty());
  // Engines that give up on their requests 1 s after SIGTERM: a replica
  // stopped with requests running would cut them short.
  auto service = [](int replicas) {
    return fmt::format(
        "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: chat}}\n"
        "spec:\n  model: tiny\n  replicas: {}\n  resources: {{gpu: {{count: 1}}}}\n"
        "  engine: {{name: engine-sim, args: [--drain-timeout, \"1\"]}}\n",
        replicas);
  };
  apply(model_yaml() + "---\n" + service(2));
  ASSERT_TRUE(eventually([&] { return ready_pods() == 2; }, 60));
  auto served_by = [&](const Result<http::ClientResponse>& r) -> std::string {
    return r.ok() && r->status == 200 ? std::string(r->header("x-loadstar-endpoint")) : "failed";
  };
  ASSERT_TRUE(eventually(
      [&] {  // the gateway routes to both
        std::set<std::string> seen;
        for (int i = 0; i < 6; ++i) seen.insert(served_by(chat_request(gateway_ip, 8080, 5)));
        return seen == std::set<std::string>{"chat-0", "chat-1"};
      },
      30));
  // Four long requests, spread over both replicas (the picker balances
  // what is in flight).
  auto long_request = [&] {
    return http::fetch({.host = gateway_ip,
                        .port = 8080,
                        .method = "POST",
                        .target = "/v1/completions",
                        .body = R"({"model":"chat","prompt":"tell me","max_tokens":700,)"
                                R"("ignore_eos":true})",
                        .headers = {{"Content-Type", "application/json"}},
                        .timeout_s = 60});
  };
  std::vector<std::future<Result<http::ClientResponse>>> longs;
  for (int i = 0; i < 4; ++i) {
    longs.push_back(std::async(std::launch::async, long_request));
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(300ms);
  apply(service(1));
  // The controller drains chat-1: its Pod is marked and the gateway sends
  // it nothing new, but it is not deleted while its requests run.
  ASSERT_TRUE(eventually(
      [&] {
        const json meta = get_json("pod chat-1").value("metadata", json::object());
        return meta.value("annotations", json::object()).contains("loadstar.dev/draining");
      },
      10))
      << read_text(processes_["controller"]->log);
  // Once the gateway's Pod watch has the mark, new requests go to chat-0
  // only (and none fails).
  EXPECT_TRUE(eventually(
      [&] {
        for (int i = 0; i < 6; ++i)
          if (served_by(chat_request(gateway_ip, 8080, 5)) != "chat-0") return false;
        return true;
      },
      10));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(served_by(chat_request(gateway_ip, 8080, 5)), "chat-0");
  // The long requests still run there: the Pod is not deleted yet.
  EXPECT_FALSE(
      get_json("pod chat-1").value("metadata", json::object()).contains("deletionTimestamp"));
  std::set<std::string> long_on;
  for (auto& f : longs) {
    auto r = f.get();
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_EQ(r->status, 200) << r->body;
    const json body = json::parse(r->body, nullptr, false);
    EXPECT_EQ(body.value("usage", json::object()).value("completion_tokens", 0), 700) << r->body;
    long_on.insert(std::string(r->header("x-loadstar-endpoint")));
  }
  EXPECT_TRUE(long_on.count("chat-1")) << "no long request ran on the drained replica";
  // Done: chat-1 goes.
  EXPECT_TRUE(eventually([&] { return pods().size() == 1; }, 30))
      << read_text(processes_["controller"]->log);
}

// A real engine in a Pod: llama.cpp's llama-server (the image's
// /app/llama-server, run by the test kubelet from scripts/llama-server.sh's
// build) on a GGUF the nodes' agents stage, answered through two gateways.
TEST_F(KubernetesTest, ALlamaCppPodAnswersThroughTwoGateways) {
  auto [found, llama] =
      run_shell(std::string(LOADSTAR_SOURCE_DIR) + "/scripts/llama-server.sh path");
  while (!llama.empty() && llama.back() == '\n') llama.pop_back();
  if (found != 0) {
    const char* required = std::getenv("LOADSTAR_REQUIRE_LLAMA");
    if (required && std::string(required) == "1") FAIL() << "no llama-server";
    GTEST_SKIP() << "no llama-server (scripts/llama-server.sh build)";
  }
  const fs::path dir = scratch_dir() / "k8s-gguf";
  if (!fs::exists(dir / "model.gguf")) {
    fs::create_directories(dir);
    std::string out;
    ASSERT_EQ(run_loadstar({"model", "synth", "--format", "gguf", "--size", "26MiB", "-o",
                            (dir / "model.gguf").string()},
                           &out),
              0)
        << out;
  }
  add_node(1, 0, {"--command", "/app/llama-server=" + llama});
  add_node(2, 0, {"--command", "/app/llama-server=" + llama});
  start_controller("controller");
  wait_output("controller", "controller reconciling");
  const uint16_t gw1 = start_gateway("gateway-1");
  const uint16_t gw2 = start_gateway("gateway-2");
  apply(fmt::format(
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {{name: tiny-gguf}}\n"
      "spec: {{source: \"file://{}\", format: gguf}}\n---\n"
      "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: chat}}\n"
      "spec:\n  model: tiny-gguf\n  replicas: 2\n"
      "  engine: {{name: llama.cpp, contextLength: 512, maxSequences: 1, threads: 1}}\n",
      dir.string()));
  ASSERT_TRUE(eventually([&] { return chat(gw1) == 200 && chat(gw2) == 200; }, 90))
      << read_text(processes_["controller"]->log) << read_text(processes_["gateway-1"]->log);
  // The answer is llama-server's (its timings), from the Pod's own command.
  auto r = chat_request("127.0.0.1", gw1, 10);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(json::parse(r->body).contains("timings")) << r->body;
  for (const auto& pod : pods()) {
    const json& c = pod["spec"]["containers"][0];
    EXPECT_EQ(c["command"], json({"/app/llama-server"}));
    EXPECT_EQ(c["args"][1], "/var/lib/loadstar/models/tiny-gguf/current/model.gguf");
  }
}

// vLLM's Pod as Loadstar writes it, run by a stand-in `vllm` that parses
// its arguments as strictly as vLLM v0.11.0 (tests/support/vllm_standin.cpp)
// and then serves with engine-sim: the flags pass vLLM's parser, the Pod
// answers through a gateway, and a service whose args vLLM would refuse
// shows vLLM's own error in its status.
TEST_F(KubernetesTest, AVllmPodsArgumentsPassVllmsParserAndARefusedOneIsReported) {
  add_node(1, 2, {"--command", std::string("vllm=") + VLLM_STANDIN_BIN});
  start_controller("controller");
  wait_output("controller", "controller reconciling");
  const uint16_t gw = start_gateway("gateway-1");
  apply(model_yaml() + "---\n" +
        "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: chat}\n"
        "spec:\n  model: tiny\n  replicas: 1\n  resources: {gpu: {count: 1}}\n"
        "  engine: {name: vllm, contextLength: 2048, maxSequences: 8, args: [\"-O3\", "
        "\"--gpu-memory-utilization\", \"0.85\"]}\n");
  ASSERT_TRUE(eventually([&] { return chat(gw) == 200; }, 90))
      << read_text(processes_["controller"]->log) << read_text(processes_["gateway-1"]->log);
  const json pod = pods().at(0);
  ASSERT_EQ(pods().size(), 1u);
  EXPECT_EQ(pod["spec"]["containers"][0]["command"], json({"vllm", "serve"}));
  EXPECT_EQ(pod["spec"]["containers"][0]["image"], "vllm/vllm-openai:v0.11.0");

  apply(
      "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: bad}\n"
      "spec:\n  model: tiny\n  replicas: 1\n  resources: {gpu: {count: 1}}\n"
      "  engine: {name: vllm, args: [\"--no-such-flag\"]}\n");
  std::string message;
  EXPECT_TRUE(eventually(
      [&] {
        auto [code, out] = kubectl("-n " + ns_ + " get inferenceservice bad -o json");
        const json svc = json::parse(out, nullptr, false);
        if (!svc.is_object()) return false;
        message.clear();
        // No status yet is not a failure: the controller may not have written it.
        const json replicas =
            svc.value("status", json::object()).value("replicaStatus", json::object());
        for (const auto& [name, r] : replicas.items()) message += r.value("message", "");
        return message.find("unrecognized arguments: --no-such-flag") != std::string::npos;
      },
      60))
      << message;
}

TEST_F(KubernetesTest, DeployManifestsPassServerDryRunWithLeastPrivilege) {
  // deploy/loadstar.yaml as written, but in the test's namespace: the test
  // server has no namespace controller, so a deleted namespace would stay
  // Terminating and spoil the next run.
  std::string manifest = read_text(fs::path(LOADSTAR_SOURCE_DIR) / "deploy/loadstar.yaml");
  ASSERT_NE(manifest.find("namespace: loadstar-system"), std::string::npos);
  manifest = std::regex_replace(manifest, std::regex("loadstar-system"), ns_);
  const fs::path file = root_ / "loadstar.yaml";
  std::ofstream(file) << manifest;
  auto [status, out] = kubectl("apply --dry-run=server -f " + file.string());
  ASSERT_EQ(status, 0) << out;
  EXPECT_NE(out.find("daemonset.apps/loadstar-agent created (server dry run)"), std::string::npos)
      << out;
  EXPECT_NE(out.find("deployment.apps/loadstar-controller created (server dry run)"),
            std::string::npos)
      << out;
  auto [ex_status, ex_out] = kubectl("-n " + ns_ + " apply --dry-run=server -f " +
                                     std::string(LOADSTAR_SOURCE_DIR) + "/deploy/examples/");
  EXPECT_EQ(ex_status, 0) << ex_out;
  // The RBAC for real, then what each account may do.
  ASSERT_EQ(kubectl("apply -f " + file.string()).first, 0);
  // `account` in the test's namespace, or "NAMESPACE:NAME".
  auto can = [&](const std::string& account, const std::string& what) {
    const std::string who = account.find(':') == std::string::npos ? ns_ + ":" + account : account;
    // The answer is the last line (warnings may come first).
    std::string out = kubectl("auth can-i --as=system:serviceaccount:" + who + " " + what).second;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out.substr(out.find_last_of('\n') + 1) == "yes";
  };
  const std::string in = " -n " + ns_;
  EXPECT_TRUE(can("loadstar-controller", "create pods" + in));  // created on their node
  // Binding: admitted batch/v1 Jobs' pods (TYPE/NAME: "pods/binding" would
  // name a Pod called binding). Their Jobs: watched, un-suspended, annotated.
  EXPECT_TRUE(can("loadstar-controller", "create pods --subresource=binding" + in));
  EXPECT_TRUE(can("loadstar-controller", "patch jobs.batch" + in));
  EXPECT_TRUE(can("loadstar-controller", "watch jobs.batch" + in));
  EXPECT_FALSE(can("loadstar-controller", "create jobs.batch" + in));
  EXPECT_FALSE(can("loadstar-controller", "delete jobs.batch" + in));
  EXPECT_TRUE(can("loadstar-controller", "patch pods" + in));  // the draining mark
  EXPECT_TRUE(
      can("loadstar-controller", "patch inferenceservices.loadstar.dev --subresource=status" + in));
  EXPECT_TRUE(can("loadstar-controller", "update leases.coordination.k8s.io" + in));
  EXPECT_TRUE(can("loadstar-controller", "watch nodes"));
  EXPECT_FALSE(can("loadstar-controller", "delete nodes"));
  EXPECT_FALSE(can("loadstar-controller", "create pods -n default"));
  // Of Secrets, only the internal token's (and creating it when missing).
  EXPECT_FALSE(can("loadstar-controller", "get secrets" + in));
  EXPECT_FALSE(can("loadstar-controller", "get secrets/loadstar-storage" + in));
  EXPECT_TRUE(can("loadstar-controller", "get secrets/loadstar-internal" + in));
  EXPECT_FALSE(can("loadstar-controller", "list secrets" + in));
  EXPECT_FALSE(can("loadstar-gateway", "get secrets/loadstar-internal" + in));
  EXPECT_NE(out.find("networkpolicy.networking.k8s.io/loadstar-engines created (server dry run)"),
            std::string::npos)
      << out;
  EXPECT_FALSE(can("loadstar-controller", "update inferenceservices.loadstar.dev" + in));
  // Its writes of specs: rollout undo's merge patch, and the history.
  EXPECT_TRUE(can("loadstar-controller", "patch inferenceservices.loadstar.dev" + in));
  EXPECT_FALSE(can("loadstar-controller", "delete inferenceservices.loadstar.dev" + in));
  EXPECT_TRUE(can("loadstar-controller", "create controllerrevisions.apps" + in));
  EXPECT_FALSE(can("loadstar-controller", "create deployments.apps" + in));
  EXPECT_TRUE(can("loadstar-controller", "create events" + in));
  EXPECT_FALSE(can("loadstar-controller", "delete events" + in));
  EXPECT_TRUE(can("loadstar-controller", "update configmaps" + in));  // the usage ledger
  EXPECT_FALSE(can("loadstar-controller", "delete configmaps" + in));
  EXPECT_TRUE(can("loadstar-gateway", "watch inferenceservices.loadstar.dev" + in));
  EXPECT_FALSE(can("loadstar-gateway", "create pods" + in));
  EXPECT_FALSE(
      can("loadstar-gateway", "patch inferenceservices.loadstar.dev --subresource=status" + in));
  EXPECT_FALSE(can("loadstar-agent", "list pods" + in));
  EXPECT_TRUE(can("loadstar-agent", "watch endpoints" + in));  // its peers
  EXPECT_FALSE(can("loadstar-agent", "watch endpoints -n default"));
  EXPECT_FALSE(can("loadstar-agent", "get secrets" + in));

  // A team's namespace (deploy/overlays/team): the controller may run its
  // replicas and keep its token's Secret there, and nothing more; the
  // team's gateway reads its own namespace only.
  const std::string team = add_namespace("team");
  auto [team_status, team_yaml] =
      kubectl(std::string("kustomize ") + LOADSTAR_SOURCE_DIR + "/deploy/overlays/team");
  ASSERT_EQ(team_status, 0) << team_yaml;
  team_yaml = std::regex_replace(team_yaml, std::regex("loadstar-system"), ns_);
  team_yaml = std::regex_replace(team_yaml, std::regex("team-a"), team);
  std::ofstream(root_ / "team.yaml") << team_yaml;
  auto [team_apply, team_out] = kubectl("apply -f " + (root_ / "team.yaml").string());
  ASSERT_EQ(team_apply, 0) << team_out;
  const std::string in_team = " -n " + team;
  EXPECT_TRUE(can("loadstar-controller", "create pods" + in_team));
  EXPECT_TRUE(can("loadstar-controller", "patch jobs.batch" + in_team));
  EXPECT_TRUE(can("loadstar-controller", "watch inferenceservices.loadstar.dev" + in_team));
  EXPECT_TRUE(can("loadstar-controller",
                  "patch inferenceservices.loadstar.dev --subresource=status" + in_team));
  EXPECT_TRUE(can("loadstar-controller", "create secrets" + in_team));
  EXPECT_TRUE(can("loadstar-controller", "patch secrets/loadstar-internal" + in_team));
  EXPECT_FALSE(can("loadstar-controller", "get secrets/loadstar-storage" + in_team));
  EXPECT_FALSE(can("loadstar-controller", "list secrets" + in_team));
  EXPECT_FALSE(can("loadstar-controller", "update leases.coordination.k8s.io" + in_team));
  EXPECT_FALSE(can("loadstar-controller", "create pods -n default"));
  auto team_can = [&](const std::string& what) { return can(team + ":loadstar-gateway", what); };
  EXPECT_TRUE(team_can("watch inferenceservices.loadstar.dev" + in_team));
  EXPECT_FALSE(team_can("watch inferenceservices.loadstar.dev" + in));
  EXPECT_FALSE(team_can("get secrets/loadstar-internal" + in_team));
  EXPECT_FALSE(team_can("create pods" + in_team));

  // Every namespace (deploy/overlays/all-namespaces): a ClusterRoleBinding
  // of the same rules, and the ConfigMap the controller's env reads.
  auto [all_status, all_yaml] =
      kubectl(std::string("kustomize ") + LOADSTAR_SOURCE_DIR + "/deploy/overlays/all-namespaces");
  ASSERT_EQ(all_status, 0) << all_yaml;
  all_yaml = std::regex_replace(all_yaml, std::regex("loadstar-system"), ns_);
  std::ofstream(root_ / "all.yaml") << all_yaml;
  auto [all_apply, all_out] = kubectl("apply -f " + (root_ / "all.yaml").string());
  EXPECT_EQ(all_apply, 0) << all_out;
  EXPECT_EQ(get_json("configmap loadstar-controller")["data"].value("namespaces", ""), "*");
  EXPECT_TRUE(can("loadstar-controller", "create pods -n default"));
  EXPECT_TRUE(can("loadstar-controller", "watch models.loadstar.dev --all-namespaces"));
  EXPECT_FALSE(can("loadstar-controller", "get secrets -n default"));
  EXPECT_FALSE(can("loadstar-controller", "delete nodes"));
  // The cluster-scoped part goes; the rest goes with the namespace.
  kubectl("delete clusterrolebinding loadstar-controller-nodes loadstar-controller-all-namespaces");
  kubectl("delete clusterrole loadstar-controller-nodes loadstar-controller-namespace");
}

TEST_F(KubernetesTest, InformerResumesEndedWatchesWithoutMissingAnEvent) {
  auto config = kube::load_config(g_kubeconfig);
  ASSERT_TRUE(config.ok()) << config.error().message;
  kube::Client client(*config);
  const std::string collection = kube::collection_path("v1", ns_, "configmaps");
  // The server ends each watch after one second: the informer resumes from
  // the last version it saw, again and again, while objects come and go.
  kube::Informer informer(client, collection, "", /*watch_timeout_s=*/1);
  informer.start(nullptr);
  ASSERT_TRUE(informer.wait_synced(10));
  std::set<std::string> expected;
  for (int i = 0; i < 30; ++i) {
    const std::string name = fmt::format("cm-{}", i);
    json cm = {{"apiVersion", "v1"},
               {"kind", "ConfigMap"},
               {"metadata", {{"name", name}}},
               {"data", {{"i", std::to_string(i)}}}};
    ASSERT_TRUE(client.create(collection, cm).ok());
    expected.insert(ns_ + "/" + name);
    if (i % 3 == 2) {
      const std::string gone = fmt::format("cm-{}", i - 1);
      ASSERT_TRUE(client.remove(collection + "/" + gone).ok());
      expected.erase(ns_ + "/" + gone);
    }
    std::this_thread::sleep_for(100ms);  // 3 s in all: several watches end on the way
  }
  auto seen = [&] {
    std::set<std::string> keys;
    for (const auto& item : informer.items()) keys.insert(kube::object_key(item));
    return keys;
  };
  EXPECT_TRUE(eventually([&] { return seen() == expected; }, 10));
  EXPECT_EQ(informer.relists(), 1u);  // resumed every time, never listed again
  // Optimistic concurrency: a stale write is refused with kConflict.
  auto current = client.get(collection + "/cm-0");
  ASSERT_TRUE(current.ok());
  json stale = *current;
  json fresh = *current;
  fresh["data"]["i"] = "first";
  ASSERT_TRUE(client.replace(collection + "/cm-0", fresh).ok());
  stale["data"]["i"] = "second";
  auto refused = client.replace(collection + "/cm-0", stale);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kConflict);
}

// LoRA adapters in Kubernetes (loading: start): the replica Pod stages each
// adapter with an init container of its own through the node's agent, the
// engine starts with them (--lora-modules), and a client names one through
// the gateway.
TEST_F(KubernetesTest, AReplicaPodStagesItsLoraAdaptersAndServesThem) {
  add_node(1, 1);
  start_controller("controller");
  wait_output("controller", "controller reconciling");
  const uint16_t gw = start_gateway("gateway-1");
  const fs::path base = synth_model("k8s-tiny", "2MiB");
  std::string yaml = model_yaml();
  for (const std::string name : {"sql", "poems"})
    yaml += fmt::format(
        "---\napiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {{name: {}}}\n"
        "spec: {{source: \"file://{}\", adapterOf: tiny}}\n",
        name, synth_adapter("k8s-" + name, base, 8).string());
  yaml += "---\n" + service_yaml(1) + "  lora: {adapters: [sql, poems], maxLoras: 2}\n";
  apply(yaml);
  auto ask = [&](const std::string& model) {
    auto r =
        http::fetch({.port = gw,
                     .method = "POST",
                     .target = "/v1/completions",
                     .body = json({{"model", model}, {"prompt", "hi"}, {"max_tokens", 2}}).dump(),
                     .timeout_s = 5});
    return r.ok() ? r->status : 0;
  };
  ASSERT_TRUE(eventually([&] { return ask("sql") == 200; }, 90))
      << read_text(processes_["controller"]->log) << read_text(processes_["gateway-1"]->log)
      << json(pods()).dump();
  EXPECT_EQ(ask("poems"), 200);
  EXPECT_EQ(ask("chat"), 200);
  EXPECT_EQ(ask("nope"), 404);
  const auto all = pods();
  ASSERT_EQ(all.size(), 1u);
  std::set<std::string> inits;
  for (const auto& c : all[0]["spec"]["initContainers"]) inits.insert(c["name"].get<std::string>());
  EXPECT_EQ(inits, (std::set<std::string>{"stage", "stage-lora-0", "stage-lora-1"}));
  // What the gateways may send there, in the engine's flag order.
  EXPECT_EQ(all[0]["metadata"]["annotations"].value("loadstar.dev/lora-adapters", ""), "sql,poems");
  EXPECT_NE(all[0]["spec"]["containers"][0]["args"].dump().find(
                "sql=/var/lib/loadstar/models/sql/current"),
            std::string::npos);
  EXPECT_TRUE(fs::exists(root_ / fmt::format("{}-n1", ns_) /
                         "var/lib/loadstar/agent/models/poems/current/adapter_config.json"));
}

}  // namespace
}  // namespace loadstar::testing

namespace loadstar::testing {
namespace {

// A disaggregated service in Kubernetes: its prefill pool runs as Pods of
// their own, labelled with llm-d's roles and owned by the service; the
// gateways find them through their service label, and a long prompt is
// computed on a prefill Pod and decoded on a decode Pod, its KV read over
// the prefill Pod's advertised address.
TEST_F(KubernetesTest, ADisaggregatedServicesPoolsRunAsPodsAndLongPromptsCrossThem) {
  add_node(1, 1);
  add_node(2, 1);
  start_controller("controller");
  wait_output("controller", "controller reconciling");
  const uint16_t gw = start_gateway("gateway-1");
  apply(model_yaml() + "---\n" + service_yaml(1) +
        "  prefill: {replicas: 1, nonCachedTokens: 64}\n");
  ASSERT_TRUE(eventually([&] { return ready_pods() == 2 && chat(gw) == 200; }, 90))
      << read_text(processes_["controller"]->log) << read_text(processes_["gateway-1"]->log);
  std::map<std::string, std::string> roles;  // pod -> llm-d.ai/role
  std::string prefill_ip;
  for (const auto& pod : pods()) {
    roles[pod["metadata"]["name"]] = pod["metadata"]["labels"].value("llm-d.ai/role", "");
    EXPECT_EQ(pod["metadata"]["ownerReferences"][0]["name"], "chat");
    if (pod["metadata"]["labels"].value("llm-d.ai/role", "") == "prefill")
      prefill_ip = pod["status"].value("podIP", "");
  }
  EXPECT_EQ(roles, (std::map<std::string, std::string>{{"chat-0", "decode"},
                                                       {"chat-prefill-0", "prefill"}}));
  std::string prompt;
  for (int i = 0; i < 300; ++i) prompt += fmt::format(" page{} word{}", i % 7, i);
  auto r =
      http::fetch({.port = gw,
                   .method = "POST",
                   .target = "/v1/completions",
                   .body = json{{"model", "chat"}, {"prompt", prompt}, {"max_tokens", 4}}.dump(),
                   .headers = {{"Content-Type", "application/json"}},
                   .timeout_s = 10});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->status, 200) << r->body;
  const std::string metrics = internal_get("127.0.0.1", gw, "/metrics").body;
  EXPECT_EQ(metric_in(metrics, "loadstar_gateway_disaggregated_requests_total", "model=\"chat\""),
            1)
      << metrics;
  // The prefill engine (reached at its Pod's address) handed its KV over.
  ASSERT_FALSE(prefill_ip.empty());
  auto engine = http::fetch({.host = prefill_ip, .port = 8000, .target = "/metrics"});
  ASSERT_TRUE(engine.ok()) << engine.error().message;
  EXPECT_EQ(metric_in(engine->body, "loadstar_engine_sim_kv_transfer_sent_requests_total"), 1);
  // The service's status nests its prefill pool's.
  EXPECT_TRUE(eventually([&] {
    return get_json("inferenceservice chat")
               .value("status", json::object())
               .value("prefill", json::object())
               .value("readyReplicas", 0) == 1;
  }));
}

// Kubernetes mode's dashboard and usage ledger: the controller serves the
// page to anyone and its data only with the token; a gateway Pod's load
// reports carry each tenant's usage, which the controller's ledger keeps
// in the ConfigMap loadstar-usage (and a new controller goes on from it).
TEST_F(KubernetesTest, TheLedgerCountsATenantsRequestsThroughAGatewayPodIntoAConfigMap) {
  add_node(1, 2);
  start_controller("controller-a", {"--no-leader-elect"});
  const std::string gateway_ip = gateway_pod(1);
  ASSERT_FALSE(gateway_ip.empty());
  apply(model_yaml() + "---\n" + service_yaml(1) + R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  apiKeys: [{name: ci, sha256: 11b36e2dd85361c896eeac2803a51c87cf319591c8752ffeed50a5951d7b46a1}]
)");
  ASSERT_TRUE(eventually([&] { return ready_pods() == 1; }, 90));
  int ok = 0;
  for (int i = 0; i < 40 && ok < 4; ++i) {
    auto r = http::fetch({.host = gateway_ip,
                          .port = 8080,
                          .method = "POST",
                          .target = "/v1/chat/completions",
                          .body = R"({"model":"chat","messages":[{"role":"user","content":"hi"}],)"
                                  R"("max_tokens":4})",
                          .headers = {{"Content-Type", "application/json"},
                                      {"Authorization", "Bearer sk-test-dashboard-key-0001"}},
                          .timeout_s = 10});
    if (r.ok() && r->status == 200)
      ++ok;
    else
      std::this_thread::sleep_for(250ms);
  }
  ASSERT_EQ(ok, 4);
  const uint16_t admin = static_cast<uint16_t>(
      std::stoi(wait_output("controller-a", R"(admin API on http://127\.0\.0\.1:(\d+))")));
  EXPECT_EQ(internal_get("127.0.0.1", admin, "/", false).status, 200);
  EXPECT_EQ(internal_get("127.0.0.1", admin, "/api/v1/tenants", false).status, 401);
  auto tenant_requests = [&] {
    const json doc =
        json::parse(internal_get("127.0.0.1", admin, "/api/v1/tenants").body, nullptr, false);
    for (const json& t : doc.value("items", json::array()))
      if (t.value("name", "") == "team-a") return t.value("requests", 0);
    return 0;
  };
  ASSERT_TRUE(eventually([&] { return tenant_requests() == 4; }, 20)) << tenant_requests();
  // Saved within the save interval (30 s), or at once when the controller stops.
  processes_["controller-a"]->process.signal(SIGTERM);
  ASSERT_TRUE(eventually([&] { return !processes_["controller-a"]->process.running(); }, 30));
  const json cm = get_json("configmap loadstar-usage");
  const std::string saved = cm.value("data", json::object()).value("usage.json", "");
  EXPECT_NE(saved.find("\"team-a\""), std::string::npos) << cm.dump();
  start_controller("controller-b", {"--no-leader-elect"});
  const uint16_t admin_b = static_cast<uint16_t>(
      std::stoi(wait_output("controller-b", R"(admin API on http://127\.0\.0\.1:(\d+))")));
  const std::string csv = internal_get("127.0.0.1", admin_b, "/api/v1/usage?format=csv").body;
  EXPECT_NE(csv.find(",team-a,chat,4,0,"), std::string::npos) << csv;
}

}  // namespace
}  // namespace loadstar::testing
