// The Kubernetes client's pure parts: kubeconfig, the watch stream decoder
// the informer's cache (410 Gone, bookmarks, a stream cut mid-event) and
// the Lease rules of leader election.
#include <gtest/gtest.h>

#include "common/digest.h"
#include "kube/client.h"
#include "kube/informer.h"
#include "kube/leader.h"
#include "kube/objects.h"
#include "kube/scope.h"

namespace loadstar::kube {
namespace {

std::string kubeconfig(std::string_view user) {
  return fmt::format(R"(apiVersion: v1
kind: Config
clusters:
- name: c1
  cluster:
    server: https://127.0.0.1:16443
    certificate-authority-data: {}
- name: c2
  cluster: {{server: "http://10.0.0.5:8080"}}
users:
- name: u1
  user:
{}
contexts:
- name: one
  context: {{cluster: c1, user: u1, namespace: team-a}}
- name: two
  context: {{cluster: c2, user: u1}}
current-context: one
)",
                     base64_encode("-----BEGIN CERTIFICATE-----\nabc\n"), user);
}

TEST(Kubeconfig, CurrentContextWithTokenAndCa) {
  auto config = parse_kubeconfig(kubeconfig("    token: s3cr3t"), "kc");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->host, "127.0.0.1");
  EXPECT_EQ(config->port, 16443);
  EXPECT_TRUE(config->tls);
  EXPECT_EQ(config->ca_pem, "-----BEGIN CERTIFICATE-----\nabc\n");
  EXPECT_EQ(config->token, "s3cr3t");
  EXPECT_EQ(config->namespace_name, "team-a");
  auto two = parse_kubeconfig(kubeconfig("    token: t"), "kc", "two");
  ASSERT_TRUE(two.ok()) << two.error().message;
  EXPECT_FALSE(two->tls);
  EXPECT_EQ(two->port, 8080);
  EXPECT_EQ(two->namespace_name, "default");
}

TEST(Kubeconfig, ErrorsNameWhatIsWrong) {
  auto certs = parse_kubeconfig(kubeconfig("    client-certificate-data: eA=="), "kc");
  ASSERT_FALSE(certs.ok());
  EXPECT_NE(certs.error().message.find("client certificate"), std::string::npos);
  auto missing = parse_kubeconfig(kubeconfig("    token: t"), "kc", "three");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().message, "kc: context 'three' is not in contexts");
  EXPECT_FALSE(parse_kubeconfig("[1, 2", "kc").ok());
  // A named entry without its body (found by the fuzzer: yaml-cpp threw).
  auto bodiless = parse_kubeconfig(
      "clusters:\n- name: c1\n  cluwter: {server: https://h}\n"
      "contexts:\n- name: one\n  context: {cluster: c1}\ncurrent-context: one\n",
      "kc");
  ASSERT_FALSE(bodiless.ok());
  EXPECT_EQ(bodiless.error().message, "kc: cluster 'c1' is not in clusters");
}

TEST(WatchDecoder, EventsSplitAcrossReads) {
  WatchDecoder d;
  std::vector<std::string> seen;
  auto collect = [&](WatchEvent e) {
    seen.push_back(e.type + ":" + e.object["metadata"]["name"].get<std::string>());
    return true;
  };
  const std::string stream =
      R"({"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"5"}}})"
      "\n"
      R"({"type":"MODIFIED","object":{"metadata":{"name":"a","resourceVersion":"6"}}})"
      "\n";
  // Byte by byte: nothing is handed out before its line ends.
  for (char c : stream) ASSERT_TRUE(d.feed(std::string_view(&c, 1), collect).ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"ADDED:a", "MODIFIED:a"}));
  auto bad = d.feed("not json\n", collect);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kCorrupt);
}

json list_of(std::vector<std::pair<std::string, std::string>> items, std::string version) {
  json list = {{"metadata", {{"resourceVersion", version}}}, {"items", json::array()}};
  for (auto& [name, rv] : items)
    list["items"].push_back({{"metadata", {{"name", name}, {"resourceVersion", rv}}}});
  return list;
}

