#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "api/disaggregation.h"
#include "api/resources.h"
#include "api/schema.h"
#include "common/units.h"

namespace loadstar::api {
namespace {

constexpr const char* kValid = R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata:
  name: llama-8b
spec:
  source: file:///var/lib/loadstar/models/llama-8b
  size: 16Gi
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata:
  name: chat
spec:
  model: llama-8b
  replicas: 2
  engine:
    name: engine-sim
    args: ["--max-num-seqs", "64"]
  resources:
    gpu:
      count: 1
      type: A100-80GB
      fraction: 0.5
)";

constexpr const char* kGateway = R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: small}
spec:
  model: llama-8b
  replicas: 3
  minReplicas: 0
  idleTimeout: 90s
  routing:
    picker: scored
    scorers: {prefixCache: 4, inFlight: 1.5}
    sessionHeader: x-user
    hold: {maxRequests: 10, timeout: 30s}
    flowControl: {maxInFlightPerReplica: 4, maxKvCacheUsage: 0.8, maxQueued: 50, queueTimeout: 20s}
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  apiKeys:
    - {name: ci, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
    - {name: old, sha256: 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752, revoked: true}
  limits: {requestsPerMinute: 600, tokensPerMinute: 200000, maxConcurrentRequests: 8}
  tokenCost: "input_tokens / 3 + output_tokens"
  priority: -5
  sheddable: true
---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {name: chat-route}
spec:
  model: chat-latest
  backends:
    - {service: small, weight: 90}
    - {url: "http://10.0.0.7:8000/v1", model: gpt-4o-mini, apiKeyEnv: OPENAI_API_KEY, priority: 1}
)";

TEST(Resources, DecodesModelsAndServices) {
  auto resources = decode_resources(kValid, "q.yaml");
  ASSERT_TRUE(resources.ok()) << resources.error().message;
  ASSERT_EQ(resources->size(), 2u);
  const auto& model = std::get<Model>((*resources)[0]);
  EXPECT_EQ(model.spec.size_bytes, 16ull << 30);
  const auto& svc = std::get<InferenceService>((*resources)[1]);
  EXPECT_EQ(svc.spec.replicas, 2u);
  EXPECT_EQ(svc.spec.engine.args.size(), 2u);
  EXPECT_EQ(svc.spec.gpu.type, "A100-80GB");
  EXPECT_DOUBLE_EQ(*svc.spec.gpu.fraction, 0.5);
  EXPECT_TRUE(check_references(*resources).ok());
}

TEST(Resources, ErrorsNameFileLineAndField) {
  std::string text = kValid;
  text.replace(text.find("replicas: 2"), 11, "replica: 2");
  auto resources = decode_resources(text, "q.yaml");
  ASSERT_FALSE(resources.ok());
  EXPECT_EQ(resources.error().message,
            "q.yaml:15:3: InferenceService 'chat': spec.replica: unknown field (did you mean "
            "'replicas'?)");
}

TEST(Resources, ReportsEveryError) {
  const char* text = R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata:
  name: Chat_Bad
spec:
  model: m
  replicas: -1
  resources:
    gpu:
      count: 2
      fraction: 1.5
)";
  auto resources = decode_resources(text, "f.yaml");
  ASSERT_FALSE(resources.ok());
  const std::string& m = resources.error().message;
  EXPECT_NE(m.find("f.yaml:4:9: InferenceService 'Chat_Bad': metadata.name"), std::string::npos)
      << m;
  EXPECT_NE(m.find("f.yaml:7:13: InferenceService 'Chat_Bad': spec.replicas: must be a "
                   "non-negative integer"),
            std::string::npos)
      << m;
  EXPECT_NE(
      m.find("spec.resources.gpu.fraction: must be a number from 0.001 (one milli-GPU) to below 1"),
      std::string::npos)
      << m;
}

