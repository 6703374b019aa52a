// The engine table: each engine's flags from a service's spec, the signals
// it feeds, and the Pods Kubernetes mode makes of it — checked against the
// engines' own Kubernetes deployment docs: vLLM v0.11.0
// docs/deployment/k8s.md ("Using Kubernetes": /dev/shm as a memory-backed
// emptyDir, nvidia.com/gpu limits, /health probes on the serving port) and
// SGLang v0.5.2 docker/k8s-sglang-service.yaml (a memory-backed /dev/shm,
// /health probes, --host 0.0.0.0-style listening on the Pod's address).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <tuple>

#include "api/disaggregation.h"
#include "api/resources.h"
#include "common/strings.h"
#include "controller/pod_runtime.h"
#include "engines/engines.h"
#include "gateway/engine_load.h"
#include "store/kube_store.h"

namespace loadstar {
namespace {

using kube::json;

bool has_pair(const std::vector<std::string>& v, const std::string& flag,
              const std::string& value) {
  for (size_t i = 0; i + 1 < v.size(); ++i)
    if (v[i] == flag && v[i + 1] == value) return true;
  return false;
}
bool has(const std::vector<std::string>& v, const std::string& flag) {
  return std::find(v.begin(), v.end(), flag) != v.end();
}

engines::LaunchSpec launch() {
  engines::LaunchSpec l;
  l.model = "/models/m";
  l.served_name = "chat";
  l.port = 8000;
  l.gpus = 4;
  l.context_length = 4096;
  l.max_sequences = 8;
  l.threads = 2;
  l.extra_args = {"--seed", "3"};
  return l;
}

// The line an engine's log says what went wrong in, as users see it in
// status: the parser's complaint, not its closing hint.
TEST(Strings, TheClosestCandidateIsWithinTwoEditsOrBegunByTheWord) {
  const std::vector<std::string> verbs = {"status", "history", "undo", "pause"};
  EXPECT_EQ(closest("stats", verbs), "status");
  EXPECT_EQ(closest("histroy", verbs), "history");
  EXPECT_EQ(closest("hist", verbs), "history");  // a prefix, three edits away
  EXPECT_EQ(closest("frobnicate", verbs), "");
  EXPECT_EQ(closest("u", verbs), "");  // one letter names nothing
}

TEST(Engines, TheLastErrorLineIsTheOneThatSaysWhatWentWrong) {
  EXPECT_EQ(last_error_line_of("loading\nThe following argument was not expected: --x\n"
                               "Run with --help for more information.\n"),
            "The following argument was not expected: --x");
  EXPECT_EQ(
      last_error_line_of("usage: vllm serve\nvllm serve: error: unrecognized arguments: --x\n"),
      "vllm serve: error: unrecognized arguments: --x");
  EXPECT_EQ(last_error_line_of("all good\nbye\n"), "bye");
  EXPECT_EQ(last_error_line_of(""), "");
  // An engine's bytes that are not UTF-8 reach a status as '?': the line
  // goes into JSON documents.
  EXPECT_EQ(last_error_line_of("fatal: caf\xe9 \xff\n"), "fatal: caf? ?");
  EXPECT_EQ(last_error_line_of(std::string(399, 'e') + "\xc3\xa9x"), std::string(399, 'e'));
}

// Text from outside clipped to a length stays UTF-8: cut at a character's
// start, invalid bytes (stray continuations, overlong forms, surrogates,
// truncated sequences) replaced one by one.
TEST(Strings, Utf8ClipCutsAtACharacterAndReplacesWhatIsNotUtf8) {
  EXPECT_EQ(utf8_clip("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 100),
            "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(utf8_clip("ab\xe2\x82\xac", 4), "ab");  // never half a character
  EXPECT_EQ(utf8_clip("ab\xe2\x82\xac", 5), "ab\xe2\x82\xac");
  EXPECT_EQ(utf8_clip("\x80"
                      "a\xc0\xaf"
                      "b\xed\xa0\x80"
                      "c\xe2\x82",
                      100),
            "?a??b???c??");
  EXPECT_EQ(utf8_clip("\xf4\x90\x80\x80", 100), "????");  // beyond U+10FFFF
  EXPECT_EQ(utf8_clip("abc", 0), "");
}

TEST(Engines, EveryEngineMapsTheSpecOntoItsOwnFlags) {
  const auto vllm = engines::find("vllm")->flags(launch());
  EXPECT_EQ(vllm.front(), "/models/m");  // `vllm serve MODEL`
  EXPECT_TRUE(has_pair(vllm, "--served-model-name", "chat"));
  EXPECT_TRUE(has_pair(vllm, "--port", "8000"));
  EXPECT_TRUE(has_pair(vllm, "--max-model-len", "4096"));
  EXPECT_TRUE(has_pair(vllm, "--max-num-seqs", "8"));
  EXPECT_TRUE(has_pair(vllm, "--tensor-parallel-size", "4"));
  EXPECT_TRUE(has(vllm, "--enable-prefix-caching"));

  const auto sglang = engines::find("sglang")->flags(launch());
  EXPECT_TRUE(has_pair(sglang, "--model-path", "/models/m"));
  EXPECT_TRUE(has_pair(sglang, "--context-length", "4096"));
  EXPECT_TRUE(has_pair(sglang, "--max-running-requests", "8"));
  EXPECT_TRUE(has_pair(sglang, "--tp-size", "4"));
  EXPECT_TRUE(has(sglang, "--enable-metrics"));  // off by default in SGLang
  EXPECT_FALSE(has(sglang, "--disable-radix-cache"));

  auto cpu = launch();
  cpu.gpus = 0;
  cpu.prefix_cache = false;
  const auto llama = engines::find("llama.cpp")->flags(cpu);
  EXPECT_TRUE(has_pair(llama, "--model", "/models/m"));
  EXPECT_TRUE(has_pair(llama, "--alias", "chat"));
  EXPECT_TRUE(has_pair(llama, "--parallel", "8"));
  EXPECT_TRUE(has_pair(llama, "--ctx-size", "32768"));  // 4096 per slot x 8 slots
  EXPECT_TRUE(has_pair(llama, "--threads", "2"));
  EXPECT_FALSE(has(llama, "--n-gpu-layers"));
  EXPECT_TRUE(has(llama, "--no-cache-prompt"));
  EXPECT_TRUE(has(llama, "--metrics"));   // its /metrics is opt-in
  EXPECT_TRUE(has(llama, "--no-webui"));  // nothing served but the API
  EXPECT_TRUE(has(llama, "--no-slots"));  // no other client's prompts

  const auto sim = engines::find("engine-sim")->flags(launch());
  EXPECT_TRUE(has_pair(sim, "--max-num-seqs", "8"));
  // Extra arguments come last, so they override.
  for (const auto& e : engines::all()) {
    const auto flags = e.flags(launch());
    ASSERT_GE(flags.size(), 2u) << e.name;
    EXPECT_EQ(flags[flags.size() - 2], "--seed") << e.name;
    EXPECT_EQ(flags.back(), "3") << e.name;
  }
}

// spec.lora as each engine takes adapters at start: vLLM's and engine-sim's
// --enable-lora/--lora-modules, SGLang's --lora-paths, llama.cpp's --lora
// files loaded at scale 0 (the gateway selects one per request by index).
TEST(Engines, LoraAdaptersBecomeEachEnginesOwnFlags) {
  engines::LaunchSpec l = launch();
  l.adapters = {{"sql", "/models/sql"}, {"poems", "/models/poems"}};
  l.max_loras = 2;
  l.max_cpu_loras = 4;
  l.max_lora_rank = 32;
  for (const char* name : {"vllm", "engine-sim"}) {
    const auto f = engines::find(name)->flags(l);
    EXPECT_TRUE(has(f, "--enable-lora")) << name;
    EXPECT_TRUE(has_pair(f, "--max-loras", "2")) << name;
    EXPECT_TRUE(has_pair(f, "--max-cpu-loras", "4")) << name;
    EXPECT_TRUE(has_pair(f, "--max-lora-rank", "32")) << name;
    EXPECT_TRUE(has_pair(f, "--lora-modules", "sql=/models/sql")) << name;
    EXPECT_TRUE(has(f, "poems=/models/poems")) << name;
  }
  const auto sglang = engines::find("sglang")->flags(l);
  EXPECT_TRUE(has_pair(sglang, "--lora-paths", "sql=/models/sql"));
  EXPECT_TRUE(has_pair(sglang, "--max-loras-per-batch", "2"));
  EXPECT_FALSE(has(engines::find("vllm")->flags(launch()), "--enable-lora"));
  const auto llama = engines::find("llama.cpp")->flags(l);
  EXPECT_TRUE(has_pair(llama, "--lora", "/models/sql"));
  EXPECT_TRUE(has_pair(llama, "--lora", "/models/poems"));
  EXPECT_TRUE(has(llama, "--lora-init-without-apply"));
  EXPECT_LT(std::find(llama.begin(), llama.end(), "/models/sql"),
            std::find(llama.begin(), llama.end(), "/models/poems"));  // the order is the index
  EXPECT_FALSE(has(engines::find("llama.cpp")->flags(launch()), "--lora-init-without-apply"));
  // On demand: LoRA on, no adapter at start.
  engines::LaunchSpec on_demand = launch();
  on_demand.lora_on_demand = true;
  const auto runtime = engines::find("vllm")->flags(on_demand);
  EXPECT_TRUE(has(runtime, "--enable-lora"));
  EXPECT_FALSE(has(runtime, "--lora-modules"));
  auto loading = [&](const std::string& engine, const std::string& value) {
    return api::decode_resources(
        "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: chat}\n"
        "spec:\n  model: m\n  engine: {name: " +
            engine + "}\n  lora: {adapters: [sql], loading: " + value + "}\n",
        "s.yaml");
  };
  EXPECT_TRUE(loading("vllm", "onDemand").ok());
  auto llama_on_demand = loading("llama.cpp", "onDemand");
  ASSERT_FALSE(llama_on_demand.ok());
  EXPECT_NE(llama_on_demand.error().message.find(
                "spec.lora.loading: llama.cpp loads its adapters at start only"),
            std::string::npos)
      << llama_on_demand.error().message;
  auto typo = loading("vllm", "lazy");
  ASSERT_FALSE(typo.ok());
  EXPECT_NE(typo.error().message.find("'lazy' is not one of start, onDemand"), std::string::npos);
  auto decode = [](const std::string& engine) {
    return api::decode_resources(
        "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: chat}\n"
        "spec:\n  model: m\n  engine: {name: " +
            engine + "}\n  lora: {adapters: [sql], maxLoras: 2, maxCpuLoras: 1}\n",
        "s.yaml");
  };
  auto refused = decode("vllm");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("spec.lora.maxCpuLoras: must be at least maxLoras (2)"),
            std::string::npos)
      << refused.error().message;
  auto synth = api::decode_resources(
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {name: sql}\n"
      "spec: {source: synth://x, size: 1Mi, adapterOf: m, rank: 0}\n",
      "m.yaml");
  ASSERT_FALSE(synth.ok());
  EXPECT_NE(synth.error().message.find("an adapter cannot be synth://"), std::string::npos);
  EXPECT_NE(synth.error().message.find("spec.rank: must be 1 to 4096"), std::string::npos);
}

TEST(Engines, TheSignalsEachEngineFeedsAreOnesTheGatewayReads) {
  for (const auto& e : engines::all()) {
    auto fed = [](const std::string& name) { return gateway::parse_engine_load(name + " 2\n"); };
    EXPECT_EQ(fed(e.metrics.running).running, 2) << e.name;
    if (!e.metrics.waiting.empty()) {
      EXPECT_EQ(fed(e.metrics.waiting).waiting, 2) << e.name;
    }
    if (!e.metrics.kv_usage.empty()) {
      EXPECT_EQ(fed(e.metrics.kv_usage).kv_usage, 2) << e.name;
    }
  }
  const auto* llama = engines::find("llama.cpp");
  EXPECT_EQ(engines::unfed_targets(*llama, {.waiting = true, .kv_cache = true}),
            (std::vector<std::string>{"kvCacheUsage: llama.cpp exports no KV-cache use"}));
  EXPECT_TRUE(engines::unfed_targets(*engines::find("vllm"), {true, true}).empty());
}

TEST(Engines, AnAutoscalingTargetTheEngineCannotFeedIsRejectedAtApply) {
  auto r = api::decode_resources(R"(
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: m
  engine: {name: llama.cpp}
  autoscaling: {maxReplicas: 3, targets: {kvCacheUsage: 0.8}}
)",
                                 "s.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("spec.autoscaling.targets.kvCacheUsage"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("llama.cpp exports no KV-cache use"), std::string::npos);
  auto unknown = api::decode_resources(R"(
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec: {model: m, engine: {name: tgi}}
)",
                                       "s.yaml");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message.find("'tgi' is not one of engine-sim, llama.cpp, vllm, sglang"),
            std::string::npos)
      << unknown.error().message;
}

TEST(Engines, AModelOfAnotherFormatIsRejectedByName) {
  auto r = api::decode_resources(R"(
apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: m}
spec: {source: "hf://Qwen/Qwen2.5-0.5B-Instruct"}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec: {model: m, engine: {name: llama.cpp}}
)",
                                 "s.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Status s = api::check_references(*r);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("llama.cpp serves gguf models, and Model 'm' is safetensors"),
            std::string::npos)
      << s.error().message;
}

