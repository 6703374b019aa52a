#include "api/schema.h"

#include <yaml-cpp/yaml.h>

#include "api/resources.h"
#include "engines/engines.h"

namespace loadstar::api {

namespace {

Field f(std::string name, FieldType type, std::string description, std::vector<Field> fields = {}) {
  return Field{std::move(name), type, std::move(description), std::move(fields), false, {}};
}
Field required(Field field) {
  field.required = true;
  return field;
}
std::vector<std::string> engine_names() {
  std::vector<std::string> out;
  for (const auto& e : engines::all()) out.push_back(e.name);
  return out;
}

Field one_of(Field field, std::vector<std::string> values) {
  field.enum_values = std::move(values);
  return field;
}

using T = FieldType;

std::vector<Field> quota_fields() {
  return {f("gpu", T::kNumber, "GPUs (fractions allowed)."), f("cpu", T::kNumber, "CPU cores."),
          f("memory", T::kQuantity, "Host memory, e.g. 64Gi.")};
}

std::vector<KindSchema> build() {
  std::vector<KindSchema> kinds;
  kinds.push_back(
      {"Model",
       "models",
       "model",
       {"lsmodel"},
       "Model weights and where they come from; node agents stage them.",
       {required(f("source", T::kString,
                   "Where the weights come from: file://, http(s)://, s3://, hf://ORG/NAME[@REV] "
                   "or synth://NAME (a synthetic model of `size` bytes).")),
        one_of(f("format", T::kString, "Weight format (default safetensors)."),
               {"safetensors", "gguf"}),
        f("size", T::kQuantity, "Bytes to write for a synth:// model."),
        f("adapterOf", T::kString, "This Model is a LoRA adapter (PEFT layout) of that Model."),
        f("rank", T::kInteger, "An adapter's LoRA rank, checked against spec.lora.maxRank.")},
       {{"Source", "string", ".spec.source", "Where the weights come from", 0},
        {"Age", "date", ".metadata.creationTimestamp", "", 0}}});

  std::vector<Field> gpu = {
      f("count", T::kInteger, "Whole GPUs (default 1 when nothing else is set)."),
      f("type", T::kString, "GPU model required, e.g. A100-80GB."),
      f("memory", T::kQuantity, "GPU memory needed: a share of one GPU."),
      f("fraction", T::kNumber, "Share of one GPU's compute, 0.001 to below 1."),
      f("mig", T::kString, "A MIG profile such as 3g.40gb.")};
  // spec.resources of a replica or a worker.
  auto resources = [&gpu](std::string description) {
    return f("resources", T::kObject, std::move(description),
             {f("cpu", T::kNumber, "CPU cores."), f("memory", T::kQuantity, "Host memory."),
              f("gpu", T::kObject, "GPUs: whole cards, a share, or a MIG slice.", gpu)});
  };
  std::vector<Field> autoscaling = {
      required(f("maxReplicas", T::kInteger, "Upper bound of replicas.")),
      f("targets", T::kObject, "Per-replica targets; unset ones do not vote.",
        {f("waitingPerReplica", T::kNumber, "Requests waiting in the engine per replica."),
         f("inFlightPerReplica", T::kNumber, "Requests in flight per replica (default 8)."),
         f("kvCacheUsage", T::kNumber, "KV-cache use, 0.01 to 1."),
         f("ttftP90", T::kDuration, "Time-to-first-token SLO on the p90, e.g. 2s."),
         f("itlP90", T::kDuration, "Inter-token latency SLO on the p90, e.g. 50ms (decode)."),
         f("prefillTokensPerReplica", T::kNumber,
           "Prompt tokens awaiting their first token per replica (a prefill pool).")}),
      f("slo", T::kObject,
        "A TTFT SLO to hold: the in-flight requests a replica holds at it are learned.",
        {required(f("ttft", T::kDuration, "Time to first token, e.g. 2s.")),
         f("attainment", T::kNumber,
           "Share of requests within it, 0.5 to 0.9999 (default 0.99).")}),
      f("stableWindow", T::kDuration, "Averaging window of stable mode (default 60s)."),
      f("panicWindow", T::kDuration, "Averaging window of panic mode (default 6s)."),
      f("panicThreshold", T::kNumber, "Panic when desired/ready reaches this (default 2)."),
      f("maxScaleUpRate", T::kNumber, "At most this many times the ready replicas per decision."),
      f("scaleDownStabilization", T::kDuration,
        "Scale down only to the highest recommendation of this window (default 60s)."),
      f("tolerance", T::kNumber,
        "Keep the count while a target asks for within this share of it (default 0.1).")};
  std::vector<Field> routing = {
      one_of(f("picker", T::kString, "How a replica is picked (default scored)."),
             {"scored", "least-request", "round-robin"}),
      f("scorers", T::kObject, "Weights of the scored picker's scorers.",
        {f("prefixCache", T::kNumber, "Prefix-cache affinity."),
         f("inFlight", T::kNumber, "Requests in flight."),
         f("queue", T::kNumber, "Engine queue depth."), f("kvCache", T::kNumber, "KV-cache use."),
         f("session", T::kNumber, "Session affinity."),
         f("lora", T::kNumber, "LoRA adapter affinity.")}),
      f("sessionHeader", T::kString, "Request header that names a session."),
      f("hold", T::kObject, "Requests that arrive while no replica is ready wait.",
        {f("maxRequests", T::kInteger, "At most this many (default 256)."),
         f("timeout", T::kDuration, "At most this long (default 120s).")}),
      f("flowControl", T::kObject,
        "While every replica is saturated, requests wait in the gateway by tenant priority.",
        {f("maxInFlightPerReplica", T::kInteger, "Saturated at this many requests in flight."),
         f("maxWaitingPerReplica", T::kNumber, "Saturated at this engine queue depth."),
         f("maxKvCacheUsage", T::kNumber, "Saturated at this KV-cache use (0..1)."),
         f("maxQueued", T::kInteger, "Requests waiting at once (default 1024)."),
         f("queueTimeout", T::kDuration, "Longest wait (default 60s).")})};
  kinds.push_back(
      {"InferenceService",
       "inferenceservices",
       "inferenceservice",
       {"lsvc"},
       "An OpenAI-compatible model served by engine replicas, placed by Loadstar's scheduler and "
       "autoscaled on AI signals.",
       {required(f("model", T::kString, "The Model resource whose weights the engines load.")),
        f("replicas", T::kInteger, "Replicas to start with (default 1)."),
        f("engine", T::kObject, "The inference engine.",
          {one_of(f("name", T::kString,
                    "Engine (default engine-sim, Loadstar's simulator: no real model)."),
                  engine_names()),
           f("args", T::kStrings, "Extra engine arguments, passed after Loadstar's."),
           f("image", T::kString, "Kubernetes: the engine's image instead of its default."),
           f("contextLength", T::kInteger, "Tokens per request, prompt and output."),
           f("maxSequences", T::kInteger, "Requests an engine serves at once."),
           f("threads", T::kInteger, "CPU threads per engine (llama.cpp)."),
           f("prefixCache", T::kBoolean, "Reuse cached prompt prefixes (default true)."),
           f("kvEvents", T::kBoolean,
             "Publish KV-cache events; gateways route by each engine's cache (engine-sim).")}),
        f("queue", T::kString, "The Queue replicas are charged to (default 'default')."),
        f("priority", T::kInteger, "Priority within the queue."),
        f("preemptible", T::kBoolean, "Whether the scheduler may evict replicas."),
        resources("What each replica needs."),
        f("minReplicas", T::kInteger, "0 lets the service scale to zero after idleTimeout."),
        f("idleTimeout", T::kDuration, "Idle time before scaling to zero (default 300s)."),
        f("warmNodes", T::kInteger, "Nodes that keep the weights staged at zero (default 1)."),
        f("lora", T::kObject, "LoRA adapters served beside the model; a request names one.",
          {f("adapters", T::kStrings, "Models whose spec.adapterOf is this service's model."),
           f("maxLoras", T::kInteger, "Distinct adapters in one batch (default 1)."),
           f("maxCpuLoras", T::kInteger, "Adapters kept in host memory (default maxLoras)."),
           f("maxRank", T::kInteger, "Largest adapter rank (default 16)."),
           one_of(f("loading", T::kString,
                    "start: each replica loads every adapter; onDemand: the gateway loads one "
                    "where a request for it goes, and the list changes without restarts."),
                  {"start", "onDemand"})}),
        f("autoscaling", T::kObject, "Autoscaling on AI signals.", autoscaling),
        f("prefill", T::kObject,
          "Disaggregated serving: a prefill pool computes long prompts and hands their KV cache "
          "to this service's replicas (the decode pool).",
          {f("replicas", T::kInteger, "Prefill replicas to start with (default 1)."),
           f("minReplicas", T::kInteger, "0 lets the prefill pool scale to zero."),
           f("resources", T::kObject, "What each prefill replica needs (default: the service's).",
             {f("cpu", T::kNumber, "CPU cores."), f("memory", T::kQuantity, "Host memory."),
              f("gpu", T::kObject, "GPUs; the count must equal the service's.", gpu)}),
           f("args", T::kStrings, "Engine arguments for prefill replicas only."),
           f("autoscaling", T::kObject, "Autoscaling of the prefill pool.", autoscaling),
           f("nonCachedTokens", T::kInteger,
             "Prefill a request apart only when this many of its prompt tokens are not cached "
             "on its decode replica (default 512)."),
           one_of(f("link", T::kString, "engine-sim: the link its KV crosses (default rdma)."),
                  {"nvlink", "rdma", "tcp"})}),
        f("multiNode", T::kObject,
          "Each replica spans several nodes (LeaderWorkerSet's shape): placed all or none in one "
          "topology domain, routed through its leader, restarted as a whole.",
          {f("size", T::kInteger, "Pods per replica, the leader included (2 to 64; default 2)."),
           one_of(f("topology", T::kString,
                    "All of a replica's pods within one domain of this level (default rack)."),
                  {"nvlink", "rack", "spine", "zone"})}),
        f("rollout", T::kObject,
          "How a changed revision replaces running replicas (a rolling update).",
          {f("maxSurge", T::kIntOrPercent,
             "Replicas above the desired count while new ones start (default 25%, rounded up)."),
           f("maxUnavailable", T::kIntOrPercent,
             "Desired replicas that may be not ready (default 0; 1 when the surge finds no room)."),
           f("canary", T::kObject,
             "Shift traffic to the new revision in steps, judged against the stable one.",
             {f("steps", T::kList, "Traffic shares, each held for a pause.",
                {f("weight", T::kInteger, "Percent of the requests to the canary (1-99)."),
                 f("pause", T::kDuration, "Held at least this long (default 60s).")}),
              f("analysis", T::kObject, "When a step fails (then the rollout rolls back).",
                {f("minRequests", T::kInteger,
                   "Requests the canary must get in a step before it is judged (default 20)."),
                 f("maxErrorRateIncrease", T::kNumber,
                   "Failed share above the stable revision's (default 0.05)."),
                 f("maxTtftP99Ratio", T::kNumber,
                   "TTFT p99 against the stable revision's (default 1.5; 0: off)."),
                 f("maxItlP99Ratio", T::kNumber,
                   "Inter-token latency p99 against the stable's (default 1.5; 0: off).")})})}),
        f("routing", T::kObject, "How the gateway picks a replica.", routing)},
       {{"Model", "string", ".spec.model", "The served model", 0},
        {"Desired", "integer", ".status.desiredReplicas", "Replicas wanted", 0},
        {"Ready", "integer", ".status.readyReplicas", "Replicas serving", 0},
        {"Reason", "string", ".status.scaleReason", "The autoscaler's last decision", 1},
        {"Age", "date", ".metadata.creationTimestamp", "", 0}}});

  kinds.push_back(
      {"Tenant",
       "tenants",
       "tenant",
       {"lstenant"},
       "Who may call the gateway, and how much.",
       {f("apiKeys", T::kList, "API keys, stored as SHA-256 digests.",
          {f("name", T::kString, "A label for the key."),
           required(f("sha256", T::kString, "SHA-256 of the key, 64 lower-case hex digits.")),
           f("revoked", T::kBoolean, "A revoked key is refused.")}),
        f("limits", T::kObject, "Budgets.",
          {f("requestsPerMinute", T::kInteger, "Requests per minute."),
           f("tokensPerMinute", T::kInteger, "tokenCost units per minute."),
           f("maxConcurrentRequests", T::kInteger, "Requests at once.")}),
        f("tokenCost", T::kString,
          "What a request costs, e.g. input_tokens + output_tokens (the default)."),
        f("models", T::kStrings,
          "Model names (services, routes) its keys may call; empty: all. Others answer 404."),
        f("priority", T::kInteger,
          "On saturated services, higher priorities leave the gateway's queue first."),
        f("sheddable", T::kBoolean,
          "On saturated services, its requests are refused (503) instead of queued.")},
       {{"RPM", "integer", ".spec.limits.requestsPerMinute", "Requests per minute", 0},
        {"TPM", "integer", ".spec.limits.tokensPerMinute", "Tokens per minute", 0},
        {"Age", "date", ".metadata.creationTimestamp", "", 0}}});

  kinds.push_back(
      {"Route",
       "routes",
       "route",
       {"lsroute"},
       "A model name clients use, mapped to weighted, prioritised backends.",
       {f("model", T::kString, "The model name clients send (default metadata.name)."),
        f("backends", T::kList, "Where requests go.",
          {f("service", T::kString, "An InferenceService, or"),
           f("url", T::kString, "an external OpenAI-compatible http:// or https:// URL."),
           f("caFile", T::kString,
             "https: a PEM CA bundle to verify the backend with (default the system's)."),
           f("model", T::kString, "The model name sent to the backend."),
           f("apiKeyEnv", T::kString, "Environment variable holding the backend's API key."),
           f("weight", T::kInteger, "Share of traffic within its priority (default 1)."),
           f("priority", T::kInteger, "0 first; higher groups when lower ones fail.")})},
       {{"Model", "string", ".spec.model", "The model name clients send", 0},
        {"Age", "date", ".metadata.creationTimestamp", "", 0}}});

  kinds.push_back(
      {"Queue",
       "queues",
       "queue",
       {"lsqueue"},
       "A scheduling queue: deserved quota, limit and over-quota weight, in a hierarchy.",
       {f("parent", T::kString, "The parent Queue; empty: top level."),
        f("deserved", T::kObject, "Quota guaranteed to this queue.", quota_fields()),
        f("limit", T::kObject, "Never more than this.", quota_fields()),
        f("overQuotaWeight", T::kNumber, "Share of unused quota it may borrow (default 1).")},
       {{"Parent", "string", ".spec.parent", "Parent queue", 0},
        {"Deserved-GPUs", "number", ".spec.deserved.gpu", "GPUs deserved", 0},
        {"Age", "date", ".metadata.creationTimestamp", "", 0}}});

  // Plural `jobs` as batch/v1's: `kubectl get jobs` stays batch/v1's (the
  // built-in group wins), `kubectl get lsjobs` lists these.
  kinds.push_back(
      {"Job",
       "jobs",
       "job",
       {"lsjob"},
       "A batch or training job: its workers start together as a gang through Loadstar's queues, "
       "borrow idle serving capacity and are requeued, not lost, when it is reclaimed.",
       {required(f("command", T::kStrings,
                   "The program and its arguments: locally a process, in Kubernetes the "
                   "container's command.")),
        f("image", T::kString, "Kubernetes: the workers' container image."),
        f("env", T::kStringMap, "Environment variables of every worker."),
        f("workers", T::kInteger, "Workers started together, all or none (default 1)."),
        resources("What each worker needs."),
        f("topology", T::kObject, "All workers within one domain of a topology level.",
          {required(
               one_of(f("level", T::kString, "The level."), {"nvlink", "rack", "spine", "zone"})),
           f("required", T::kBoolean, "Required (default) or only preferred.")}),
        f("queue", T::kString, "The Queue its workers are charged to (default 'default')."),
        f("priority", T::kInteger, "Priority within the queue."),
        f("preemptible", T::kBoolean,
          "Whether the scheduler may evict it for serving or reclaim (default true)."),
        f("terminationGracePeriodSeconds", T::kNumber,
          "SIGTERM, then SIGKILL after this: time to checkpoint when preempted (default 30)."),
        f("backoffLimit", T::kInteger,
          "Attempts after a failed one before the job fails; preemptions do not count "
          "(default 3)."),
        f("activeDeadlineSeconds", T::kNumber, "An attempt running longer than this fails it."),
        f("checkpoint", T::kObject,
          "Kubernetes: the volume $LOADSTAR_CHECKPOINT_DIR lives on (a directory per job), so a "
          "requeued attempt resumes from what the last one wrote. One of:",
          {f("claimName", T::kString,
             "A PersistentVolumeClaim in the job's namespace (ReadWriteMany when workers span "
             "nodes)."),
           f("hostPath", T::kString, "A directory of the node (one-node clusters, tests).")})},
       {{"Queue", "string", ".spec.queue", "The queue it is charged to", 0},
        {"Workers", "integer", ".spec.workers", "Workers in its gang", 0},
        {"Phase", "string", ".status.phase", "Queued, Running, Succeeded, Failed", 0},
        {"Attempts", "integer", ".status.attempts", "Attempts started", 1},
        {"Preemptions", "integer", ".status.preemptions", "Times it was preempted", 1},
        {"Age", "date", ".metadata.creationTimestamp", "", 0}}});
  return kinds;
}

void add_paths(const std::vector<Field>& fields, const std::string& prefix,
               std::vector<std::string>& out) {
  for (const Field& field : fields) {
    const std::string path = prefix + "." + field.name;
    out.push_back(path);
    if (field.type == T::kObject) add_paths(field.fields, path, out);
    if (field.type == T::kList) add_paths(field.fields, path + "[]", out);
  }
}

void emit_schema(YAML::Emitter& e, const Field& field);

void emit_properties(YAML::Emitter& e, const std::vector<Field>& fields) {
  e << YAML::Key << "type" << YAML::Value << "object";
  std::vector<std::string> req;
  for (const Field& field : fields)
    if (field.required) req.push_back(field.name);
  if (!req.empty()) e << YAML::Key << "required" << YAML::Value << YAML::Flow << req;
  e << YAML::Key << "properties" << YAML::Value << YAML::BeginMap;
  for (const Field& field : fields) {
    e << YAML::Key << field.name << YAML::Value;
    emit_schema(e, field);
  }
  e << YAML::EndMap;
}

void emit_schema(YAML::Emitter& e, const Field& field) {
  e << YAML::BeginMap;
  if (!field.description.empty())
    e << YAML::Key << "description" << YAML::Value << field.description;
  switch (field.type) {
    case T::kString:
    case T::kDuration:
      e << YAML::Key << "type" << YAML::Value << "string";
      break;
    case T::kInteger:
      e << YAML::Key << "type" << YAML::Value << "integer";
      break;
    case T::kNumber:
      e << YAML::Key << "type" << YAML::Value << "number";
      break;
    case T::kBoolean:
      e << YAML::Key << "type" << YAML::Value << "boolean";
      break;
    case T::kQuantity:
    case T::kIntOrPercent:
      e << YAML::Key << "x-kubernetes-int-or-string" << YAML::Value << true;
      break;
    case T::kObject:
      emit_properties(e, field.fields);
      break;
    case T::kList:
      e << YAML::Key << "type" << YAML::Value << "array";
      e << YAML::Key << "items" << YAML::Value << YAML::BeginMap;
      emit_properties(e, field.fields);
      e << YAML::EndMap;
      break;
    case T::kStrings:
      e << YAML::Key << "type" << YAML::Value << "array";
      e << YAML::Key << "items" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key
        << "type" << YAML::Value << "string" << YAML::EndMap;
      break;
    case T::kStringMap:
      e << YAML::Key << "type" << YAML::Value << "object";
      e << YAML::Key << "additionalProperties" << YAML::Value << YAML::Flow << YAML::BeginMap
        << YAML::Key << "type" << YAML::Value << "string" << YAML::EndMap;
      break;
  }
  if (!field.enum_values.empty())
    e << YAML::Key << "enum" << YAML::Value << YAML::Flow << field.enum_values;
  e << YAML::EndMap;
}

}  // namespace

const std::vector<KindSchema>& kind_schemas() {
  static const std::vector<KindSchema> kinds = build();
  return kinds;
}

std::vector<std::string> field_paths(const KindSchema& kind) {
  std::vector<std::string> out;
  add_paths(kind.spec, "spec", out);
  return out;
}

std::string crd_yaml(const KindSchema& kind) {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "apiVersion" << YAML::Value << "apiextensions.k8s.io/v1";
  e << YAML::Key << "kind" << YAML::Value << "CustomResourceDefinition";
  e << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "name" << YAML::Value << kind.plural + "." + kGroup;
  e << YAML::Key << "labels" << YAML::Value << YAML::BeginMap << YAML::Key
    << "app.kubernetes.io/part-of" << YAML::Value << "loadstar" << YAML::EndMap;
  e << YAML::EndMap;
  e << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "group" << YAML::Value << kGroup;
  e << YAML::Key << "scope" << YAML::Value << "Namespaced";
  e << YAML::Key << "names" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "kind" << YAML::Value << kind.kind;
  e << YAML::Key << "listKind" << YAML::Value << kind.kind + "List";
  e << YAML::Key << "plural" << YAML::Value << kind.plural;
  e << YAML::Key << "singular" << YAML::Value << kind.singular;
  e << YAML::Key << "shortNames" << YAML::Value << YAML::Flow << kind.short_names;
  e << YAML::Key << "categories" << YAML::Value << YAML::Flow
    << std::vector<std::string>{"loadstar"};
  e << YAML::EndMap;
  e << YAML::Key << "versions" << YAML::Value << YAML::BeginSeq << YAML::BeginMap;
  e << YAML::Key << "name" << YAML::Value << kVersion;
  e << YAML::Key << "served" << YAML::Value << true;
  e << YAML::Key << "storage" << YAML::Value << true;
  e << YAML::Key << "subresources" << YAML::Value << YAML::BeginMap << YAML::Key << "status"
    << YAML::Value << YAML::BeginMap << YAML::EndMap << YAML::EndMap;
  e << YAML::Key << "additionalPrinterColumns" << YAML::Value << YAML::BeginSeq;
  for (const PrinterColumn& c : kind.columns) {
    e << YAML::BeginMap << YAML::Key << "name" << YAML::Value << c.name;
    e << YAML::Key << "type" << YAML::Value << c.type;
    e << YAML::Key << "jsonPath" << YAML::Value << c.json_path;
    if (!c.description.empty()) e << YAML::Key << "description" << YAML::Value << c.description;
    if (c.priority) e << YAML::Key << "priority" << YAML::Value << c.priority;
    e << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "schema" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "openAPIV3Schema" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "description" << YAML::Value << kind.description;
  e << YAML::Key << "type" << YAML::Value << "object";
  e << YAML::Key << "required" << YAML::Value << YAML::Flow << std::vector<std::string>{"spec"};
  e << YAML::Key << "properties" << YAML::Value << YAML::BeginMap;
  for (const char* key : {"apiVersion", "kind"})
    e << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "type"
      << YAML::Value << "string" << YAML::EndMap;
  e << YAML::Key << "metadata" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "type"
    << YAML::Value << "object" << YAML::EndMap;
  e << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  emit_properties(e, kind.spec);
  e << YAML::EndMap;
  e << YAML::Key << "status" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "description" << YAML::Value << "Written by Loadstar's controller.";
  e << YAML::Key << "type" << YAML::Value << "object";
  e << YAML::Key << "x-kubernetes-preserve-unknown-fields" << YAML::Value << true;
  e << YAML::EndMap;
  e << YAML::EndMap;                  // properties
  e << YAML::EndMap;                  // openAPIV3Schema
  e << YAML::EndMap;                  // schema
  e << YAML::EndMap << YAML::EndSeq;  // versions
  e << YAML::EndMap;                  // spec
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace loadstar::api