WatchEvent event(std::string type, std::string name, std::string rv) {
  return {type, {{"metadata", {{"name", name}, {"resourceVersion", rv}}}}};
}

TEST(ObjectCache, FollowsEventsAndBookmarks) {
  ObjectCache cache;
  cache.replace(list_of({{"a", "3"}, {"b", "4"}}, "10"));
  EXPECT_EQ(cache.resource_version(), "10");
  ASSERT_TRUE(cache.apply(event("ADDED", "c", "11")).ok());
  ASSERT_TRUE(cache.apply(event("DELETED", "a", "12")).ok());
  ASSERT_TRUE(cache.apply(event("BOOKMARK", "", "15")).ok());
  EXPECT_EQ(cache.resource_version(), "15");
  EXPECT_EQ(cache.objects().size(), 2u);
  EXPECT_TRUE(cache.objects().count("b") && cache.objects().count("c"));
}

TEST(ObjectCache, GoneAsksForARelist) {
  ObjectCache cache;
  cache.replace(list_of({{"a", "3"}}, "10"));
  WatchEvent gone{"ERROR",
                  {{"kind", "Status"}, {"code", 410}, {"message", "too old resource version"}}};
  Status st = cache.apply(gone);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kExpired);
  EXPECT_EQ(cache.resource_version(), "10");  // unchanged: the caller lists again
}

TEST(ObjectCache, ACutStreamResumesWithoutLosingAnEvent) {
  // The stream breaks in the middle of the second event: the first is
  // applied, the half line is dropped, and the cache's version is the first
  // event's, so a watch resumed from it is sent the second event again.
  ObjectCache cache;
  cache.replace(list_of({}, "10"));
  WatchDecoder d;
  auto apply = [&](WatchEvent e) { return cache.apply(e).ok(); };
  const std::string first =
      R"({"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"11"}}})"
      "\n";
  const std::string second =
      R"({"type":"ADDED","object":{"metadata":{"name":"b","resourceVersion":"12"}}})"
      "\n";
  ASSERT_TRUE(d.feed(first + second.substr(0, 30), apply).ok());
  EXPECT_EQ(cache.resource_version(), "11");
  EXPECT_EQ(cache.objects().size(), 1u);
  WatchDecoder resumed;  // a new connection from version 11
  ASSERT_TRUE(resumed.feed(second, apply).ok());
  EXPECT_EQ(cache.resource_version(), "12");
  EXPECT_EQ(cache.objects().size(), 2u);
}

TEST(ObjectCache, CorruptEventsDoNotThrow) {
  ObjectCache cache;
  cache.replace(json::array());  // not a list: empty
  EXPECT_TRUE(cache.objects().empty());
  // Fields of the wrong type read as absent.
  EXPECT_TRUE(cache.apply({"ADDED", json::parse(R"({"metadata": {"name": 5}})")}).ok());
  EXPECT_TRUE(cache.apply({"MODIFIED", json::parse(R"({"metadata": "x"})")}).ok());
  Status st = cache.apply({"ERROR", json::parse(R"({"code": "410", "message": 1})")});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInternal);
  EXPECT_EQ(cache.apply({"RENAMED", json::object()}).error().code, ErrorCode::kCorrupt);
}

TEST(Base64, RoundTrip) {
  for (std::string s : {"", "a", "ab", "abc", "abcd", "\x01\xff\x00z"}) {
    auto back = base64_decode(base64_encode(s));
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, s);
  }
  EXPECT_FALSE(base64_decode("abc").has_value());
  EXPECT_EQ(*base64_decode("aGVs\nbG8="), "hello");
}

TEST(Paths, Collections) {
  EXPECT_EQ(collection_path("v1", "ns", "pods"), "/api/v1/namespaces/ns/pods");
  EXPECT_EQ(collection_path("v1", "", "nodes"), "/api/v1/nodes");
  EXPECT_EQ(collection_path("loadstar.dev/v1alpha1", "ns", "models"),
            "/apis/loadstar.dev/v1alpha1/namespaces/ns/models");
}