// The Pod of one replica of `engine` with `gpus` whole GPUs.
json pod_of(const std::string& engine, uint32_t gpus, const std::string& source,
            const std::string& image = "", const std::string& model_version = "",
            bool kv_events = false) {
  api::InferenceService svc;
  svc.metadata.name = "chat";
  svc.spec.model = "m";
  svc.spec.engine.name = engine;
  svc.spec.engine.image = image;
  svc.spec.engine.max_sequences = 16;
  svc.spec.engine.kv_events = kv_events;
  api::Model model;
  model.metadata.name = "m";
  model.spec.source = source;
  model.spec.format = engine == "llama.cpp" ? "gguf" : "safetensors";
  controller::EngineLaunch l;
  l.replica = "chat-0";
  l.service = &svc;
  l.model = &model;
  l.model_version = model_version;
  for (uint32_t i = 0; i < gpus; ++i) l.shares.push_back({static_cast<int>(i), 1000, 0});
  controller::PodRuntimeOptions options;
  options.engine_images["sglang"] = "registry.local/sglang:pinned";
  return controller::replica_pod(l, options, "ns", "");
}

const json* volume(const json& pod, const std::string& name) {
  for (const auto& v : pod["spec"]["volumes"])
    if (v["name"] == name) return &v;
  return nullptr;
}

