// Loadstar's resources, shaped as Kubernetes objects (apiVersion, kind,
// metadata, spec). Locally they come from YAML files; in a cluster the same
// types come from CRDs. Decoding rejects unknown fields and names the file,
// line, resource and field of every error.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.h"

namespace loadstar::api {

inline constexpr const char* kApiVersion = "loadstar.dev/v1alpha1";

struct ObjectMeta {
  std::string name;
  std::map<std::string, std::string> labels;
  bool operator==(const ObjectMeta&) const = default;
};

struct ModelSpec {
  // Where the weights come from: file://, http(s)://, s3://, hf:// URIs, or
  // synth://NAME for a synthetic safetensors model of `size` bytes that
  // Loadstar writes itself (demos, tests, benchmarks).
  std::string source;
  std::string format = "safetensors";
  std::optional<uint64_t> size_bytes;
  // A LoRA adapter (PEFT layout) of this base Model (spec.adapterOf), with
  // its rank when known; empty: a model of its own.
  std::string adapter_of;
  std::optional<uint32_t> rank;
  bool operator==(const ModelSpec&) const = default;
};

struct Model {
  ObjectMeta metadata;
  ModelSpec spec;
  bool operator==(const Model&) const = default;
};

struct GpuRequirements {
  uint32_t count = 0;  // whole GPUs; 0 with a fraction or memory means a share of one
  std::string type;    // e.g. "A100-80GB"; empty: any
  std::optional<uint64_t> memory_bytes;  // GPU memory needed (a share of one GPU)
  std::optional<double> fraction;        // share of one GPU, 0 < f < 1
  std::string mig;                       // a MIG profile such as "3g.40gb"
  bool operator==(const GpuRequirements&) const = default;
};

// The engine a service's replicas run (spec.engine); engines/engines.h
// says how each field becomes the engine's flags.
struct EngineSpec {
  std::string name = "engine-sim";         // engine-sim, llama.cpp, vllm, sglang
  std::vector<std::string> args;           // extra flags, passed last
  std::string image;                       // Kubernetes: instead of the engine's default image
  std::optional<uint32_t> context_length;  // tokens per request (prompt + output)
  std::optional<uint32_t> max_sequences;   // requests served at once
  std::optional<uint32_t> threads;         // CPU threads (llama.cpp)
  bool prefix_cache = true;                // reuse cached prompt prefixes
  // The engine publishes its KV-cache events (vLLM's format, over ZeroMQ)
  // and the gateways route by what each engine's cache holds, matching
  // prompts by the ids the engine's POST /tokenize gives (engine-sim, vLLM,
  // SGLang).
  bool kv_events = false;
  bool operator==(const EngineSpec&) const = default;
};

// How the gateway picks among a service's replicas (spec.routing).
struct RoutingSpec {
  std::string picker = "scored";  // scored, least-request, round-robin
  // Scorer weights of the scored picker; unset ones keep their defaults.
  std::optional<double> prefix_cache_weight, in_flight_weight, queue_weight, kv_cache_weight,
      session_weight, lora_weight;
  std::optional<std::string> session_header;
  // Requests that arrive while no replica is ready wait (at most this many,
  // this long) instead of failing.
  uint32_t hold_max_requests = 256;
  double hold_timeout_s = 120;
  // Flow control (spec.routing.flowControl): a replica is saturated when any
  // threshold set here is reached; while every replica is, requests wait in
  // the gateway (at most max_queued, queue_timeout_s each), ordered by their
  // tenant's priority and fair across tenants, and sheddable tenants'
  // requests are refused. No threshold set: off.
  std::optional<uint32_t> max_in_flight_per_replica;  // the gateway's requests on it
  std::optional<double> max_waiting_per_replica;      // the engine's queue, as scraped
  std::optional<double> max_kv_cache_usage;           // 0..1, as scraped
  uint32_t max_queued = 1024;
  double queue_timeout_s = 60;
  bool operator==(const RoutingSpec&) const = default;
};

// Autoscaling on AI signals (spec.autoscaling). The service starts at
// `replicas` and moves between minReplicas (default 1; 0 scales to zero
// after idleTimeout) and maxReplicas. Unset targets do not vote; with none,
// in-flight requests per replica at 8.
struct AutoscalingSpec {
  uint32_t max_replicas = 1;
  std::optional<double> waiting_per_replica;
  std::optional<double> in_flight_per_replica;
  std::optional<double> kv_cache_usage;              // 0..1
  std::optional<double> ttft_p90_s;                  // the SLO
  std::optional<double> itl_p90_s;                   // inter-token latency SLO (a decode pool's)
  std::optional<double> prefill_tokens_per_replica;  // queued prefill work (a prefill pool's)
  // slo: the TTFT to hold for a share of the requests; the in-flight
  // requests a replica holds at it are learned (autoscaler/slo_capacity.h).
  std::optional<double> slo_ttft_s;
  double slo_attainment = 0.99;
  double stable_window_s = 60;
  double panic_window_s = 6;
  double panic_threshold = 2;
  double max_scale_up_rate = 10;
  double scale_down_stabilization_s = 60;
  double tolerance = 0.1;  // as the HPA's: no change within 10% of the current count
  bool operator==(const AutoscalingSpec&) const = default;
};

// A count of replicas, or a percentage of the desired count (maxSurge: 1,
// maxUnavailable: "25%").
struct IntOrPercent {
  uint32_t value = 0;
  bool percent = false;
  // Replicas, of `desired`: a percentage rounds up or down.
  uint32_t of(uint32_t desired, bool round_up) const;
  bool operator==(const IntOrPercent&) const = default;
};

// How a change of a replica's shape (its revision) reaches the running
// replicas (spec.rollout), as a Deployment's rolling update: at most
// maxSurge replicas above the desired count while new ones start, at most
// maxUnavailable of the desired count not ready. Not both zero. Unlike a
// Deployment's 25%, maxUnavailable defaults to 0: a serving replica lost
// under load costs TTFT (bench/rollout); when the surge finds no room the
// rollout replaces one replica in place instead (rollout.h).
// A canary rollout (spec.rollout.canary): the new revision gets a share of
// the traffic in steps, each held for a pause, while the gateways' view of
// it (failed attempts, TTFT and ITL p99) is compared with the stable
// revision's; a step that breaches a bound rolls back at once, all steps
// passed promote (the rolling update then replaces the rest).
struct CanaryStep {
  uint32_t weight = 0;  // percent of the requests, 1..99
  double pause_s = 60;  // held at least this long, and until minRequests
  bool operator==(const CanaryStep&) const = default;
};

struct CanaryAnalysis {
  uint32_t min_requests = 20;             // reaching the canary in a step before it is judged
  double max_error_rate_increase = 0.05;  // the canary's failed share minus the stable's
  std::optional<double> max_ttft_p99_ratio = 1.5;  // canary p99 / stable p99
  std::optional<double> max_itl_p99_ratio = 1.5;
  bool operator==(const CanaryAnalysis&) const = default;
};

struct CanarySpec {
  std::vector<CanaryStep> steps;
  CanaryAnalysis analysis;
  bool operator==(const CanarySpec&) const = default;
};

struct RolloutSpec {
  IntOrPercent max_surge{25, true};
  IntOrPercent max_unavailable{0, false};
  std::optional<CanarySpec> canary;
  bool operator==(const RolloutSpec&) const = default;
};

// LoRA adapters a service serves beside its model (spec.lora), with vLLM's
// limits: a request's `model` names one of them.
struct LoraSpec {
  std::vector<std::string> adapters;  // Models whose adapterOf is the service's model
  uint32_t max_loras = 1;             // distinct adapters in one batch
  std::optional<uint32_t> max_cpu_loras;
  uint32_t max_rank = 16;
  // How replicas get them: each loads every adapter at start ("start"), or
  // the gateway loads an adapter into a replica the first time a request
  // for it goes there ("onDemand", through the engine's runtime API:
  // vLLM's /v1/load_lora_adapter). On demand, the list may change without
  // restarting any replica.
  bool on_demand = false;
  bool operator==(const LoraSpec&) const = default;
};

// spec.prefill: the service serves disaggregated (api/disaggregation.h). A
// pool of prefill replicas computes prompts and hands their KV cache to the
// service's own replicas — the decode pool, sized and scaled by the rest of
// the spec — which generate; short or mostly cached prompts skip it.
struct PrefillSpec {
  uint32_t replicas = 1;
  std::optional<uint32_t> min_replicas;  // 0: scales to zero when idle
  // Unset: the service's (spec.resources).
  std::optional<double> cpu;
  std::optional<uint64_t> memory_bytes;
  std::optional<GpuRequirements> gpu;
  std::vector<std::string> args;  // engine flags for the prefill role only, after spec.engine.args
  std::optional<AutoscalingSpec> autoscaling;
  // A request goes through a prefill replica only when at least this many of
  // its prompt tokens are not cached on the decode replica picked for it
  // (llm-d's prefix-based decider, nonCachedTokens).
  uint32_t non_cached_tokens = 512;
  // engine-sim: the link its KV crosses (nvlink, rdma, tcp).
  std::string link = "rdma";
  bool operator==(const PrefillSpec&) const = default;
};

// A replica that spans several nodes (LeaderWorkerSet's shape): `size`
// pods, each with the service's resources (tensor parallel within a pod,
// pipeline parallel across them), placed all or none within one domain of
// `topology`, started together, routed to through the leader (pod 0), and
// restarted as a whole when any of them ends (spec.multiNode).
struct MultiNodeSpec {
  uint32_t size = 2;
  std::string topology = "rack";  // nvlink, rack, spine, zone: required
  bool operator==(const MultiNodeSpec&) const = default;
};

struct InferenceServiceSpec {
  std::string model;  // a Model's metadata.name
  EngineSpec engine;
  uint32_t replicas = 1;
  // Scheduling: the Queue its replicas are charged to, their priority within
  // it, and whether the scheduler may evict them (for higher-priority work or
  // to reclaim quota). Serving is not preemptible unless it says so.
  std::string queue = "default";
  int32_t priority = 0;
  bool preemptible = false;
  double cpu = 0;             // cores per replica (spec.resources.cpu)
  uint64_t memory_bytes = 0;  // host memory per replica (spec.resources.memory)
  // 0 lets the service scale to zero after `idle_timeout_s` without
  // requests; a request arriving then starts `replicas` again.
  std::optional<uint32_t> min_replicas;
  double idle_timeout_s = 300;
  // Nodes that keep the model staged while the service has no replica
  // (spec.warmNodes), so that scale-from-zero pays load time, not download
  // time. 0: staged only when a replica needs it.
  uint32_t warm_nodes = 1;
  GpuRequirements gpu;
  RoutingSpec routing;
  std::optional<AutoscalingSpec> autoscaling;
  RolloutSpec rollout;
  std::optional<LoraSpec> lora;
  std::optional<PrefillSpec> prefill;
  std::optional<MultiNodeSpec> multi_node;
  // Set only on the prefill pool a disaggregated service runs as
  // (api/disaggregation.h), never read from YAML: the service it is the
  // prefill role of, whose name clients and engines use.
  std::string prefill_of;
  bool operator==(const InferenceServiceSpec&) const = default;
};

struct InferenceService {
  ObjectMeta metadata;
  InferenceServiceSpec spec;
  bool operator==(const InferenceService&) const = default;
};

// Who may call the gateway and how much. Keys are stored as SHA-256 digests
// (`loadstar apikey` makes a key and prints its digest).
struct TenantApiKey {
  std::string name;
  std::string sha256;
  bool revoked = false;
  bool operator==(const TenantApiKey&) const = default;
};

struct TenantSpec {
  std::vector<TenantApiKey> api_keys;
  std::optional<uint32_t> requests_per_minute;
  std::optional<uint32_t> tokens_per_minute;  // in tokenCost units
  std::optional<uint32_t> max_concurrent_requests;
  std::string token_cost = "input_tokens + output_tokens";
  // The model names (as clients send them: a service, a route) this
  // tenant's keys may call; empty: every model. Others answer 404, as if
  // they did not exist, and are left out of /v1/models.
  std::vector<std::string> models;
  // Flow control on saturated services: higher priorities leave the
  // gateway's queue first; a sheddable tenant's requests are refused (503,
  // Retry-After) rather than queued.
  int32_t priority = 0;
  bool sheddable = false;
  bool operator==(const TenantSpec&) const = default;
};

struct Tenant {
  ObjectMeta metadata;
  TenantSpec spec;
  bool operator==(const Tenant&) const = default;
};

// A model name clients use, mapped to weighted, prioritised backends: this
// cluster's InferenceServices or external OpenAI-compatible URLs.
struct RouteBackend {
  std::string service;      // an InferenceService, or
  std::string url;          // http(s)://host[:port] (external, OpenAI-compatible)
  std::string ca_file;      // https: trust this PEM CA bundle instead of the system's
  std::string model;        // the model name sent to the backend (default: the service's name
                            // or the route's model)
  std::string api_key_env;  // environment variable holding the backend's API key
  uint32_t weight = 1;
  uint32_t priority = 0;  // 0 first; a higher group is tried when a lower one fails
  bool operator==(const RouteBackend&) const = default;
};

struct RouteSpec {
  std::string model;  // default: metadata.name
  std::vector<RouteBackend> backends;
  bool operator==(const RouteSpec&) const = default;
};

struct Route {
  ObjectMeta metadata;
  RouteSpec spec;
  bool operator==(const Route&) const = default;
};

// A machine the scheduler places replicas on, with its GPUs described by
// attributes (model, memory, MIG slices) and its place in the topology.
// Locally these are declared; in a cluster they come from Kubernetes Nodes.
struct NodeGpu {
  std::string model;  // e.g. A100-80GB
  uint64_t memory_bytes = 0;
  uint32_t count = 1;
  uint32_t mig_slices = 0;  // compute slices when MIG-partitioned (7 on A100/H100); 0: no MIG
  // How many times the device plugin advertises each card: NVIDIA's
  // time-slicing (`replicas`); 1: whole cards.
  uint32_t replicas = 1;
  bool operator==(const NodeGpu&) const = default;
};

struct NodeSpec {
  double cpu = 0;  // cores
  uint64_t memory_bytes = 0;
  std::vector<NodeGpu> gpus;
  std::map<std::string, std::string> topology;  // nvlink, rack, spine, zone -> domain
  bool schedulable = true;
  bool operator==(const NodeSpec&) const = default;
};

struct Node {
  ObjectMeta metadata;
  NodeSpec spec;
  bool operator==(const Node&) const = default;
};

// Quota per resource; an unset field is 0 in `deserved` and no limit in
// `limit`.
struct QueueQuota {
  std::optional<double> gpu;  // GPUs, fractions allowed
  std::optional<double> cpu;  // cores
  std::optional<uint64_t> memory_bytes;
  bool operator==(const QueueQuota&) const = default;
};

struct QueueSpec {
  std::string parent;  // empty: top level
  QueueQuota deserved;
  QueueQuota limit;
  double over_quota_weight = 1;
  bool operator==(const QueueSpec&) const = default;
};

struct Queue {
  ObjectMeta metadata;
  QueueSpec spec;
  bool operator==(const Queue&) const = default;
};

// A batch or training job (api/job.cpp reads it): `workers` processes —
// Pods in Kubernetes — started together as a gang through the same queues
// as InferenceServices, charged to the same GPU-seconds. Idle serving
// capacity is lent to jobs and reclaimed when serving needs it back: a
// preempted job's workers get `termination_grace_s` to checkpoint, then
// the job is queued again, not lost.
struct JobTopology {
  std::string level;     // nvlink, rack, spine, zone
  bool required = true;  // else preferred
  bool operator==(const JobTopology&) const = default;
};

struct JobSpec {
  // Locally the worker's argv; in Kubernetes its container's command.
  std::vector<std::string> command;
  std::string image;  // Kubernetes: the container image (required there)
  std::map<std::string, std::string> env;
  uint32_t workers = 1;  // the gang: all start together or none does
  // Per worker (spec.resources).
  double cpu = 0;
  uint64_t memory_bytes = 0;
  GpuRequirements gpu;
  std::optional<JobTopology> topology;  // all workers within one domain
  std::string queue = "default";
  int32_t priority = 0;
  bool preemptible = true;
  // SIGTERM on preemption or deletion, then SIGKILL after this: the window
  // a worker has to checkpoint (terminationGracePeriodSeconds).
  double termination_grace_s = 30;
  // Attempts after a failed one (a worker exiting non-zero) before the job
  // fails; preemptions do not count (backoffLimit).
  uint32_t backoff_limit = 3;
  // A running attempt longer than this fails the job (activeDeadlineSeconds).
  std::optional<double> active_deadline_s;
  // Kubernetes: the volume $LOADSTAR_CHECKPOINT_DIR lives on (a directory
  // of its own in it, named after the job), so that a requeued or retried
  // attempt reads what the last one wrote (spec.checkpoint): a
  // PersistentVolumeClaim of the job's namespace, or a directory of the
  // node (one-node clusters). Neither: the workers have no checkpoint
  // directory. Locally it is always DATA/jobs/NAME/checkpoint.
  std::string checkpoint_claim, checkpoint_host_path;
};

struct Job {
  ObjectMeta metadata;
  JobSpec spec;
};

using Resource = std::variant<Model, InferenceService, Tenant, Route, Node, Queue, Job>;

std::string_view kind_of(const Resource& resource);
const ObjectMeta& metadata_of(const Resource& resource);

// Decodes every document of a YAML stream. `file_name` prefixes messages.
// All errors found are reported, one per line.
Result<std::vector<Resource>> decode_resources(std::string_view yaml_text,
                                               std::string_view file_name);
Result<std::vector<Resource>> load_resource_file(const std::string& path);

// The YAML document of a resource; decode_resources(encode_resource(r)) == r.
std::string encode_resource(const Resource& resource);

// Cross-resource checks: unique names per kind, services naming existing
// models and queues ("default" needs no declaration), routes naming existing
// services, no model name served twice, queue parents that exist.
Status check_references(const std::vector<Resource>& resources);

}  // namespace loadstar::api