TEST(Resources, RejectsUnknownKindsVersionsAndDanglingModels) {
  auto r = decode_resources("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "p.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("apiVersion: 'v1' is not loadstar.dev/v1alpha1"),
            std::string::npos);
  EXPECT_NE(r.error().message.find("'Pod' is not one of Model, InferenceService"),
            std::string::npos);
  auto svc = decode_resources(
      "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: a}\nspec: "
      "{model: nope}\n",
      "s.yaml");
  ASSERT_TRUE(svc.ok()) << svc.error().message;
  Status refs = check_references(*svc);
  ASSERT_FALSE(refs.ok());
  EXPECT_EQ(refs.error().message, "InferenceService 'a': spec.model: no Model named 'nope'");
  auto bad_yaml = decode_resources("a: [1, 2\n", "y.yaml");
  ASSERT_FALSE(bad_yaml.ok());
  EXPECT_EQ(bad_yaml.error().message.rfind("y.yaml:", 0), 0u);
}

TEST(Units, ParsesSizesAndDurations) {
  EXPECT_EQ(*parse_bytes("2GiB"), 2ull << 30);
  EXPECT_EQ(*parse_bytes("512Mi"), 512ull << 20);
  EXPECT_EQ(*parse_bytes("80G"), 80000000000ull);
  EXPECT_EQ(*parse_bytes("1.5KiB"), 1536u);
  EXPECT_EQ(*parse_bytes("4096"), 4096u);
  EXPECT_FALSE(parse_bytes("12 parsecs").ok());
  EXPECT_FALSE(parse_bytes("GiB").ok());
  EXPECT_DOUBLE_EQ(*parse_duration("250ms"), 0.25);
  EXPECT_DOUBLE_EQ(*parse_duration("2m"), 120);
}

}  // namespace
}  // namespace loadstar::api