TEST(NamespaceScope, NamesAreBareAtHomeAndQualifiedElsewhere) {
  auto scope = NamespaceScope::parse("loadstar", "team-a, team-b,loadstar", false);
  ASSERT_TRUE(scope.ok()) << scope.error().message;
  EXPECT_EQ(scope->namespaces(), (std::vector<std::string>{"loadstar", "team-a", "team-b"}));
  EXPECT_TRUE(scope->covers("team-b"));
  EXPECT_FALSE(scope->covers("team-c"));
  EXPECT_FALSE(scope->single());
  EXPECT_EQ(scope->describe(), "namespaces loadstar, team-a, team-b");
  EXPECT_EQ(scope->collections("v1", "pods"),
            (std::vector<std::string>{"/api/v1/namespaces/loadstar/pods",
                                      "/api/v1/namespaces/team-a/pods",
                                      "/api/v1/namespaces/team-b/pods"}));
  EXPECT_EQ(scope->qualify("loadstar", "chat"), "chat");
  EXPECT_EQ(scope->qualify("team-a", "chat"), "team-a/chat");
  EXPECT_EQ(scope->split("chat").key(), "loadstar/chat");
  EXPECT_EQ(scope->split("team-a/chat-0").namespace_name, "team-a");
  EXPECT_EQ(scope->split("team-a/chat-0").name, "chat-0");
  // An agent's cache names a model by one path segment, both ways.
  EXPECT_EQ(NamespaceScope::flat("team-a/llama"), "team-a_llama");
  EXPECT_EQ(NamespaceScope::unflat("team-a_llama"), "team-a/llama");
  EXPECT_EQ(NamespaceScope::unflat("llama"), "llama");

  auto all = NamespaceScope::parse("loadstar", "", true);
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->covers("anything"));
  EXPECT_EQ(all->collections("loadstar.dev/v1alpha1", "models"),
            (std::vector<std::string>{"/apis/loadstar.dev/v1alpha1/models"}));
  EXPECT_EQ(all->describe(), "all namespaces");
  EXPECT_TRUE(NamespaceScope("loadstar").single());
  EXPECT_EQ(NamespaceScope("loadstar").describe(), "namespace loadstar");

  EXPECT_FALSE(NamespaceScope::parse("loadstar", "team-a", true).ok());
  for (const char* bad : {"Team-A", "team_a", "-a", "a,,b", "a/b"}) {
    auto r = NamespaceScope::parse("loadstar", bad, false);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_NE(r.error().message.find("--namespaces"), std::string::npos);
    }
  }
}

TEST(Lease, MicroTimeRoundTrips) {
  const auto t = std::chrono::system_clock::time_point(std::chrono::microseconds(1795000000123456));
  const std::string text = micro_time(t);
  EXPECT_EQ(text, "2026-11-18T11:06:40.123456Z");
  EXPECT_EQ(parse_micro_time(text), t);
  // The server may write fewer digits; seconds only is a time too.
  EXPECT_EQ(parse_micro_time("2026-11-18T11:06:40.12Z"), t - std::chrono::microseconds(3456));
  EXPECT_EQ(parse_micro_time("2026-11-18T11:06:40Z"), t - std::chrono::microseconds(123456));
  EXPECT_FALSE(parse_micro_time("yesterday").has_value());
}

TEST(Lease, TakenOnlyWhenFreeOursOrUnrenewedForALeaseOnOurClock) {
  const json lease = json::parse(R"({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
      "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 3}})");
  const LeaseRecord r = lease_record(lease);
  EXPECT_EQ(r.holder, "a");
  EXPECT_EQ(r.transitions, 3u);
  EXPECT_EQ(r.lease_duration_s, 15);
  const auto seen = std::chrono::steady_clock::now();
  // A renewTime years ago on the holder's clock says nothing: what counts is
  // how long this candidate has seen the record unchanged.
  EXPECT_FALSE(may_acquire(r, "b", seen, seen + std::chrono::seconds(14)));
  EXPECT_TRUE(may_acquire(r, "b", seen, seen + std::chrono::seconds(16)));
  EXPECT_TRUE(may_acquire(r, "a", seen, seen));  // the holder renews
  LeaseRecord released = r;
  released.holder.clear();
  EXPECT_TRUE(may_acquire(released, "b", seen, seen));
  LeaseRecord renewed = r;
  renewed.renew_time = *renewed.renew_time + std::chrono::seconds(5);
  EXPECT_FALSE(same_record(r, renewed));
  EXPECT_TRUE(same_record(r, lease_record(lease)));
}