TEST(EnginePods, VllmRunsFromItsImageWithShmGpusProbesAndNoDownloads) {
  const json pod = pod_of("vllm", 2, "hf://Qwen/Qwen2.5-0.5B-Instruct");
  const json& c = pod["spec"]["containers"][0];
  EXPECT_EQ(c["image"], "vllm/vllm-openai:v0.11.0");
  EXPECT_EQ(c["command"], json({"vllm", "serve"}));
  const auto args = c["args"].get<std::vector<std::string>>();
  EXPECT_EQ(args.front(), "/var/lib/loadstar/models/m/current");
  EXPECT_TRUE(has_pair(args, "--tensor-parallel-size", "2"));
  EXPECT_TRUE(has_pair(args, "--host", "$(POD_IP)"));
  EXPECT_EQ(c["resources"]["limits"]["nvidia.com/gpu"], "2");
  // As vLLM's k8s.md: /dev/shm is a memory-backed emptyDir.
  const json* shm = volume(pod, "shm");
  ASSERT_NE(shm, nullptr);
  EXPECT_EQ((*shm)["emptyDir"]["medium"], "Memory");
  bool shm_mounted = false, models_read_only = false;
  for (const auto& m : c["volumeMounts"]) {
    shm_mounted |= m["name"] == "shm" && m["mountPath"] == "/dev/shm";
    models_read_only |= m["name"] == "models" && m.value("readOnly", false);
  }
  EXPECT_TRUE(shm_mounted);
  EXPECT_TRUE(models_read_only);
  bool offline = false;
  for (const auto& e : c["env"]) offline |= e["name"] == "HF_HUB_OFFLINE" && e["value"] == "1";
  EXPECT_TRUE(offline);
  // A multi-minute load fits the startup probe; readiness and liveness on
  // /health after it (k8s.md probes /health on the serving port).
  for (const char* probe : {"startupProbe", "readinessProbe", "livenessProbe"}) {
    EXPECT_EQ(c[probe]["httpGet"]["path"], "/health") << probe;
    EXPECT_EQ(c[probe]["httpGet"]["port"], 8000) << probe;
  }
  EXPECT_GE(c["startupProbe"]["periodSeconds"].get<int>() *
                c["startupProbe"]["failureThreshold"].get<int>(),
            1800);
}