namespace loadstar::api {
namespace {

TEST(Resources, EncodeDecodeRoundTrips) {
  auto resources = decode_resources(std::string(kValid) + "---\n" + kGateway, "q.yaml");
  ASSERT_TRUE(resources.ok()) << resources.error().message;
  ASSERT_EQ(resources->size(), 5u);
  for (const Resource& r : *resources) {
    const std::string text = encode_resource(r);
    auto again = decode_resources(text, "encoded");
    ASSERT_TRUE(again.ok()) << again.error().message << "\n" << text;
    ASSERT_EQ(again->size(), 1u);
    EXPECT_EQ(encode_resource((*again)[0]), text);
  }
}

TEST(Resources, DecodesTenantsRoutesAndRouting) {
  auto resources = decode_resources(kGateway, "g.yaml");
  ASSERT_TRUE(resources.ok()) << resources.error().message;
  const auto& svc = std::get<InferenceService>((*resources)[0]).spec;
  EXPECT_EQ(svc.min_replicas, 0u);
  EXPECT_EQ(svc.idle_timeout_s, 90);
  EXPECT_EQ(svc.routing.prefix_cache_weight, 4);
  EXPECT_EQ(svc.routing.session_header, "x-user");
  EXPECT_EQ(svc.routing.hold_max_requests, 10u);
  EXPECT_EQ(svc.routing.max_in_flight_per_replica, 4u);
  EXPECT_FALSE(svc.routing.max_waiting_per_replica);
  EXPECT_EQ(svc.routing.max_kv_cache_usage, 0.8);
  EXPECT_EQ(svc.routing.max_queued, 50u);
  EXPECT_EQ(svc.routing.queue_timeout_s, 20);
  const auto& tenant = std::get<Tenant>((*resources)[1]).spec;
  EXPECT_EQ(tenant.priority, -5);
  EXPECT_TRUE(tenant.sheddable);
  ASSERT_EQ(tenant.api_keys.size(), 2u);
  EXPECT_TRUE(tenant.api_keys[1].revoked);
  EXPECT_EQ(tenant.tokens_per_minute, 200000u);
  const auto& route = std::get<Route>((*resources)[2]).spec;
  EXPECT_EQ(route.model, "chat-latest");
  EXPECT_EQ(route.backends[1].priority, 1u);
  EXPECT_EQ(kind_of((*resources)[2]), "Route");
}

TEST(Resources, GatewayConfigErrorsSayWhere) {
  auto bad_cost = decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {name: t}
spec:
  tokenCost: "input_tokens / + 3"
)",
                                   "t.yaml");
  ASSERT_FALSE(bad_cost.ok());
  EXPECT_NE(bad_cost.error().message.find(
                "t.yaml:5:14: Tenant 't': spec.tokenCost: column 16: expected a number"),
            std::string::npos)
      << bad_cost.error().message;
  auto bad = decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {name: t}
spec:
  apiKeys: [{name: k, sha256: sk-plaintext}]
---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {name: r}
spec:
  backends: [{service: a, url: "http://x"}, {url: "ftp://api.example.com"}]
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: s}
spec: {model: m, replicas: 1, minReplicas: 2, routing: {picker: random}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: f}
spec: {model: m, routing: {flowControl: {maxQueued: 10}}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: g}
spec: {model: m, routing: {flowControl: {maxInFlightPerReplica: 0, maxKvCacheUsage: 2}}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: z}
spec: {model: m, engine: {name: vllm, maxSequences: 0}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {name: p}
spec: {priority: high}
)",
                              "b.yaml");
  ASSERT_FALSE(bad.ok());
  const std::string& m = bad.error().message;
  EXPECT_NE(m.find("spec.apiKeys[0].sha256: must be 64 lower-case hex digits"), std::string::npos)
      << m;
  EXPECT_NE(m.find("spec.backends[0]: set exactly one of service"), std::string::npos) << m;
  EXPECT_NE(m.find("spec.backends[1].url: 'ftp://api.example.com' must be an http:// or https://"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("spec.minReplicas: 2 is more than spec.replicas (1)"), std::string::npos) << m;
  EXPECT_NE(m.find("spec.routing.picker: 'random' is not one of"), std::string::npos) << m;
  for (const char* expected :
       {"spec.routing.flowControl: needs a saturation threshold",
        "spec.routing.flowControl.maxInFlightPerReplica: must be at least 1",
        "spec.engine.maxSequences: must be at least 1",
        "spec.routing.flowControl.maxKvCacheUsage: must be a number from 0 to 1",
        "Tenant 'p': spec.priority: must be an integer"})
    EXPECT_NE(m.find(expected), std::string::npos) << expected << "\n---\n" << m;
  // Cross-resource: a route to a missing service, a model served twice.
  auto refs = decode_resources(std::string(kValid) + R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {name: chat}
spec:
  backends: [{service: nope}]
)",
                               "r.yaml");
  ASSERT_TRUE(refs.ok()) << refs.error().message;
  auto status = check_references(*refs);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.error().message.find("'chat' is already served by the InferenceService"),
            std::string::npos);
  EXPECT_NE(
      status.error().message.find("spec.backends[0].service: no InferenceService named 'nope'"),
      std::string::npos);
}

TEST(Resources, SynthModelsNeedASize) {
  auto r = decode_resources(
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {source: "
      "'synth://m'}\n",
      "m.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("spec.size: required for a synth:// model"), std::string::npos);
}

}  // namespace
}  // namespace loadstar::api