TEST(Pod, ReadsReadinessAddressPortsAndContainerStates) {
  const Pod pod = pod_from_json(json::parse(R"({
    "metadata": {"name": "chat-0", "labels": {"loadstar.dev/service": "chat", "n": 3},
                 "annotations": {"loadstar.dev/draining": "true"}},
    "spec": {"nodeName": "n1", "containers": [
      {"name": "engine", "ports": [{"name": "http", "containerPort": 8000},
                                   {"containerPort": 70000}]},
      {"name": "side", "ports": [{"name": "metrics", "containerPort": 9090}]}]},
    "status": {"phase": "Running", "podIP": "10.0.0.9",
      "conditions": [{"type": "Initialized", "status": "True"},
                     {"type": "Ready", "status": "False"}],
      "containerStatuses": [{"name": "engine", "state": {"waiting":
        {"reason": "CrashLoopBackOff", "message": "back-off"}}}],
      "initContainerStatuses": [{"name": "stage", "state": {"terminated": {"exitCode": 3}}}]}})"));
  EXPECT_EQ(pod.name, "chat-0");
  EXPECT_EQ(pod.labels.at("loadstar.dev/service"), "chat");
  EXPECT_FALSE(pod.labels.count("n"));  // not a string
  EXPECT_TRUE(pod.annotations.count(kDrainingAnnotation));
  EXPECT_EQ(pod.node_name, "n1");
  EXPECT_TRUE(pod.initialized);
  EXPECT_FALSE(pod.ready);
  EXPECT_FALSE(pod.serving());
  EXPECT_EQ(pod.port("engine", ""), 8000);  // 70000 is no port
  EXPECT_EQ(pod.port("", "metrics"), 9090);
  EXPECT_FALSE(pod.port("engine", "metrics").has_value());
  ASSERT_NE(pod.container("engine"), nullptr);
  EXPECT_EQ(pod.container("engine")->describe(), "engine waiting: CrashLoopBackOff back-off");
  EXPECT_EQ(pod.init_containers.at(0).describe(), "stage exited with code 3");
}

TEST(Pod, AnythingElseReadsAsAnEmptyPendingPod) {
  for (const char* text : {"null", "[]", "7", R"({"metadata": 1, "status": {"conditions": 2}})"}) {
    const Pod pod = pod_from_json(json::parse(text));
    EXPECT_EQ(pod.phase, "Pending") << text;
    EXPECT_TRUE(pod.name.empty());
    EXPECT_FALSE(pod.serving());
  }
}

TEST(Node, ReadsAddressReadinessAndAllocatableQuantities) {
  const Node node = node_from_json(json::parse(R"({
    "metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.product": "H100"}},
    "spec": {"unschedulable": true},
    "status": {"addresses": [{"type": "Hostname", "address": "gpu-1"},
                             {"type": "InternalIP", "address": "10.1.2.3"}],
               "conditions": [{"type": "Ready", "status": "True"}],
               "allocatable": {"cpu": "3500m", "memory": "16Gi", "nvidia.com/gpu": "8",
                               "bad": "lots", "num": 4}}})"));
  EXPECT_EQ(node.name, "gpu-1");
  EXPECT_EQ(node.label("nvidia.com/gpu.product"), "H100");
  EXPECT_EQ(node.internal_ip, "10.1.2.3");
  EXPECT_TRUE(node.ready);
  EXPECT_TRUE(node.unschedulable);
  EXPECT_DOUBLE_EQ(node.allocatable_or_zero("cpu"), 3.5);
  EXPECT_DOUBLE_EQ(node.allocatable_or_zero("memory"), 16.0 * (1ull << 30));
  EXPECT_DOUBLE_EQ(node.allocatable_or_zero("nvidia.com/gpu"), 8);
  EXPECT_FALSE(node.allocatable.count("bad"));
  EXPECT_FALSE(node.allocatable.count("num"));
  EXPECT_TRUE(node_from_json(json::parse("[1]")).name.empty());
}

