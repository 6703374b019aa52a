// Resources back to YAML, in the shape decode_resources reads (the local
// store's files, revision records, `loadstar get -o yaml`).
#include <yaml-cpp/yaml.h>

#include "api/resources.h"
#include "common/units.h"

namespace loadstar::api {

namespace {

void encode_gpu(YAML::Emitter& out, const GpuRequirements& gpu) {
  out << YAML::Key << "gpu" << YAML::Value << YAML::BeginMap << YAML::Key << "count" << YAML::Value
      << gpu.count;
  if (!gpu.type.empty()) out << YAML::Key << "type" << YAML::Value << gpu.type;
  if (gpu.memory_bytes)
    out << YAML::Key << "memory" << YAML::Value << std::to_string(*gpu.memory_bytes);
  if (gpu.fraction) out << YAML::Key << "fraction" << YAML::Value << *gpu.fraction;
  if (!gpu.mig.empty()) out << YAML::Key << "mig" << YAML::Value << gpu.mig;
  out << YAML::EndMap;
}

void encode_autoscaling(YAML::Emitter& out, const AutoscalingSpec& a) {
  out << YAML::Key << "autoscaling" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "maxReplicas" << YAML::Value << a.max_replicas;
  out << YAML::Key << "targets" << YAML::Value << YAML::BeginMap;
  if (a.waiting_per_replica)
    out << YAML::Key << "waitingPerReplica" << YAML::Value << *a.waiting_per_replica;
  if (a.in_flight_per_replica)
    out << YAML::Key << "inFlightPerReplica" << YAML::Value << *a.in_flight_per_replica;
  if (a.kv_cache_usage) out << YAML::Key << "kvCacheUsage" << YAML::Value << *a.kv_cache_usage;
  if (a.ttft_p90_s)
    out << YAML::Key << "ttftP90" << YAML::Value << fmt::format("{}s", *a.ttft_p90_s);
  if (a.itl_p90_s) out << YAML::Key << "itlP90" << YAML::Value << fmt::format("{}s", *a.itl_p90_s);
  if (a.prefill_tokens_per_replica)
    out << YAML::Key << "prefillTokensPerReplica" << YAML::Value << *a.prefill_tokens_per_replica;
  out << YAML::EndMap;
  if (a.slo_ttft_s) {
    out << YAML::Key << "slo" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "ttft" << YAML::Value << fmt::format("{}s", *a.slo_ttft_s);
    out << YAML::Key << "attainment" << YAML::Value << a.slo_attainment;
    out << YAML::EndMap;
  }
  out << YAML::Key << "stableWindow" << YAML::Value << fmt::format("{}s", a.stable_window_s);
  out << YAML::Key << "panicWindow" << YAML::Value << fmt::format("{}s", a.panic_window_s);
  out << YAML::Key << "panicThreshold" << YAML::Value << a.panic_threshold;
  out << YAML::Key << "maxScaleUpRate" << YAML::Value << a.max_scale_up_rate;
  out << YAML::Key << "tolerance" << YAML::Value << a.tolerance;
  out << YAML::Key << "scaleDownStabilization" << YAML::Value
      << fmt::format("{}s", a.scale_down_stabilization_s);
  out << YAML::EndMap;
}

}  // namespace

std::string encode_resource(const Resource& resource) {
  YAML::Emitter out;
  out << YAML::BeginMap << YAML::Key << "apiVersion" << YAML::Value << kApiVersion;
  out << YAML::Key << "kind" << YAML::Value << std::string(kind_of(resource));
  const ObjectMeta& meta = metadata_of(resource);
  out << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap << YAML::Key << "name"
      << YAML::Value << meta.name;
  if (!meta.labels.empty()) {
    out << YAML::Key << "labels" << YAML::Value << YAML::BeginMap;
    for (const auto& [k, v] : meta.labels)
      out << YAML::Key << k << YAML::Value << YAML::DoubleQuoted << v;
    out << YAML::EndMap;
  }
  out << YAML::EndMap << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  if (const auto* m = std::get_if<Model>(&resource)) {
    out << YAML::Key << "source" << YAML::Value << m->spec.source;
    out << YAML::Key << "format" << YAML::Value << m->spec.format;
    if (m->spec.size_bytes)
      out << YAML::Key << "size" << YAML::Value << std::to_string(*m->spec.size_bytes);
    if (!m->spec.adapter_of.empty())
      out << YAML::Key << "adapterOf" << YAML::Value << m->spec.adapter_of;
    if (m->spec.rank) out << YAML::Key << "rank" << YAML::Value << *m->spec.rank;
  } else if (const auto* svc = std::get_if<InferenceService>(&resource)) {
    const auto& s = svc->spec;
    out << YAML::Key << "model" << YAML::Value << s.model;
    out << YAML::Key << "replicas" << YAML::Value << s.replicas;
    out << YAML::Key << "engine" << YAML::Value << YAML::BeginMap << YAML::Key << "name"
        << YAML::Value << s.engine.name << YAML::Key << "args" << YAML::Value << YAML::Flow
        << YAML::BeginSeq;
    for (const auto& a : s.engine.args) out << YAML::DoubleQuoted << a;
    out << YAML::EndSeq;
    if (!s.engine.image.empty()) out << YAML::Key << "image" << YAML::Value << s.engine.image;
    if (s.engine.context_length)
      out << YAML::Key << "contextLength" << YAML::Value << *s.engine.context_length;
    if (s.engine.max_sequences)
      out << YAML::Key << "maxSequences" << YAML::Value << *s.engine.max_sequences;
    if (s.engine.threads) out << YAML::Key << "threads" << YAML::Value << *s.engine.threads;
    if (!s.engine.prefix_cache) out << YAML::Key << "prefixCache" << YAML::Value << false;
    if (s.engine.kv_events) out << YAML::Key << "kvEvents" << YAML::Value << true;
    out << YAML::EndMap;
    out << YAML::Key << "queue" << YAML::Value << s.queue;
    out << YAML::Key << "priority" << YAML::Value << s.priority;
    out << YAML::Key << "preemptible" << YAML::Value << s.preemptible;
    out << YAML::Key << "resources" << YAML::Value << YAML::BeginMap;
    if (s.cpu > 0) out << YAML::Key << "cpu" << YAML::Value << s.cpu;
    if (s.memory_bytes > 0)
      out << YAML::Key << "memory" << YAML::Value << std::to_string(s.memory_bytes);
    encode_gpu(out, s.gpu);
    out << YAML::EndMap;
    if (s.min_replicas) out << YAML::Key << "minReplicas" << YAML::Value << *s.min_replicas;
    out << YAML::Key << "idleTimeout" << YAML::Value << fmt::format("{}s", s.idle_timeout_s);
    out << YAML::Key << "warmNodes" << YAML::Value << s.warm_nodes;
    if (s.autoscaling) encode_autoscaling(out, *s.autoscaling);
    if (s.rollout != RolloutSpec{}) {
      auto count = [](const IntOrPercent& v) {
        return v.percent ? fmt::format("{}%", v.value) : std::to_string(v.value);
      };
      out << YAML::Key << "rollout" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "maxSurge" << YAML::Value << count(s.rollout.max_surge);
      out << YAML::Key << "maxUnavailable" << YAML::Value << count(s.rollout.max_unavailable);
      if (const auto& canary = s.rollout.canary) {
        out << YAML::Key << "canary" << YAML::Value << YAML::BeginMap;
        out << YAML::Key << "steps" << YAML::Value << YAML::BeginSeq;
        for (const CanaryStep& step : canary->steps)
          out << YAML::Flow << YAML::BeginMap << YAML::Key << "weight" << YAML::Value << step.weight
              << YAML::Key << "pause" << YAML::Value << fmt::format("{}s", step.pause_s)
              << YAML::EndMap;
        out << YAML::EndSeq;
        const CanaryAnalysis& a = canary->analysis;
        out << YAML::Key << "analysis" << YAML::Value << YAML::BeginMap;
        out << YAML::Key << "minRequests" << YAML::Value << a.min_requests;
        out << YAML::Key << "maxErrorRateIncrease" << YAML::Value << a.max_error_rate_increase;
        out << YAML::Key << "maxTtftP99Ratio" << YAML::Value << a.max_ttft_p99_ratio.value_or(0);
        out << YAML::Key << "maxItlP99Ratio" << YAML::Value << a.max_itl_p99_ratio.value_or(0);
        out << YAML::EndMap << YAML::EndMap;
      }
      out << YAML::EndMap;
    }
    if (s.lora) {
      out << YAML::Key << "lora" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "adapters" << YAML::Value << YAML::Flow << s.lora->adapters;
      out << YAML::Key << "maxLoras" << YAML::Value << s.lora->max_loras;
      if (s.lora->max_cpu_loras)
        out << YAML::Key << "maxCpuLoras" << YAML::Value << *s.lora->max_cpu_loras;
      out << YAML::Key << "maxRank" << YAML::Value << s.lora->max_rank;
      if (s.lora->on_demand) out << YAML::Key << "loading" << YAML::Value << "onDemand";
      out << YAML::EndMap;
    }
    if (s.prefill) {
      const PrefillSpec& p = *s.prefill;
      out << YAML::Key << "prefill" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "replicas" << YAML::Value << p.replicas;
      if (p.min_replicas) out << YAML::Key << "minReplicas" << YAML::Value << *p.min_replicas;
      if (p.cpu || p.memory_bytes || p.gpu) {
        out << YAML::Key << "resources" << YAML::Value << YAML::BeginMap;
        if (p.cpu) out << YAML::Key << "cpu" << YAML::Value << *p.cpu;
        if (p.memory_bytes)
          out << YAML::Key << "memory" << YAML::Value << std::to_string(*p.memory_bytes);
        if (p.gpu) encode_gpu(out, *p.gpu);
        out << YAML::EndMap;
      }
      out << YAML::Key << "args" << YAML::Value << YAML::Flow << YAML::BeginSeq;
      for (const auto& a : p.args) out << YAML::DoubleQuoted << a;
      out << YAML::EndSeq;
      if (p.autoscaling) encode_autoscaling(out, *p.autoscaling);
      out << YAML::Key << "nonCachedTokens" << YAML::Value << p.non_cached_tokens;
      out << YAML::Key << "link" << YAML::Value << p.link;
      out << YAML::EndMap;
    }
    if (s.multi_node)
      out << YAML::Key << "multiNode" << YAML::Value << YAML::BeginMap << YAML::Key << "size"
          << YAML::Value << s.multi_node->size << YAML::Key << "topology" << YAML::Value
          << s.multi_node->topology << YAML::EndMap;
    const RoutingSpec& r = s.routing;
    out << YAML::Key << "routing" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "picker" << YAML::Value << r.picker;
    out << YAML::Key << "scorers" << YAML::Value << YAML::BeginMap;
    auto weight = [&out](const char* key, const std::optional<double>& w) {
      if (w) out << YAML::Key << key << YAML::Value << *w;
    };
    weight("prefixCache", r.prefix_cache_weight);
    weight("inFlight", r.in_flight_weight);
    weight("queue", r.queue_weight);
    weight("kvCache", r.kv_cache_weight);
    weight("session", r.session_weight);
    weight("lora", r.lora_weight);
    out << YAML::EndMap;
    if (r.session_header)
      out << YAML::Key << "sessionHeader" << YAML::Value << YAML::DoubleQuoted << *r.session_header;
    out << YAML::Key << "hold" << YAML::Value << YAML::BeginMap << YAML::Key << "maxRequests"
        << YAML::Value << r.hold_max_requests << YAML::Key << "timeout" << YAML::Value
        << fmt::format("{}s", r.hold_timeout_s) << YAML::EndMap;
    if (r.max_in_flight_per_replica || r.max_waiting_per_replica || r.max_kv_cache_usage) {
      out << YAML::Key << "flowControl" << YAML::Value << YAML::BeginMap;
      if (r.max_in_flight_per_replica)
        out << YAML::Key << "maxInFlightPerReplica" << YAML::Value << *r.max_in_flight_per_replica;
      if (r.max_waiting_per_replica)
        out << YAML::Key << "maxWaitingPerReplica" << YAML::Value << *r.max_waiting_per_replica;
      if (r.max_kv_cache_usage)
        out << YAML::Key << "maxKvCacheUsage" << YAML::Value << *r.max_kv_cache_usage;
      out << YAML::Key << "maxQueued" << YAML::Value << r.max_queued << YAML::Key << "queueTimeout"
          << YAML::Value << fmt::format("{}s", r.queue_timeout_s) << YAML::EndMap;
    }
    out << YAML::EndMap;
  } else if (const auto* tenant = std::get_if<Tenant>(&resource)) {
    const TenantSpec& t = tenant->spec;
    out << YAML::Key << "apiKeys" << YAML::Value << YAML::BeginSeq;
    for (const auto& k : t.api_keys) {
      out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << YAML::DoubleQuoted << k.name
          << YAML::Key << "sha256" << YAML::Value << k.sha256;
      if (k.revoked) out << YAML::Key << "revoked" << YAML::Value << true;
      out << YAML::EndMap;
    }
    out << YAML::EndSeq;
    out << YAML::Key << "limits" << YAML::Value << YAML::BeginMap;
    if (t.requests_per_minute)
      out << YAML::Key << "requestsPerMinute" << YAML::Value << *t.requests_per_minute;
    if (t.tokens_per_minute)
      out << YAML::Key << "tokensPerMinute" << YAML::Value << *t.tokens_per_minute;
    if (t.max_concurrent_requests)
      out << YAML::Key << "maxConcurrentRequests" << YAML::Value << *t.max_concurrent_requests;
    out << YAML::EndMap;
    out << YAML::Key << "tokenCost" << YAML::Value << YAML::DoubleQuoted << t.token_cost;
    if (!t.models.empty()) {
      out << YAML::Key << "models" << YAML::Value << YAML::Flow << YAML::BeginSeq;
      for (const auto& m : t.models) out << YAML::DoubleQuoted << m;
      out << YAML::EndSeq;
    }
    if (t.priority != 0) out << YAML::Key << "priority" << YAML::Value << t.priority;
    if (t.sheddable) out << YAML::Key << "sheddable" << YAML::Value << true;
  } else if (const auto* node = std::get_if<Node>(&resource)) {
    const NodeSpec& n = node->spec;
    out << YAML::Key << "cpu" << YAML::Value << n.cpu;
    out << YAML::Key << "memory" << YAML::Value << std::to_string(n.memory_bytes);
    out << YAML::Key << "gpus" << YAML::Value << YAML::BeginSeq;
    for (const auto& g : n.gpus) {
      out << YAML::BeginMap << YAML::Key << "model" << YAML::Value << YAML::DoubleQuoted << g.model
          << YAML::Key << "memory" << YAML::Value << std::to_string(g.memory_bytes) << YAML::Key
          << "count" << YAML::Value << g.count;
      if (g.mig_slices) out << YAML::Key << "migSlices" << YAML::Value << g.mig_slices;
      out << YAML::EndMap;
    }
    out << YAML::EndSeq;
    out << YAML::Key << "topology" << YAML::Value << YAML::BeginMap;
    for (const auto& [level, domain] : n.topology)
      out << YAML::Key << level << YAML::Value << YAML::DoubleQuoted << domain;
    out << YAML::EndMap;
    out << YAML::Key << "schedulable" << YAML::Value << n.schedulable;
  } else if (const auto* job = std::get_if<Job>(&resource)) {
    const JobSpec& j = job->spec;
    out << YAML::Key << "command" << YAML::Value << YAML::BeginSeq;
    for (const auto& arg : j.command) out << YAML::DoubleQuoted << arg;
    out << YAML::EndSeq;
    if (!j.image.empty()) out << YAML::Key << "image" << YAML::Value << j.image;
    if (!j.env.empty()) {
      out << YAML::Key << "env" << YAML::Value << YAML::BeginMap;
      for (const auto& [k, v] : j.env)
        out << YAML::Key << k << YAML::Value << YAML::DoubleQuoted << v;
      out << YAML::EndMap;
    }
    out << YAML::Key << "workers" << YAML::Value << j.workers;
    out << YAML::Key << "resources" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "cpu" << YAML::Value << j.cpu;
    out << YAML::Key << "memory" << YAML::Value << std::to_string(j.memory_bytes);
    if (j.gpu.count || j.gpu.fraction || j.gpu.memory_bytes || !j.gpu.mig.empty())
      encode_gpu(out, j.gpu);
    out << YAML::EndMap;
    if (j.topology)
      out << YAML::Key << "topology" << YAML::Value << YAML::BeginMap << YAML::Key << "level"
          << YAML::Value << j.topology->level << YAML::Key << "required" << YAML::Value
          << j.topology->required << YAML::EndMap;
    out << YAML::Key << "queue" << YAML::Value << j.queue;
    out << YAML::Key << "priority" << YAML::Value << j.priority;
    out << YAML::Key << "preemptible" << YAML::Value << j.preemptible;
    out << YAML::Key << "terminationGracePeriodSeconds" << YAML::Value << j.termination_grace_s;
    out << YAML::Key << "backoffLimit" << YAML::Value << j.backoff_limit;
    if (j.active_deadline_s)
      out << YAML::Key << "activeDeadlineSeconds" << YAML::Value << *j.active_deadline_s;
    if (!j.checkpoint_claim.empty())
      out << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap << YAML::Key << "claimName"
          << YAML::Value << j.checkpoint_claim << YAML::EndMap;
    else if (!j.checkpoint_host_path.empty())
      out << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap << YAML::Key << "hostPath"
          << YAML::Value << j.checkpoint_host_path << YAML::EndMap;
  } else if (const auto* queue = std::get_if<Queue>(&resource)) {
    const QueueSpec& q = queue->spec;
    if (!q.parent.empty()) out << YAML::Key << "parent" << YAML::Value << q.parent;
    auto quota = [&out](const char* key, const QueueQuota& v) {
      out << YAML::Key << key << YAML::Value << YAML::BeginMap;
      if (v.gpu) out << YAML::Key << "gpu" << YAML::Value << *v.gpu;
      if (v.cpu) out << YAML::Key << "cpu" << YAML::Value << *v.cpu;
      if (v.memory_bytes)
        out << YAML::Key << "memory" << YAML::Value << std::to_string(*v.memory_bytes);
      out << YAML::EndMap;
    };
    quota("deserved", q.deserved);
    quota("limit", q.limit);
    out << YAML::Key << "overQuotaWeight" << YAML::Value << q.over_quota_weight;
  } else {
    const RouteSpec& r = std::get<Route>(resource).spec;
    out << YAML::Key << "model" << YAML::Value << YAML::DoubleQuoted << r.model;
    out << YAML::Key << "backends" << YAML::Value << YAML::BeginSeq;
    for (const auto& b : r.backends) {
      out << YAML::BeginMap;
      if (!b.service.empty()) out << YAML::Key << "service" << YAML::Value << b.service;
      if (!b.url.empty()) out << YAML::Key << "url" << YAML::Value << b.url;
      if (!b.model.empty())
        out << YAML::Key << "model" << YAML::Value << YAML::DoubleQuoted << b.model;
      if (!b.api_key_env.empty()) out << YAML::Key << "apiKeyEnv" << YAML::Value << b.api_key_env;
      if (!b.ca_file.empty()) out << YAML::Key << "caFile" << YAML::Value << b.ca_file;
      out << YAML::Key << "weight" << YAML::Value << b.weight << YAML::Key << "priority"
          << YAML::Value << b.priority << YAML::EndMap;
    }
    out << YAML::EndSeq;
  }
  out << YAML::EndMap << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace loadstar::api