namespace loadstar::api {
namespace {

// Found by fuzz/resources_fuzz: yaml-cpp 0.7's LoadAll never returns on these.
TEST(Resources, MalformedStreamsThatHangYamlCppFailFast) {
  for (const char* text :
       {"!,\n", "!EEEEEEEEEEEEEEEEEEEEEEEE,EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE?A", ",\n"}) {
    auto r = decode_resources(text, "bad.yaml");
    EXPECT_FALSE(r.ok()) << text;
  }
}

TEST(Resources, DocumentsKeepTheirLineNumbers) {
  const char* text =
      "---\n"
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {name: a}\nspec: {source: "
      "'file:///m'}\n"
      "--- # second\n"
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {name: b}\nspec: {sourc: "
      "'file:///m'}\n";
  auto r = decode_resources(text, "two.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("two.yaml:10:8: Model 'b': spec.sourc: unknown field"),
            std::string::npos)
      << r.error().message;
}

}  // namespace
}  // namespace loadstar::api

namespace loadstar::api {
namespace {

constexpr const char* kScheduling = R"(apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {name: box-1}
spec:
  cpu: 96
  memory: 768Gi
  gpus:
    - {model: H100-80GB, memory: 80Gi, count: 8, migSlices: 7}
  topology: {nvlink: nvl-1, rack: r7, zone: eu-1a}
---
apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: research}
spec:
  deserved: {gpu: 4, cpu: 64, memory: 512Gi}
  limit: {gpu: 12}
  overQuotaWeight: 2
---
apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: vision}
spec: {parent: research, deserved: {gpu: 1.5}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: tagger, labels: {loadstar.dev/tenant: vision-team}}
spec:
  model: llama-8b
  queue: vision
  priority: 50
  preemptible: true
  resources: {cpu: 4, memory: 16Gi, gpu: {mig: 3g.40gb}}
)";

TEST(Resources, DecodesNodesQueuesAndSchedulingFields) {
  auto resources = decode_resources(std::string(kValid) + "---\n" + kScheduling, "s.yaml");
  ASSERT_TRUE(resources.ok()) << resources.error().message;
  ASSERT_EQ(resources->size(), 6u);
  const auto& node = std::get<Node>((*resources)[2]);
  EXPECT_EQ(node.spec.cpu, 96);
  EXPECT_EQ(node.spec.gpus.at(0).count, 8u);
  EXPECT_EQ(node.spec.gpus.at(0).mig_slices, 7u);
  EXPECT_EQ(node.spec.topology.at("rack"), "r7");
  const auto& queue = std::get<Queue>((*resources)[3]);
  EXPECT_EQ(*queue.spec.deserved.gpu, 4);
  EXPECT_EQ(*queue.spec.limit.gpu, 12);
  EXPECT_FALSE(queue.spec.limit.cpu);
  EXPECT_EQ(queue.spec.over_quota_weight, 2);
  const auto& svc = std::get<InferenceService>((*resources)[5]);
  EXPECT_EQ(svc.spec.queue, "vision");
  EXPECT_EQ(svc.spec.priority, 50);
  EXPECT_TRUE(svc.spec.preemptible);
  EXPECT_EQ(svc.spec.gpu.mig, "3g.40gb");
  EXPECT_EQ(svc.spec.gpu.count, 0u);
  EXPECT_EQ(svc.spec.memory_bytes, 16ull << 30);
  EXPECT_TRUE(check_references(*resources).ok()) << check_references(*resources).error().message;
  for (const Resource& r : *resources) {
    const std::string text = encode_resource(r);
    auto again = decode_resources(text, "encoded");
    ASSERT_TRUE(again.ok()) << again.error().message << "\n" << text;
    EXPECT_EQ(encode_resource((*again)[0]), text);
  }
}

TEST(Resources, SchedulingErrorsSayWhere) {
  auto r = decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {name: n}
spec:
  gpus: [{model: A100, count: 20, migSlice: 7}]
  topology: {row: r1}
---
apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: q}
spec: {deserved: {gpu: 8}, limit: {gpu: 4}, overQuotaWeight: -1}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: s}
spec: {model: m, priority: high, resources: {gpu: {mig: 3g, count: 2}}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: t}
spec: {model: m, resources: {gpu: {mig: 10g.40gb}}}
)",
                            "bad.yaml");
  ASSERT_FALSE(r.ok());
  const std::string& m = r.error().message;
  for (const char* expected :
       {"bad.yaml:5:35: Node 'n': spec.gpus[0].migSlice: unknown field (did you mean 'migSlices'?)",
        "Node 'n': spec.gpus: 20 GPUs; at most 16", "Node 'n': spec.topology.row: unknown field",
        "Queue 'q': spec.deserved.gpu: 8 is more than spec.limit.gpu (4)",
        "Queue 'q': spec.overQuotaWeight: must be a number from 0 to",
        "InferenceService 's': spec.priority: must be an integer",
        "spec.resources.gpu.mig: '3g' is not a MIG profile such as 1g.10gb or 3g.40gb",
        "spec.resources.gpu.mig: '10g.40gb' is not a MIG profile",
        "spec.resources.gpu.mig: a MIG slice is a whole request"})
    EXPECT_NE(m.find(expected), std::string::npos) << expected << "\n---\n" << m;
  auto refs = decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: q}