// spec.prefill with vLLM: the two pools' Pods as llm-d's P/D guide runs
// them (guides/pd-disaggregation): NixlConnector, kv_producer for prefill
// and kv_both for decode, the side channel host set to the Pod's IP, the
// llm-d.ai/role label; a prefill Pod serves and belongs to its service.
TEST(EnginePods, DisaggregatedPoolsRunAsLlmdsPrefillAndDecodePods) {
  auto r = api::decode_resources(R"(
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec: {model: m, engine: {name: vllm}, prefill: {replicas: 2}}
)",
                                 "pd.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto roles = api::role_services(std::get<api::InferenceService>((*r)[0]));
  ASSERT_EQ(roles.size(), 2u);
  api::Model model;
  model.metadata.name = "m";
  model.spec.source = "hf://Qwen/Qwen2.5-0.5B-Instruct";
  auto pod_for = [&](const api::InferenceService& svc) {
    controller::EngineLaunch l;
    l.replica = svc.metadata.name + "-0";
    l.service = &svc;
    l.model = &model;
    l.shares.push_back({0, 1000, 0});
    return controller::replica_pod(l, controller::PodRuntimeOptions{}, "ns", "uid-of-chat");
  };
  for (const auto& [svc, role, kv_role] : {std::tuple{&roles[0], "decode", "kv_both"},
                                           std::tuple{&roles[1], "prefill", "kv_producer"}}) {
    const json pod = pod_for(*svc);
    const json& c = pod["spec"]["containers"][0];
    const auto args = c["args"].get<std::vector<std::string>>();
    EXPECT_TRUE(has_pair(args, "--served-model-name", "chat")) << role;
    auto flag = std::find(args.begin(), args.end(), "--kv-transfer-config");
    ASSERT_NE(flag, args.end()) << role;
    EXPECT_EQ(json::parse(*(flag + 1)),
              json({{"kv_connector", "NixlConnector"}, {"kv_role", kv_role}}))
        << role;
    bool side_channel = false;
    for (const auto& e : c["env"])
      side_channel |= e["name"] == "VLLM_NIXL_SIDE_CHANNEL_HOST" &&
                      e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP";
    EXPECT_TRUE(side_channel) << role;
    EXPECT_EQ(c["ports"][1], json({{"name", "nixl"}, {"containerPort", 5600}})) << role;
    EXPECT_EQ(pod["metadata"]["labels"]["llm-d.ai/role"], role);
    EXPECT_EQ(pod["metadata"]["labels"]["loadstar.dev/service"], svc->metadata.name);
    EXPECT_EQ(pod["metadata"]["ownerReferences"][0]["name"], "chat") << role;
  }
  // Not disaggregated: none of it.
  const json plain = pod_of("vllm", 1, "hf://Qwen/Qwen2.5-0.5B-Instruct");
  EXPECT_FALSE(plain["metadata"]["labels"].contains("llm-d.ai/role"));
  const auto plain_args = plain["spec"]["containers"][0]["args"].get<std::vector<std::string>>();
  EXPECT_EQ(std::count(plain_args.begin(), plain_args.end(), "--kv-transfer-config"), 0);
}

// spec.engine.kvEvents: the engine publishes vLLM's KV events on a named
// port the gateways find on the Pod (vLLM's flag and port for vLLM and
// SGLang too); engines that do not publish them refuse it.
TEST(EnginePods, KvEventsArePublishedOnANamedPort) {
  const json pod = pod_of("engine-sim", 0, "synth://m", "", "", true);
  const json& c = pod["spec"]["containers"][0];
  const auto args = c["args"].get<std::vector<std::string>>();
  auto flag = std::find(args.begin(), args.end(), "--kv-events-config");
  ASSERT_NE(flag, args.end());
  const json config = json::parse(*(flag + 1));
  EXPECT_EQ(config["enable_kv_cache_events"], true);
  EXPECT_EQ(config["publisher"], "zmq");
  EXPECT_EQ(config["endpoint"], "tcp://*:5557");
  EXPECT_EQ(c["ports"], json::parse(R"([{"name": "http", "containerPort": 8000},
                                        {"name": "kv-events", "containerPort": 5557}])"));
  // Off by default.
  const json plain = pod_of("engine-sim", 0, "synth://m");
  EXPECT_EQ(plain["spec"]["containers"][0]["ports"].size(), 1u);
  const auto plain_args = plain["spec"]["containers"][0]["args"].get<std::vector<std::string>>();
  EXPECT_EQ(std::count(plain_args.begin(), plain_args.end(), "--kv-events-config"), 0);
  const json vllm = pod_of("vllm", 1, "hf://Qwen/Qwen2.5-0.5B-Instruct", "", "", true);
  const auto vllm_args = vllm["spec"]["containers"][0]["args"].get<std::vector<std::string>>();
  flag = std::find(vllm_args.begin(), vllm_args.end(), "--kv-events-config");
  ASSERT_NE(flag, vllm_args.end());
  EXPECT_EQ(json::parse(*(flag + 1))["endpoint"], "tcp://*:5557");
  EXPECT_EQ(vllm["spec"]["containers"][0]["ports"][1]["name"], "kv-events");
  // SGLang: the same flag and port, its config without vLLM's enable field.
  const json sglang = pod_of("sglang", 1, "hf://Qwen/Qwen2.5-0.5B-Instruct", "", "", true);
  const auto sglang_args = sglang["spec"]["containers"][0]["args"].get<std::vector<std::string>>();
  flag = std::find(sglang_args.begin(), sglang_args.end(), "--kv-events-config");
  ASSERT_NE(flag, sglang_args.end());
  const json sglang_config = json::parse(*(flag + 1));
  EXPECT_EQ(sglang_config["publisher"], "zmq");
  EXPECT_EQ(sglang_config["endpoint"], "tcp://*:5557");
  EXPECT_FALSE(sglang_config.contains("enable_kv_cache_events"));
  EXPECT_EQ(sglang["spec"]["containers"][0]["ports"][1]["name"], "kv-events");
  for (const char* engine : {"llama.cpp"}) {
    auto r = api::decode_resources(fmt::format(R"(
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec: {{model: m, engine: {{name: {}, kvEvents: true}}}}
)",
                                               engine),
                                   "s.yaml");
    ASSERT_FALSE(r.ok()) << engine;
    EXPECT_NE(r.error().message.find("spec.engine.kvEvents"), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("engines that do: engine-sim, vllm, sglang"),
              std::string::npos)
        << r.error().message;
  }
}

