// One controller for several namespaces, against the real API server: two
// teams each run a service "chat" of a model "tiny" in their own namespace,
// placed by the one scheduler on the same GPUs, staged by the same agents
// under names that cannot collide, each team with its own token, which
// stages its own models and nothing else.
#include "kubernetes_fixture.h"

namespace loadstar::testing {
namespace {

TEST_F(KubernetesTest, OneControllerServesTwoNamespacesWithTheirOwnNamesAndTokens) {
  const std::string a = add_namespace("a"), b = add_namespace("b");
  add_node(1, 1);
  add_node(2, 1);
  start_controller("controller", {"--namespaces", a + "," + b});
  wait_output("controller", "controller reconciling namespaces " + ns_ + ", " + a + ", " + b);
  for (const std::string& ns : {a, b}) apply(model_yaml() + "---\n" + service_yaml(1), ns);

  // Each namespace gets its own token, derived from the internal one.
  auto namespace_token = [&](const std::string& ns) -> std::string {
    const json secret = get_json("secret loadstar-internal", ns);
    if (!secret.contains("data")) return "";
    return base64_decode(secret["data"].value("token", "")).value_or("");
  };
  ASSERT_TRUE(eventually([&] { return !namespace_token(a).empty(); }, 30))
      << read_text(processes_["controller"]->log);
  const std::string token_a = namespace_token(a);
  EXPECT_TRUE(token_a.starts_with("ns." + a + ".")) << token_a;
  EXPECT_EQ(get_json("secret loadstar-internal", a)["metadata"]["labels"].value(
                "app.kubernetes.io/managed-by", ""),
            "loadstar");
  const fs::path token_a_file = root_ / "token-a";
  std::ofstream(token_a_file) << token_a;

  // Both replicas run, one per node (two GPUs, one scheduler), each in its
  // namespace, owned by its namespace's service, answering through a
  // gateway of that namespace that holds only that namespace's token.
  const uint16_t gw_a = start_gateway("gateway-a", a, token_a_file);
  ASSERT_TRUE(eventually([&] { return chat(gw_a) == 200; }, 90))
      << read_text(processes_["controller"]->log);
  std::set<std::string> nodes;
  for (const std::string& ns : {a, b}) {
    ASSERT_TRUE(eventually([&] { return pods(ns).size() == 1; }, 30)) << ns;
    const json pod = pods(ns).front();
    EXPECT_EQ(pod["metadata"]["name"], "chat-0");
    EXPECT_EQ(pod["metadata"]["ownerReferences"][0]["name"], "chat");
    EXPECT_EQ(pod["metadata"]["ownerReferences"][0]["uid"],
              get_json("inferenceservice chat", ns)["metadata"]["uid"]);
    nodes.insert(pod["spec"].value("nodeName", ""));
    EXPECT_TRUE(eventually([&] {
      return get_json("inferenceservice chat", ns)
                 .value("status", json::object())
                 .value("readyReplicas", 0) == 1;
    })) << ns;
  }
  EXPECT_EQ(nodes, (std::set<std::string>{ns_ + "-n1", ns_ + "-n2"}));
  EXPECT_TRUE(pods().empty());  // nothing in the home namespace
  // The agents cache each namespace's model under its own name.
  std::set<std::string> cached;
  for (int i : {1, 2})
    for (const std::string& ns : {a, b})
      if (fs::exists(root_ / fmt::format("{}-n{}", ns_, i) /
                     fmt::format("var/lib/loadstar/agent/models/{}_tiny/current", ns)))
        cached.insert(ns);
  EXPECT_EQ(cached, (std::set<std::string>{a, b}));

  // A third replica finds no GPU: the namespaces share one bookkeeping.
  apply(service_yaml(2), b);
  EXPECT_TRUE(eventually([&] {
    const json replicas = get_json("inferenceservice chat", b)
                              .value("status", json::object())
                              .value("replicaStatus", json::object());
    for (const auto& [name, replica] : replicas.items())
      if (replica.value("message", "").find("insufficient GPU") != std::string::npos) return true;
    return false;
  }));
  EXPECT_EQ(pods(b).size(), 1u);

  // Team a's token stages and reads team a's models on an agent; not team
  // b's, not the cache listing, not eviction.
  const std::string agent = fmt::format("127.{}.1.1", net_);
  auto call = [&](const std::string& method, const std::string& target, const std::string& body) {
    auto r = http::fetch(
        {.host = agent,
         .port = 8070,
         .method = method,
         .target = target,
         .body = body,
         .headers = {{"Authorization", "Bearer " + token_a}, {"Content-Type", "application/json"}},
         .timeout_s = 5});
    return r.ok() ? r->status : 0;
  };
  const std::string source =
      fmt::format(R"("source":"file://{}")", synth_model("k8s-tiny", "2MiB").string());
  EXPECT_EQ(call("GET", "/v1/models/" + a + "_tiny", ""), 200);
  EXPECT_EQ(call("POST", "/v1/stage", "{\"model\":\"" + a + "_tiny\"," + source + "}"), 202);
  EXPECT_EQ(call("POST", "/v1/stage", "{\"model\":\"" + b + "_tiny\"," + source + "}"), 401);
  EXPECT_EQ(call("POST", "/v1/stage", "{\"model\":\"tiny\"," + source + "}"), 401);
  EXPECT_EQ(call("GET", "/v1/models/" + b + "_tiny", ""), 401);
  EXPECT_EQ(call("GET", "/v1/models", ""), 401);
  EXPECT_EQ(call("DELETE", "/v1/models/" + a + "_tiny", ""), 401);
  // Nor is it the internal token anywhere else: the gateway of the home
  // namespace refuses it.
  const uint16_t gw_home = start_gateway("gateway-home");
  EXPECT_EQ(internal_get("127.0.0.1", gw_home, "/loadstar/v1/load").status, 200);
  auto home_load = http::fetch({.host = "127.0.0.1",
                                .port = gw_home,
                                .target = "/loadstar/v1/load",
                                .headers = {{"Authorization", "Bearer " + token_a}},
                                .timeout_s = 5});
  ASSERT_TRUE(home_load.ok());
  EXPECT_EQ(home_load->status, 401);

  // A Secret of that name that is not Loadstar's is left alone, and the
  // service says why it cannot start (on the GPU team b gives back).
  ASSERT_EQ(kubectl("-n " + b + " delete inferenceservice chat").first, 0);
  ASSERT_TRUE(eventually([&] { return pods(b).empty(); }, 60));
  const std::string c = add_namespace("c");
  ASSERT_EQ(
      kubectl("-n " + c + " create secret generic loadstar-internal --from-literal=token=mine")
          .first,
      0);
  processes_.erase("controller");
  start_controller("controller-2", {"--namespaces", a + "," + b + "," + c});
  apply(model_yaml() + "---\n" + service_yaml(1), c);
  auto c_message = [&] {
    const json replicas = get_json("inferenceservice chat", c)
                              .value("status", json::object())
                              .value("replicaStatus", json::object());
    for (const auto& [name, replica] : replicas.items()) return replica.value("message", "");
    return std::string();
  };
  EXPECT_TRUE(
      eventually([&] { return c_message().find("is not Loadstar's") != std::string::npos; }, 30))
      << c_message() << read_text(processes_["controller-2"]->log);
  EXPECT_EQ(base64_decode(get_json("secret loadstar-internal", c)["data"].value("token", "")),
            "mine");
  EXPECT_TRUE(pods(c).empty());
}

TEST_F(KubernetesTest, ATeamsGatewayPodWakesItsServiceFromZeroWithTheTeamsToken) {
  const std::string a = add_namespace("a");
  add_node(1, 1);
  start_controller("controller", {"--namespaces", a, "--no-leader-elect"});
  wait_output("controller", "controller reconciling");
  // The team's Secret is there before any replica: its gateway starts with it.
  ASSERT_TRUE(
      eventually([&] { return get_json("secret loadstar-internal", a).contains("data"); }, 30))
      << read_text(processes_["controller"]->log);
  const std::string gateway_ip = gateway_pod(1, a);
  ASSERT_FALSE(gateway_ip.empty());
  apply(model_yaml() + "---\n" +
            "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: chat}\n"
            "spec:\n  model: tiny\n  replicas: 1\n  minReplicas: 0\n  idleTimeout: 3s\n"
            "  warmNodes: 1\n  resources: {gpu: {count: 1}}\n",
        a);
  // Warm weights under the team's name, and no replica yet.
  const fs::path warm = root_ / fmt::format("{}-n1", ns_) /
                        fmt::format("var/lib/loadstar/agent/models/{}_tiny/current", a);
  EXPECT_TRUE(eventually([&] { return fs::exists(warm); }, 30))
      << read_text(processes_["controller"]->log);
  EXPECT_TRUE(pods(a).empty());
  // The gateway holds a request; the controller, polling the team's gateway
  // with the team's token, sees it and starts a replica, which answers.
  auto held = chat_request(gateway_ip, 8080, 60);
  ASSERT_TRUE(held.ok()) << held.error().message;
  EXPECT_EQ(held->status, 200) << held->body << read_text(processes_["controller"]->log);
  EXPECT_FALSE(held->header("x-loadstar-held-seconds").empty());
  // Idle, it goes back to zero (the team's load is read, not just its demand).
  EXPECT_TRUE(eventually([&] { return pods(a).empty(); }, 30))
      << read_text(processes_["controller"]->log);
  EXPECT_EQ(get_json("inferenceservice chat", a)
                .value("status", json::object())
                .value("desiredReplicas", -1),
            0);
}

}  // namespace
}  // namespace loadstar::testing