spec: {parent: nowhere}
)",
                               "q.yaml");
  ASSERT_TRUE(refs.ok());
  EXPECT_EQ(check_references(*refs).error().message,
            "Queue 'q': spec.parent: no Queue named 'nowhere'");
  auto loop = decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: a}
spec: {parent: b}
---
apiVersion: loadstar.dev/v1alpha1
kind: Queue
metadata: {name: b}
spec: {parent: a}
)",
                               "loop.yaml");
  ASSERT_TRUE(loop.ok());
  EXPECT_EQ(check_references(*loop).error().message,
            "Queue 'a': spec.parent: the parents form a loop\n"
            "Queue 'b': spec.parent: the parents form a loop");
}

}  // namespace
}  // namespace loadstar::api

namespace loadstar::api {
namespace {

TEST(Resources, DecodesAutoscalingAndSaysWhatIsWrong) {
  auto ok = decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: m
  replicas: 2
  minReplicas: 0
  autoscaling:
    maxReplicas: 8
    targets: {waitingPerReplica: 4, kvCacheUsage: 0.8, ttftP90: 500ms}
    slo: {ttft: 2s, attainment: 0.995}
    stableWindow: 2m
    panicWindow: 10s
    scaleDownStabilization: 5m
)",
                             "as.yaml");
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  const auto& svc = std::get<InferenceService>((*ok)[0]);
  ASSERT_TRUE(svc.spec.autoscaling);
  const AutoscalingSpec& a = *svc.spec.autoscaling;
  EXPECT_EQ(a.max_replicas, 8u);
  EXPECT_EQ(*a.waiting_per_replica, 4);
  EXPECT_EQ(*a.kv_cache_usage, 0.8);
  EXPECT_DOUBLE_EQ(*a.ttft_p90_s, 0.5);
  EXPECT_FALSE(a.in_flight_per_replica);
  EXPECT_EQ(a.stable_window_s, 120);
  EXPECT_EQ(a.scale_down_stabilization_s, 300);
  EXPECT_DOUBLE_EQ(*a.slo_ttft_s, 2);
  EXPECT_DOUBLE_EQ(a.slo_attainment, 0.995);
  auto again = decode_resources(encode_resource((*ok)[0]), "encoded");
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(std::get<InferenceService>((*again)[0]).spec.autoscaling, svc.spec.autoscaling);

  auto bad = decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: m
  replicas: 4
  autoscaling:
    maxReplicas: 2
    targets: {kvCacheUsage: 1.5, queue: 3}
    slo: {attainment: 1.2}
    panicWindow: 2m
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: zero}
spec:
  model: m
  autoscaling: {maxReplicas: 2, slo: {ttft: 0s}}
)",
                              "bad.yaml");
  ASSERT_FALSE(bad.ok());
  const std::string& m = bad.error().message;
  for (const char* expected :
       {"bad.yaml:8:18: InferenceService 'chat': spec.autoscaling.maxReplicas: 2 is less than "
        "spec.replicas (4)",
        "spec.autoscaling.targets.kvCacheUsage: must be a number from 0.01 to 1",
        "spec.autoscaling.targets.queue: unknown field", "spec.autoscaling.slo.ttft: required",
        "spec.autoscaling.slo.attainment: must be a number from 0.5 to 0.9999",
        "InferenceService 'zero': spec.autoscaling.slo.ttft: must be above 0",
        "spec.autoscaling.panicWindow: must not be longer than stableWindow"})
    EXPECT_NE(m.find(expected), std::string::npos) << expected << "\n---\n" << m;
}