TEST(EnginePods, SglangAndLlamaCppImagesAndModelPaths) {
  const json sglang = pod_of("sglang", 1, "hf://Qwen/Qwen2.5-0.5B-Instruct");
  const json& s = sglang["spec"]["containers"][0];
  EXPECT_EQ(s["image"], "registry.local/sglang:pinned");  // per-engine override
  EXPECT_EQ(s["command"], json({"python3", "-m", "sglang.launch_server"}));
  EXPECT_NE(volume(sglang, "shm"), nullptr);
  EXPECT_FALSE(has(s["args"].get<std::vector<std::string>>(), "--tp-size"));  // one GPU

  const json llama = pod_of("llama.cpp", 0, "hf://org/repo/tiny-q4.gguf", "my/llama:1");
  const json& l = llama["spec"]["containers"][0];
  EXPECT_EQ(l["image"], "my/llama:1");  // the service's own image wins
  EXPECT_EQ(l["command"], json({"/app/llama-server"}));
  EXPECT_TRUE(has_pair(l["args"].get<std::vector<std::string>>(), "--model",
                       "/var/lib/loadstar/models/m/current/tiny-q4.gguf"));
  EXPECT_EQ(volume(llama, "shm"), nullptr);
  EXPECT_FALSE(l.contains("resources"));  // CPU only: no GPU limit

  EXPECT_EQ(controller::gguf_name("hf://org/repo@v2/q4/tiny-q4.gguf"), "q4/tiny-q4.gguf");
  EXPECT_EQ(controller::gguf_name("https://host/m/tiny.gguf"), "tiny.gguf");
  EXPECT_EQ(controller::gguf_name("synth://m"), "model.gguf");

  const json sim = pod_of("engine-sim", 1, "synth://m");
  EXPECT_EQ(sim["spec"]["containers"][0]["command"], json({"loadstar", "engine-sim"}));
  EXPECT_EQ(sim["spec"]["containers"][0]["image"], "loadstar:0.1.0");
}

// A MIG slice is asked for from the device plugin in the form NVIDIA's plugin
// advertises it (mixed strategy), beside whole GPUs.
TEST(EnginePods, AMigShareAsksForItsMigResource) {
  api::InferenceService svc;
  svc.metadata.name = "chat";
  svc.spec.model = "m";
  svc.spec.engine.name = "vllm";
  svc.spec.gpu.mig = "3g.40gb";
  api::Model model;
  model.metadata.name = "m";
  model.spec.source = "hf://org/m";
  controller::EngineLaunch l;
  l.replica = "chat-0";
  l.service = &svc;
  l.model = &model;
  l.shares.push_back({0, 0, 3});
  const json pod = controller::replica_pod(l, controller::PodRuntimeOptions{}, "ns", "");
  const json& limits = pod["spec"]["containers"][0]["resources"]["limits"];
  EXPECT_EQ(limits.value("nvidia.com/mig-3g.40gb", ""), "1") << limits;
  EXPECT_FALSE(limits.contains("nvidia.com/gpu"));
}

// A replica whose revision names a model version reads that version's
// directory, staged by exactly that version; without one, `current`.
TEST(EnginePods, AVersionedReplicaReadsItsOwnVersionDirectory) {
  const json unversioned = pod_of("vllm", 1, "file:///models/m");
  EXPECT_NE(unversioned["spec"]["containers"][0].dump().find("/var/lib/loadstar/models/m/current"),
            std::string::npos);
  const json pod = pod_of("vllm", 1, "hf://org/m", "", "0123456789abcdef");
  const std::string engine = pod["spec"]["containers"][0].dump();
  EXPECT_NE(engine.find("/var/lib/loadstar/models/m/0123456789abcdef"), std::string::npos)
      << engine;
  EXPECT_EQ(engine.find("/current"), std::string::npos) << engine;
  const json& args = pod["spec"]["initContainers"][0]["args"];
  auto at = std::find(args.begin(), args.end(), "--version");
  ASSERT_NE(at, args.end()) << args;
  EXPECT_EQ(*(at + 1), "0123456789abcdef");
}