// Replicas go where kube-scheduler would put a Pod that tolerates only the
// GPU taint: not on a node tainted not-ready, cordoned for maintenance or
// NoExecute; PreferNoSchedule is a preference, not a bar.
TEST(Node, TaintsThatRepelReplicas) {
  auto node = [](const char* taints) {
    return node_from_json(json::parse(fmt::format(R"({{"metadata": {{"name": "n"}},
      "spec": {{"taints": {}}}}})",
                                                  taints)));
  };
  EXPECT_FALSE(node("[]").repels_replicas());
  EXPECT_FALSE(node(R"([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                        {"key": "spot", "effect": "PreferNoSchedule"}])")
                   .repels_replicas());
  EXPECT_TRUE(node(R"([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}])")
                  .repels_replicas());
  EXPECT_TRUE(node(R"([{"key": "nvidia.com/gpu", "effect": "NoExecute"}])").repels_replicas());
  EXPECT_TRUE(
      node(R"([{"key": "maintenance", "value": "x", "effect": "NoSchedule"}])").repels_replicas());
  EXPECT_EQ(node(R"([{"key": "a", "value": "b", "effect": "NoSchedule"}, {"effect": "x"}])")
                .taints.size(),
            1u);
}

}  // namespace
}  // namespace loadstar::kube

namespace loadstar::kube {
namespace {

// What a DaemonSet's headless Service's Endpoints look like: ready and
// not-ready addresses, named ports, several subsets.
TEST(Endpoints, ReadyAddressesOnTheNamedPort) {
  const json endpoints = json::parse(R"({
    "kind": "Endpoints", "metadata": {"name": "loadstar-agent-peers", "namespace": "ls"},
    "subsets": [
      {"addresses": [{"ip": "10.0.0.2", "nodeName": "b"}, {"ip": "10.0.0.1", "nodeName": "a"}],
       "notReadyAddresses": [{"ip": "10.0.0.3", "nodeName": "c"}],
       "ports": [{"name": "metrics", "port": 9100}, {"name": "http", "port": 8070}]},
      {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"name": "http", "port": 8070}]},
      {"addresses": [{"ip": "10.0.0.9"}], "ports": [{"name": "other", "port": 1}]},
      {"addresses": [{"ip": "10.0.0.8"}], "ports": [{"name": "http", "port": 70000}]},
      "not an object", {"addresses": "not a list", "ports": [{"name": "http", "port": 8070}]}
    ]})");
  const auto ready = ready_endpoints(endpoints, "http");
  ASSERT_EQ(ready.size(), 2u);  // 10.0.0.1 (in two subsets: once) and 10.0.0.2
  EXPECT_EQ(ready[0].ip, "10.0.0.1");
  EXPECT_EQ(ready[0].node_name, "a");
  EXPECT_EQ(ready[1].ip, "10.0.0.2");
  EXPECT_EQ(ready[1].port, 8070);
  EXPECT_EQ(ready[1].node_name, "b");
  // Without a port name a subset needs exactly one port.
  const auto unnamed = ready_endpoints(endpoints);
  ASSERT_EQ(unnamed.size(), 2u);
  EXPECT_EQ(unnamed[0].ip, "10.0.0.1");
  EXPECT_EQ(unnamed[1].ip, "10.0.0.9");
  EXPECT_EQ(unnamed[1].port, 1);
  EXPECT_TRUE(ready_endpoints(json::parse(R"({"kind": "Endpoints"})")).empty());
  EXPECT_TRUE(ready_endpoints(json::parse("[1, 2]")).empty());
}

}  // namespace
}  // namespace loadstar::kube