// A document holding every field of a schema (values need not be valid: the
// decoder asks for its fields whatever it finds).
void probe_fields(const std::vector<Field>& fields, int indent, std::string& out) {
  const std::string pad(indent, ' ');
  for (const Field& field : fields) {
    out += pad + field.name + ":";
    switch (field.type) {
      case FieldType::kObject:
        out += "\n";
        probe_fields(field.fields, indent + 2, out);
        break;
      case FieldType::kList: {
        std::string item;
        probe_fields(field.fields, indent + 4, item);
        out += "\n" + pad + "  - " + item.substr(indent + 4);
        break;
      }
      case FieldType::kStrings:
        out += " [x]\n";
        break;
      case FieldType::kStringMap:
        out += " {a: b}\n";
        break;
      default:
        out += " 1\n";
    }
  }
}

constexpr const char* kDisaggregated = R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: m
  replicas: 2
  engine: {name: vllm, args: ["--block-size", "32"]}
  resources: {cpu: 4, gpu: {count: 2}}
  autoscaling: {maxReplicas: 4, targets: {kvCacheUsage: 0.7}}
  prefill:
    replicas: 3
    minReplicas: 0
    resources: {cpu: 8}
    args: ["--max-num-batched-tokens", "8192"]
    autoscaling: {maxReplicas: 6, targets: {ttftP90: 1s}}
    nonCachedTokens: 256
)";

TEST(Disaggregation, AServiceWithPrefillRunsAsTwoPools) {
  auto ok = decode_resources(kDisaggregated, "pd.yaml");
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  const auto& svc = std::get<InferenceService>((*ok)[0]);
  ASSERT_TRUE(svc.spec.prefill);
  EXPECT_EQ(svc.spec.prefill->non_cached_tokens, 256u);
  auto again = decode_resources(encode_resource((*ok)[0]), "encoded");
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(std::get<InferenceService>((*again)[0]).spec.prefill, svc.spec.prefill);

  const std::vector<InferenceService> roles = role_services(svc);
  ASSERT_EQ(roles.size(), 2u);
  const InferenceService& decode = roles[0];
  const InferenceService& prefill = roles[1];
  EXPECT_EQ(decode.metadata.name, "chat");
  EXPECT_EQ(kv_role(decode), "kv_both");
  EXPECT_EQ(pd_role(decode), "decode");
  EXPECT_EQ(decode.spec.replicas, 2u);
  EXPECT_EQ(prefill.metadata.name, "chat-prefill");
  EXPECT_EQ(served_name(prefill), "chat");  // engines serve the service's name
  EXPECT_EQ(kv_role(prefill), "kv_producer");
  EXPECT_EQ(pd_role(prefill), "prefill");
  EXPECT_EQ(prefill.spec.replicas, 3u);
  EXPECT_EQ(prefill.spec.min_replicas, 0u);
  EXPECT_EQ(prefill.spec.cpu, 8);
  EXPECT_EQ(prefill.spec.gpu.count, 2u);  // the service's, as not overridden
  ASSERT_TRUE(prefill.spec.autoscaling);
  EXPECT_EQ(prefill.spec.autoscaling->max_replicas, 6u);
  EXPECT_EQ(prefill.spec.engine.args,
            (std::vector<std::string>{"--block-size", "32", "--max-num-batched-tokens", "8192"}));
  // Its own expansion is itself: a prefill pool has no prefill pool.
  EXPECT_EQ(role_services(prefill).size(), 1u);
  // Not disaggregated: one pool, no role.
  InferenceService plain = svc;
  plain.spec.prefill.reset();
  EXPECT_EQ(role_services(plain).size(), 1u);
  EXPECT_EQ(kv_role(plain), "");
}