// LoRA adapters in a Pod: each staged by its own init container under the
// agent's flat name, served by the engine under its name in the namespace.
TEST(EnginePods, AdaptersAreStagedByInitContainersAndServedByTheirNames) {
  api::InferenceService svc;
  svc.metadata.name = "chat";
  svc.spec.engine.name = "vllm";
  svc.spec.lora = api::LoraSpec{.adapters = {"team/sql"}, .max_loras = 2};
  api::Model model{{"team_m"}, {"hf://org/m", "safetensors", {}}};
  api::Model adapter{{"team_sql"}, {"hf://org/sql", "safetensors", {}}};
  controller::EngineLaunch l;
  l.replica = "chat-0";
  l.service = &svc;
  l.model = &model;
  l.adapters = {adapter};
  const json spec = controller::replica_pod(l, controller::PodRuntimeOptions{}, "team", "")["spec"];
  ASSERT_EQ(spec["initContainers"].size(), 2u);
  const json& stage = spec["initContainers"][1];
  EXPECT_EQ(stage["name"], "stage-lora-0");
  EXPECT_EQ(stage["args"][1], "team_sql");
  EXPECT_EQ(stage["args"][3], "hf://org/sql");
  const json& args = spec["containers"][0]["args"];
  EXPECT_NE(std::find(args.begin(), args.end(), "sql=/var/lib/loadstar/models/team_sql/current"),
            args.end())
      << args;
  EXPECT_NE(std::find(args.begin(), args.end(), "--enable-lora"), args.end());
}

// Under NVIDIA's time-slicing the node advertises each GPU `replicas` times:
// the inventory counts physical GPUs (GPU feature discovery's labels).
TEST(EnginePods, ATimeSlicedNodeCountsItsPhysicalGpus) {
  auto node = [](const json& labels, const std::string& advertised) {
    return json{
        {"metadata", {{"name", "n1"}, {"labels", labels}}},
        {"status",
         {{"allocatable", {{"cpu", "8"}, {"memory", "64Gi"}, {"nvidia.com/gpu", advertised}}},
          {"conditions", {{{"type", "Ready"}, {"status", "True"}}}}}}};
  };
  auto gpus = [](const api::Node& n) { return n.spec.gpus.empty() ? 0u : n.spec.gpus[0].count; };
  EXPECT_EQ(gpus(store::node_from_kubernetes(node(json::object(), "2"))), 2u);
  EXPECT_EQ(gpus(store::node_from_kubernetes(node({{"nvidia.com/gpu.replicas", "4"}}, "8"))), 2u);
  EXPECT_EQ(gpus(store::node_from_kubernetes(
                node({{"nvidia.com/gpu.replicas", "4"}, {"nvidia.com/gpu.count", "2"}}, "8"))),
            2u);
  EXPECT_EQ(store::node_from_kubernetes(node({{"nvidia.com/gpu.replicas", "4"}}, "8"))
                .spec.gpus[0]
                .replicas,
            4u);
  EXPECT_EQ(store::node_from_kubernetes(node(json::object(), "2")).spec.gpus[0].replicas, 1u);
}

// What the kubelet is asked for must match what the scheduler placed: on a
// time-sliced node a fraction of a card is one advertised replica and a
// whole card all of its replicas; elsewhere a fraction asks the plugin for
// nothing (bookkeeping only) and a whole card for one.
TEST(EnginePods, SharesAreAskedForInTheTimeSlicedPluginsUnits) {
  api::InferenceService svc;
  svc.metadata.name = "chat";
  svc.spec.model = "m";
  svc.spec.engine.name = "vllm";
  api::Model model;
  model.metadata.name = "m";
  model.spec.source = "hf://org/m";
  auto gpus_asked = [&](std::vector<controller::DeviceShare> shares, uint32_t replicas) {
    controller::EngineLaunch l;
    l.replica = "chat-0";
    l.service = &svc;
    l.model = &model;
    l.shares = std::move(shares);
    l.device_replicas = replicas;
    const json pod = controller::replica_pod(l, controller::PodRuntimeOptions{}, "ns", "");
    const json& c = pod["spec"]["containers"][0];
    return c.contains("resources") ? c["resources"]["limits"].value("nvidia.com/gpu", "none")
                                   : std::string("none");
  };
  EXPECT_EQ(gpus_asked({{0, 500, 0}}, 4), "1");
  EXPECT_EQ(gpus_asked({{0, 1000, 0}}, 4), "4");
  EXPECT_EQ(gpus_asked({{0, 1000, 0}, {1, 1000, 0}}, 4), "8");
  EXPECT_EQ(gpus_asked({{0, 500, 0}}, 1), "none");
  EXPECT_EQ(gpus_asked({{0, 1000, 0}}, 1), "1");
  // Created bound to the node the scheduler chose (no Binding afterwards),
  // tolerating the GPU nodes' taint and no other.
  controller::EngineLaunch l;
  l.replica = "chat-0";
  l.service = &svc;
  l.model = &model;
  l.node = "gpu-7";
  const json spec = controller::replica_pod(l, controller::PodRuntimeOptions{}, "ns", "")["spec"];
  EXPECT_EQ(spec["nodeName"], "gpu-7");
  EXPECT_EQ(
      spec["tolerations"],
      json::parse(R"([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])"));
}

}  // namespace
}  // namespace loadstar