TEST(Disaggregation, PoolsThatDisagreeOnTheKvLayoutAreRefusedNamingTheField) {
  auto expect_error = [](const std::string& yaml, const std::string& needle) {
    auto r = decode_resources(yaml, "pd.yaml");
    ASSERT_FALSE(r.ok()) << yaml;
    EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
  };
  const std::string head = R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: m
  engine: {name: vllm, args: ["--block-size", "32"]}
  resources: {gpu: {count: 2}}
)";
  expect_error(head + "  prefill: {args: [\"--block-size=16\"]}\n",
               "pd.yaml:8:12: InferenceService 'chat': spec.prefill.args: --block-size 16 differs");
  expect_error(head + "  prefill: {resources: {gpu: {count: 1}}}\n",
               "spec.prefill.resources.gpu.count: 1 GPUs differ from the decode pool's 2");
  expect_error(head + "  prefill: {args: [\"--tensor-parallel-size\", \"4\"]}\n",
               "spec.prefill.args: --tensor-parallel-size 4 differs");
  expect_error(head + "  prefill: {args: [\"--kv-transfer-config\", \"{}\"]}\n",
               "spec.prefill.args: --kv-transfer-config is set by Loadstar");
  expect_error(head + "  prefill: {link: nvlink}\n", "spec.prefill.link: models engine-sim");
  expect_error(head + "  prefill: {link: carrier-pigeon}\n", "'carrier-pigeon' is not one of");
  expect_error(head + "  prefill: {replicas: 1, minReplicas: 2}\n", "spec.prefill.minReplicas");
  expect_error(R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: m
  engine: {name: llama.cpp}
  prefill: {}
)",
               "spec.prefill: llama.cpp cannot hand its KV cache to another server");
}

TEST(Disaggregation, APrefillPoolMayNotTakeAnotherServicesName) {
  auto r = decode_resources(R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: m}
spec: {source: "synth://m", size: 1MiB}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec: {model: m, prefill: {}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat-prefill}
spec: {model: m}
)",
                            "pd.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Status s = check_references(*r);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("its prefill pool runs as 'chat-prefill'"), std::string::npos)
      << s.error().message;
}

TEST(MultiNode, AReplicaSpanningNodesIsCheckedAgainstItsEngineAndShape) {
  auto decode = [](const std::string& engine, const std::string& extra) {
    return decode_resources(fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: big}}
spec:
  model: m
  engine: {{name: {}}}
  resources: {{gpu: {{count: 8}}}}
{})",
                                        engine, extra),
                            "mn.yaml");
  };
  auto ok = decode("sglang", "  multiNode: {size: 2, topology: nvlink}\n");
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  const auto& spec = std::get<InferenceService>(ok->front()).spec;
  ASSERT_TRUE(spec.multi_node.has_value());
  EXPECT_EQ(spec.multi_node->size, 2u);
  EXPECT_EQ(spec.multi_node->topology, "nvlink");
  auto again = decode_resources(encode_resource(ok->front()), "again.yaml");
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(std::get<InferenceService>(again->front()).spec.multi_node, spec.multi_node);
  auto expect_error = [&](const std::string& engine, const std::string& extra,
                          const std::string& needle) {
    auto r = decode(engine, extra);
    ASSERT_FALSE(r.ok()) << extra;
    EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
  };
  expect_error("llama.cpp", "  multiNode: {size: 2}\n",
               "mn.yaml:8:14: InferenceService 'big': spec.multiNode: llama.cpp replicas span one "
               "machine");
  expect_error("engine-sim", "  multiNode: {size: 1}\n", "spec.multiNode.size: must be 2 to 64");
  expect_error("engine-sim", "  multiNode: {topology: building}\n",
               "'building' is not one of nvlink, rack, spine, zone");
}

TEST(JobSpec, ASpecThatIsNotAMapIsAnErrorNotAnException) {
  // Found by fuzz/resources_fuzz: `spec:` a scalar made the decoder index it.
  for (const std::string& doc :
       {std::string("apiVersion: loadstar.dev/v1alpha1\nkind: Job\nmetadata: {name: t}\nspec:\n  "
                    "comphal\n"),
        std::string("apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: "
                    "b}\nspec:\n  model: m\n  multiNode: 2\n")}) {
    auto r = decode_resources(doc, "bad.yaml");
    ASSERT_FALSE(r.ok()) << doc;
    EXPECT_NE(r.error().message.find("must be a map"), std::string::npos) << r.error().message;
  }
}

TEST(JobSpec, ACheckpointVolumeIsAClaimOrAnAbsoluteNodeDirectoryAndRoundTrips) {
  auto decode = [](const std::string& checkpoint) {
    return decode_resources(
        "apiVersion: loadstar.dev/v1alpha1\nkind: Job\nmetadata: {name: t}\n"
        "spec:\n  command: [train]\n  checkpoint: " +
            checkpoint + "\n",
        "ck.yaml");
  };
  auto claim = decode("{claimName: ckpt}");
  ASSERT_TRUE(claim.ok()) << claim.error().message;
  EXPECT_EQ(std::get<Job>(claim->front()).spec.checkpoint_claim, "ckpt");
  auto again = decode_resources(encode_resource(claim->front()), "again.yaml");
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(std::get<Job>(again->front()).spec.checkpoint_claim, "ckpt");
  auto host = decode("{hostPath: /var/lib/ckpt}");
  ASSERT_TRUE(host.ok()) << host.error().message;
  EXPECT_EQ(std::get<Job>(host->front()).spec.checkpoint_host_path, "/var/lib/ckpt");
  for (const auto& [bad, says] : std::vector<std::pair<std::string, std::string>>{
           {"{}", "spec.checkpoint: one of claimName or hostPath"},
           {"{claimName: a, hostPath: /b}", "spec.checkpoint: one of claimName or hostPath"},
           {"{hostPath: relative}", "spec.checkpoint.hostPath: must be an absolute path"},
           {"{claimNme: a}", "did you mean 'claimName'?"}}) {
    auto r = decode(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().message.find(says), std::string::npos) << r.error().message;
  }
}

TEST(Schema, CrdsHoldExactlyTheFieldsTheDecoderReads) {
  ASSERT_EQ(kind_schemas().size(), 6u);  // every kind but Node
  for (const KindSchema& kind : kind_schemas()) {
    std::string doc = fmt::format(
        "apiVersion: loadstar.dev/v1alpha1\nkind: {}\n"
        "metadata: {{name: probe}}\nspec:\n",
        kind.kind);
    probe_fields(kind.spec, 2, doc);
    std::set<std::string> decoded, declared;
    for (const auto& p : decoder_field_paths(doc))
      if (p.starts_with("spec.")) decoded.insert(p);
    for (const auto& p : field_paths(kind)) declared.insert(p);
    for (const auto& p : decoded)
      EXPECT_TRUE(declared.count(p))
          << kind.kind << ": the decoder reads " << p << ", which the CRD schema lacks";
    for (const auto& p : declared)
      EXPECT_TRUE(decoded.count(p))
          << kind.kind << ": the CRD schema has " << p << ", which the decoder does not read";
  }
}

TEST(Schema, DeployCrdsAreGenerated) {
  // deploy/crds/ is what `loadstar crds` prints; regenerate it after a
  // schema change (`loadstar crds --dir deploy/crds`).
  for (const KindSchema& kind : kind_schemas()) {
    const std::string path =
        std::string(LOADSTAR_SOURCE_DIR) + "/deploy/crds/" + kind.plural + "." + kGroup + ".yaml";
    std::ifstream in(path);
    ASSERT_TRUE(in) << path;
    std::stringstream text;
    text << in.rdbuf();
    EXPECT_EQ(text.str(), crd_yaml(kind))
        << path << " is stale: run `loadstar crds --dir deploy/crds`";
  }
}

}  // namespace
}  // namespace loadstar::api