namespace loadstar {
namespace {

TEST(Engines, AMultiNodeReplicasNodesGetTheirRankAndTheLeadersAddress) {
  engines::LaunchSpec l;
  l.model = "/models/m";
  l.served_name = "chat";
  l.gpus = 8;
  l.nnodes = 2;
  l.master_addr = "10.0.0.5";
  l.master_port = 20000;
  // SGLang's LeaderWorkerSet example: the same command on every node, tensor
  // parallel across all of them.
  const auto sglang = engines::find("sglang")->flags(l);
  EXPECT_TRUE(has_pair(sglang, "--tp-size", "16"));
  EXPECT_TRUE(has_pair(sglang, "--nnodes", "2"));
  EXPECT_TRUE(has_pair(sglang, "--node-rank", "0"));
  EXPECT_TRUE(has_pair(sglang, "--dist-init-addr", "10.0.0.5:20000"));
  // engine-sim takes vLLM's native names; only the others are headless.
  const auto leader = engines::find("engine-sim")->flags(l);
  EXPECT_TRUE(has_pair(leader, "--nnodes", "2"));
  EXPECT_FALSE(has(leader, "--headless"));
  l.node_rank = 1;
  const auto node = engines::find("engine-sim")->flags(l);
  EXPECT_TRUE(has_pair(node, "--node-rank", "1"));
  EXPECT_TRUE(has_pair(node, "--master-addr", "10.0.0.5"));
  EXPECT_TRUE(has_pair(node, "--master-port", "20000"));
  EXPECT_TRUE(has(node, "--headless"));
}

std::vector<std::string> args_of(const json& pod) {
  return pod["spec"]["containers"][0]["args"].get<std::vector<std::string>>();
}

std::string env_of(const json& pod, const std::string& name) {
  for (const auto& e : pod["spec"]["containers"][0]["env"])
    if (e["name"] == name) return e.value("value", "(from field)");
  return "(none)";
}

TEST(Engines, AMultiNodeReplicasPodsInKubernetesAreItsLeaderAndHeadlessNodesOnTheirOwnNodes) {
  api::InferenceService svc;
  svc.metadata.name = "big";
  svc.spec.model = "m";
  svc.spec.engine.name = "sglang";
  svc.spec.multi_node = api::MultiNodeSpec{.size = 3, .topology = "rack"};
  api::Model model;
  model.metadata.name = "m";
  model.spec.source = "hf://org/m";
  controller::EngineLaunch l;
  l.replica = "big-0";
  l.revision = "abc";
  l.service = &svc;
  l.model = &model;
  l.node = "gpu-1";
  l.shares = {{0, 1000, 0}, {1, 1000, 0}};
  l.members = {{"gpu-2", "", {{0, 1000, 0}, {1, 1000, 0}}},
               {"gpu-3", "", {{4, 1000, 0}, {5, 1000, 0}}}};
  const controller::PodRuntimeOptions options;
  const json leader = controller::replica_pod(l, options, "ns", "uid");
  const json node2 = controller::replica_pod(l, options, "ns", "uid", 2);
  // The leader is the replica's Pod: routed to (component engine), probed,
  // its group address its own Pod IP.
  EXPECT_EQ(leader["metadata"]["name"], "big-0");
  EXPECT_EQ(leader["metadata"]["labels"]["app.kubernetes.io/component"], "engine");
  EXPECT_EQ(leader["metadata"]["labels"]["loadstar.dev/group-size"], "3");
  EXPECT_TRUE(leader["spec"]["containers"][0].contains("readinessProbe"));
  EXPECT_TRUE(has_pair(args_of(leader), "--dist-init-addr", "$(POD_IP):20000"));
  EXPECT_TRUE(has_pair(args_of(leader), "--node-rank", "0"));
  EXPECT_TRUE(has_pair(args_of(leader), "--tp-size", "6"));
  // The others: named by rank, on their own node with their own cards, out
  // of the gateways' sight (no probe, no port), told the leader's address.
  EXPECT_EQ(node2["metadata"]["name"], "big-0-node2");
  EXPECT_EQ(node2["metadata"]["labels"]["app.kubernetes.io/component"], "engine-worker");
  EXPECT_EQ(node2["metadata"]["labels"]["loadstar.dev/group-rank"], "2");
  EXPECT_EQ(node2["metadata"]["labels"]["loadstar.dev/revision"], "abc");
  EXPECT_EQ(node2["spec"]["nodeName"], "gpu-3");
  EXPECT_EQ(node2["metadata"]["annotations"]["loadstar.dev/devices"],
            R"([{"device":4,"migSlices":0,"milli":1000},{"device":5,"migSlices":0,"milli":1000}])");
  EXPECT_EQ(node2["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "2");
  EXPECT_FALSE(node2["spec"]["containers"][0].contains("readinessProbe"));
  EXPECT_FALSE(node2["spec"]["containers"][0].contains("ports"));
  EXPECT_TRUE(has_pair(args_of(node2), "--node-rank", "2"));
  EXPECT_TRUE(has_pair(args_of(node2), "--dist-init-addr", "$(LWS_LEADER_ADDRESS):20000"));
  EXPECT_EQ(env_of(node2, "LWS_GROUP_SIZE"), "3");
  EXPECT_EQ(env_of(node2, "LWS_WORKER_INDEX"), "2");
  EXPECT_EQ(env_of(node2, "LWS_LEADER_ADDRESS"), "");  // set when the leader has an IP
  // No pod of a group restarts alone.
  EXPECT_EQ(leader["spec"]["restartPolicy"], "Never");
  EXPECT_EQ(node2["spec"]["restartPolicy"], "Never");
  // engine-sim's group port is the leader's HTTP port.
  svc.spec.engine.name = "engine-sim";
  const json sim_node = controller::replica_pod(l, options, "ns", "uid", 1);
  EXPECT_TRUE(has_pair(args_of(sim_node), "--master-port", "8000"));
  EXPECT_TRUE(has_pair(args_of(sim_node), "--master-addr", "$(LWS_LEADER_ADDRESS)"));
  EXPECT_TRUE(has(args_of(sim_node), "--headless"));
}

// vLLM v0.11.0 spans nodes over Ray, as LeaderWorkerSet's vLLM example runs
// it: the image's multi-node-serving.sh forms the cluster (the leader waits
// for the group), then the leader serves tensor parallel within a node and
// pipeline parallel across them; its flags are all vLLM v0.11.0's.
TEST(Engines, AMultiNodeVllmReplicaFormsARayClusterAsLeaderWorkerSetsExampleDoes) {
  api::InferenceService svc;
  svc.metadata.name = "big";
  svc.spec.model = "m";
  svc.spec.engine.name = "vllm";
  svc.spec.multi_node = api::MultiNodeSpec{.size = 2, .topology = "rack"};
  api::Model model;
  model.metadata.name = "m";
  model.spec.source = "hf://org/m";
  controller::EngineLaunch l;
  l.replica = "big-0";
  l.service = &svc;
  l.model = &model;
  l.node = "gpu-1";
  for (int i = 0; i < 8; ++i) l.shares.push_back({i, 1000, 0});
  l.members = {{"gpu-2", "", l.shares}};
  const json leader = controller::replica_pod(l, {}, "ns", "uid")["spec"]["containers"][0];
  const json worker = controller::replica_pod(l, {}, "ns", "uid", 1)["spec"]["containers"][0];
  EXPECT_EQ(leader["command"],
            json({"sh", "-c",
                  "bash /vllm-workspace/examples/online_serving/multi-node-serving.sh leader "
                  "--ray_cluster_size=$(LWS_GROUP_SIZE) && exec \"$0\" \"$@\""}));
  const auto args = leader["args"].get<std::vector<std::string>>();
  ASSERT_GE(args.size(), 3u);
  EXPECT_EQ(args[0], "vllm");
  EXPECT_EQ(args[1], "serve");
  EXPECT_TRUE(has_pair(args, "--tensor-parallel-size", "8"));
  EXPECT_TRUE(has_pair(args, "--pipeline-parallel-size", "2"));
  EXPECT_TRUE(has_pair(args, "--distributed-executor-backend", "ray"));
  EXPECT_EQ(worker["command"],
            json({"sh", "-c",
                  "bash /vllm-workspace/examples/online_serving/multi-node-serving.sh worker "
                  "--ray_address=$(LWS_LEADER_ADDRESS)"}));
  EXPECT_FALSE(worker.contains("args"));
  EXPECT_EQ(worker["resources"]["limits"]["nvidia.com/gpu"], "8");
  // Every flag is one vLLM v0.11.0 knows (its parser's list, as the
  // stand-in `vllm` of the Kubernetes tests reads it).
  std::ifstream tsv(std::string(LOADSTAR_SOURCE_DIR) +
                    "/tests/support/vllm-0.11.0-serve-flags.tsv");
  std::set<std::string> known;
  for (std::string line; std::getline(tsv, line);) known.insert(line.substr(0, line.find('\t')));
  ASSERT_GT(known.size(), 100u);
  for (const std::string& a : args) {
    if (a.starts_with("--")) {
      EXPECT_TRUE(known.count(a)) << a;
    }
  }
}

}  // namespace
}  // namespace loadstar

#include "enginesim/group.h"

namespace loadstar::enginesim {
namespace {

TEST(EngineSimGroup, TheLeaderIsWholeOnceEveryNodeJoinedAndLosesOneThatGoesQuiet) {
  GroupMembers group(3);
  EXPECT_FALSE(group.complete());
  EXPECT_FALSE(group.heartbeat(0, 1.0));  // rank 0 is the leader itself
  EXPECT_FALSE(group.heartbeat(3, 1.0));  // no such node
  EXPECT_TRUE(group.heartbeat(1, 1.0));
  EXPECT_EQ(group.joined(), 1u);
  // Not whole yet: a slow node is waited for, not lost.
  EXPECT_FALSE(group.lost(10.0).has_value());
  EXPECT_TRUE(group.heartbeat(2, 10.0));
  EXPECT_TRUE(group.heartbeat(1, 10.0));
  EXPECT_TRUE(group.complete());
  EXPECT_FALSE(group.lost(10.0 + kLostAfterS).has_value());
  group.heartbeat(1, 11.5);
  const auto lost = group.lost(12.5);
  ASSERT_TRUE(lost.has_value());
  EXPECT_NE(lost->find("node rank 2 of 3 lost (no heartbeat for 2.5s)"), std::string::npos)
      << *lost;
}

}  // namespace
}  // namespace loadstar::enginesim

namespace loadstar {
namespace {

TEST(Strings, IequalsIgnoresOnlyTheCaseOfAsciiLetters) {
  EXPECT_TRUE(iequals("Content-Length", "content-length"));
  EXPECT_TRUE(iequals("", ""));
  EXPECT_FALSE(iequals("Content-Length", "content-lengt"));
  EXPECT_FALSE(iequals("a@", "a`"));      // '@' | 0x20 is '`': not letters
  EXPECT_FALSE(iequals("\xC3", "\xE3"));  // nor are bytes past ASCII
}

}  // namespace
}  // namespace loadstar
