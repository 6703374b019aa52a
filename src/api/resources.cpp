#include "api/resources.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "api/cost_expression.h"
#include "api/disaggregation.h"
#include "api/schema.h"
#include "api/service_parts.h"
#include "api/yaml_reader.h"
#include "common/strings.h"
#include "common/units.h"
#include "engines/engines.h"

namespace loadstar::api {

std::string_view kind_of(const Resource& resource) {
  static constexpr std::string_view kKinds[] = {
      "Model", "InferenceService", "Tenant", "Route", "Node", "Queue", "Job"};
  static_assert(std::size(kKinds) == std::variant_size_v<Resource>);
  return kKinds[resource.index()];
}

const ObjectMeta& metadata_of(const Resource& resource) {
  return std::visit([](const auto& r) -> const ObjectMeta& { return r.metadata; }, resource);
}

namespace detail {
// While decoder_field_paths() runs: every field path the decoder asks for.
thread_local std::vector<std::string>* g_field_log = nullptr;
}  // namespace detail

namespace {

using detail::Decoder;
using detail::g_field_log;
using detail::MapReader;

// yaml-cpp 0.7's LoadAll() loops forever, allocating, on some malformed
// streams such as "!," (jbeder/yaml-cpp#1040; fixed upstream by #1319, not in
// Debian 12's 0.7.0; found by fuzz/resources_fuzz). So the stream is split
// into documents here, at lines starting with "---", and each is loaded on
// its own. Each document keeps the newlines before it, so marks still give
// the line in the whole file.
std::vector<std::string> split_documents(std::string_view text) {
  std::vector<std::string> docs;
  size_t doc_start = 0, line_start = 0, lines_before = 0, line = 0;
  auto flush = [&](size_t end) {
    std::string doc(lines_before, '\n');
    doc.append(text.substr(doc_start, end - doc_start));
    docs.push_back(std::move(doc));
  };
  while (line_start <= text.size()) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = text.size();
    const std::string_view current = text.substr(line_start, line_end - line_start);
    const bool marker = current.starts_with("---") && (current.size() == 3 || current[3] == ' ' ||
                                                       current[3] == '\t' || current[3] == '\r');
    if (marker) {
      flush(line_start);
      // The marker line itself becomes a blank line of the next document, and
      // anything after the marker on it ("--- {a: 1}") stays in that document.
      doc_start = line_start + 3;
      lines_before = line;
    }
    if (line_end == text.size()) break;
    line_start = line_end + 1;
    ++line;
  }
  flush(text.size());
  return docs;
}

// Whether a document holds anything but blank lines and comments.
bool has_content(std::string_view text) {
  bool line_start = true, in_comment = false;
  for (char c : text) {
    if (c == '\n') {
      line_start = true;
      in_comment = false;
      continue;
    }
    if (in_comment || c == ' ' || c == '\t' || c == '\r') continue;
    if (c == '#' && line_start) {
      in_comment = true;
      continue;
    }
    if (c == '~') continue;  // an explicit null
    return true;
  }
  return false;
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  return name.front() != '-' && name.back() != '-';
}

void decode_metadata(Decoder& d, MapReader& top, ObjectMeta& meta) {
  YAML::Node node = top.get("metadata");
  if (!node) {
    d.error(YAML::Node(), "metadata", "required");
    return;
  }
  MapReader m(d, node, "metadata");
  if (m.string("name", meta.name, true) && !valid_name(meta.name))
    d.error(node["name"], "metadata.name",
            fmt::format("'{}' must be lower-case letters, digits and '-', at most 63 characters",
                        meta.name));
  if (YAML::Node labels = m.get("labels"); labels && !labels.IsNull()) {
    if (!labels.IsMap())
      d.error(labels, "metadata.labels", "must be a map of strings");
    else
      for (const auto& kv : labels)
        meta.labels[kv.first.Scalar()] = kv.second.IsScalar() ? kv.second.Scalar() : "";
  }
  m.get("namespace");  // accepted for kubectl-shaped files; local mode has one namespace
  m.get("annotations");
  m.finish();
}

void decode_model(Decoder& d, MapReader& top, Model& model) {
  YAML::Node node = top.get("spec");
  MapReader spec(d, node, "spec");
  if (!node) d.error(YAML::Node(), "spec", "required");
  if (spec.string("source", model.spec.source, true)) {
    const std::string& s = model.spec.source;
    bool known = s.starts_with("file://") || s.starts_with("http://") ||
                 s.starts_with("https://") || s.starts_with("s3://") || s.starts_with("hf://") ||
                 s.starts_with("synth://");
    if (!known)
      d.error(
          node["source"], "spec.source",
          fmt::format(
              "'{}' must be a URI with scheme file://, http(s)://, s3://, hf:// or synth://", s));
  }
  if (spec.string("format", model.spec.format, false) && model.spec.format != "safetensors" &&
      model.spec.format != "gguf")
    d.error(node["format"], "spec.format",
            fmt::format("'{}' must be safetensors or gguf", model.spec.format));
  spec.quantity("size", model.spec.size_bytes);
  if (model.spec.source.starts_with("synth://") && !model.spec.size_bytes)
    d.error(node, "spec.size", "required for a synth:// model (how many bytes to write)");
  if (spec.string("adapterOf", model.spec.adapter_of, false)) {
    if (!valid_name(model.spec.adapter_of))
      d.error(node["adapterOf"], "spec.adapterOf",
              fmt::format("'{}' is not a Model name", model.spec.adapter_of));
    if (model.spec.source.starts_with("synth://"))
      d.error(node["source"], "spec.source",
              "an adapter cannot be synth://; write one with `loadstar model synth --lora-of "
              "BASE_DIR -o DIR` and name it file://DIR");
  }
  uint32_t rank = 0;
  if (spec.uint("rank", rank)) {
    if (rank == 0 || rank > 4096)
      d.error(node["rank"], "spec.rank", "must be 1 to 4096");
    else if (model.spec.adapter_of.empty())
      d.error(node["rank"], "spec.rank", "only for an adapter (spec.adapterOf)");
    else
      model.spec.rank = rank;
  }
  spec.finish();
}

void decode_quota(Decoder& d, MapReader& parent, const char* key, QueueQuota& out) {
  YAML::Node node = parent.get(key);
  if (!node || node.IsNull()) return;
  MapReader q(d, node, parent.field(key));
  q.number("gpu", out.gpu, 0, 1e9);
  q.number("cpu", out.cpu, 0, 1e9);
  q.quantity("memory", out.memory_bytes);
  q.finish();
}

void decode_queue(Decoder& d, MapReader& top, Queue& queue) {
  YAML::Node node = top.get("spec");
  MapReader spec(d, node, "spec");
  spec.string("parent", queue.spec.parent, false);
  decode_quota(d, spec, "deserved", queue.spec.deserved);
  decode_quota(d, spec, "limit", queue.spec.limit);
  std::optional<double> weight;
  if (spec.number("overQuotaWeight", weight, 0, 1e6)) queue.spec.over_quota_weight = *weight;
  const QueueQuota &des = queue.spec.deserved, &lim = queue.spec.limit;
  if (des.gpu && lim.gpu && *des.gpu > *lim.gpu)
    d.error(node["deserved"], "spec.deserved.gpu",
            fmt::format("{} is more than spec.limit.gpu ({})", *des.gpu, *lim.gpu));
  spec.finish();
}

void decode_node(Decoder& d, MapReader& top, Node& n) {
  YAML::Node node = top.get("spec");
  if (!node) d.error(YAML::Node(), "spec", "required");
  MapReader spec(d, node, "spec");
  std::optional<double> cpu;
  if (spec.number("cpu", cpu, 0, 1e6)) n.spec.cpu = *cpu;
  std::optional<uint64_t> memory;
  if (spec.quantity("memory", memory)) n.spec.memory_bytes = *memory;
  uint32_t cards = 0;
  spec.list("gpus", [&](const YAML::Node& item, const std::string& path) {
    MapReader g(d, item, path);
    NodeGpu gpu;
    g.string("model", gpu.model, true);
    std::optional<uint64_t> bytes;
    if (g.quantity("memory", bytes)) gpu.memory_bytes = *bytes;
    g.uint("count", gpu.count);
    g.uint("migSlices", gpu.mig_slices);
    if (gpu.mig_slices > 8)
      d.error(item["migSlices"], path + ".migSlices", "must be at most 8 (7 on A100/H100)");
    cards += gpu.count;
    g.finish();
    n.spec.gpus.push_back(std::move(gpu));
  });
  if (cards > 16) d.error(node["gpus"], "spec.gpus", fmt::format("{} GPUs; at most 16", cards));
  if (YAML::Node topology = spec.get("topology"); topology && !topology.IsNull()) {
    MapReader t(d, topology, "spec.topology");
    for (const char* level : {"nvlink", "rack", "spine", "zone"}) {
      std::string domain;
      if (t.string(level, domain, false)) n.spec.topology[level] = domain;
    }
    t.finish();
  }
  spec.boolean("schedulable", n.spec.schedulable);
  spec.finish();
}

// 3 or "25%".
std::optional<IntOrPercent> parse_int_or_percent(std::string_view text) {
  IntOrPercent out;
  if (text.ends_with('%')) {
    out.percent = true;
    text.remove_suffix(1);
  }
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != text.npos)
    return std::nullopt;
  out.value = static_cast<uint32_t>(std::stoul(std::string(text)));
  if (out.percent && out.value > 100) return std::nullopt;
  return out;
}

void decode_rollout(Decoder& d, const YAML::Node& node, RolloutSpec& out) {
  MapReader r(d, node, "spec.rollout");
  auto read = [&](const char* key, IntOrPercent& value) {
    YAML::Node v = r.get(key);
    if (!v || v.IsNull()) return;
    auto parsed = parse_int_or_percent(v.IsScalar() ? v.Scalar() : "");
    if (!parsed)
      d.error(v, r.field(key), "must be a count of replicas (1) or a percentage of them (\"25%\")");
    else
      value = *parsed;
  };
  read("maxSurge", out.max_surge);
  read("maxUnavailable", out.max_unavailable);
  if (YAML::Node canary = r.get("canary"); canary && !canary.IsNull()) {
    MapReader c(d, canary, "spec.rollout.canary");
    CanarySpec spec;
    c.list("steps", [&](const YAML::Node& item, const std::string& path) {
      MapReader st(d, item, path);
      CanaryStep step;
      if (!st.uint("weight", step.weight))
        d.error(item, path + ".weight", "required");
      else if (step.weight < 1 || step.weight > 99)
        d.error(item["weight"], path + ".weight",
                "must be a percentage from 1 to 99 (passing every step promotes)");
      st.duration("pause", step.pause_s);
      st.finish();
      spec.steps.push_back(step);
    });
    if (spec.steps.empty()) d.error(canary, "spec.rollout.canary.steps", "at least one step");
    if (YAML::Node analysis = c.get("analysis"); analysis && !analysis.IsNull()) {
      MapReader a(d, analysis, "spec.rollout.canary.analysis");
      a.uint("minRequests", spec.analysis.min_requests);
      std::optional<double> v;
      if (a.number("maxErrorRateIncrease", v, 0, 1)) spec.analysis.max_error_rate_increase = *v;
      // A ratio of 0 turns its check off.
      auto ratio = [&](const char* key, std::optional<double>& out) {
        if (!a.number(key, v, 0, 1000)) return;
        if (*v > 0 && *v < 1) d.error(analysis[key], a.field(key), "must be 0 (off) or at least 1");
        out = *v > 0 ? v : std::nullopt;
      };
      ratio("maxTtftP99Ratio", spec.analysis.max_ttft_p99_ratio);
      ratio("maxItlP99Ratio", spec.analysis.max_itl_p99_ratio);
      a.finish();
    }
    c.finish();
    out.canary = std::move(spec);
  }
  r.finish();
  if (out.max_surge.value == 0 && out.max_unavailable.value == 0)
    d.error(node, "spec.rollout",
            "maxSurge and maxUnavailable cannot both be 0: no replica could ever be replaced");
}

}  // namespace

uint32_t IntOrPercent::of(uint32_t desired, bool round_up) const {
  if (!percent) return value;
  const uint64_t scaled = static_cast<uint64_t>(desired) * value;
  return static_cast<uint32_t>(round_up ? (scaled + 99) / 100 : scaled / 100);
}

namespace {

using detail::Decoder;
using detail::MapReader;

void decode_service(Decoder& d, MapReader& top, InferenceService& svc) {
  YAML::Node node = top.get("spec");
  if (!node) d.error(YAML::Node(), "spec", "required");
  MapReader spec(d, node, "spec");
  spec.string("model", svc.spec.model, true);
  spec.uint("replicas", svc.spec.replicas);
  if (YAML::Node engine = spec.get("engine"); engine && !engine.IsNull()) {
    MapReader e(d, engine, "spec.engine");
    if (e.string("name", svc.spec.engine.name, false) && !engines::find(svc.spec.engine.name))
      d.error(engine["name"], "spec.engine.name",
              fmt::format("'{}' is not one of {}", svc.spec.engine.name, engines::names()));
    e.string("image", svc.spec.engine.image, false);
    e.optional_uint("contextLength", svc.spec.engine.context_length);
    e.optional_uint("maxSequences", svc.spec.engine.max_sequences);
    if (svc.spec.engine.max_sequences == 0u)
      d.error(engine["maxSequences"], "spec.engine.maxSequences", "must be at least 1");
    e.optional_uint("threads", svc.spec.engine.threads);
    e.boolean("prefixCache", svc.spec.engine.prefix_cache);
    e.boolean("kvEvents", svc.spec.engine.kv_events);
    if (svc.spec.engine.kv_events) {
      const engines::Engine* kind = engines::find(svc.spec.engine.name);
      if (kind && !kind->kv_events)
        d.error(engine["kvEvents"], "spec.engine.kvEvents",
                fmt::format("{} does not publish vLLM's KV events (engines that do: {})",
                            kind->name, engines::names(&engines::Engine::kv_events)));
      else if (!svc.spec.engine.prefix_cache)
        d.error(engine["kvEvents"], "spec.engine.kvEvents", "needs prefixCache");
    }
    if (YAML::Node args = e.get("args"); args && !args.IsNull()) {
      if (!args.IsSequence()) {
        d.error(args, "spec.engine.args", "must be a list of strings");
      } else {
        for (size_t i = 0; i < args.size(); ++i) {
          if (!args[i].IsScalar())
            d.error(args[i], fmt::format("spec.engine.args[{}]", i), "must be a string");
          else
            svc.spec.engine.args.push_back(args[i].Scalar());
        }
      }
    }
    e.finish();
  }
  spec.string("queue", svc.spec.queue, false);
  spec.integer("priority", svc.spec.priority);
  spec.boolean("preemptible", svc.spec.preemptible);
  if (YAML::Node resources = spec.get("resources"); resources && !resources.IsNull())
    detail::decode_resources(d, resources, "spec.resources", svc.spec.cpu, svc.spec.memory_bytes,
                             svc.spec.gpu);
  spec.optional_uint("minReplicas", svc.spec.min_replicas);
  if (svc.spec.min_replicas && *svc.spec.min_replicas > svc.spec.replicas)
    d.error(node["minReplicas"], "spec.minReplicas",
            fmt::format("{} is more than spec.replicas ({})", *svc.spec.min_replicas,
                        svc.spec.replicas));
  spec.duration("idleTimeout", svc.spec.idle_timeout_s);
  spec.uint("warmNodes", svc.spec.warm_nodes);
  if (YAML::Node as = spec.get("autoscaling"); as && !as.IsNull())
    svc.spec.autoscaling = detail::decode_autoscaling(d, as, "spec.autoscaling", svc.spec.replicas,
                                                      "spec.replicas", svc.spec.engine.name);
  if (YAML::Node rollout = spec.get("rollout"); rollout && !rollout.IsNull())
    decode_rollout(d, rollout, svc.spec.rollout);
  if (YAML::Node lora = spec.get("lora"); lora && !lora.IsNull()) {
    MapReader l(d, lora, "spec.lora");
    LoraSpec out;
    l.list("adapters", [&](const YAML::Node& item, const std::string& path) {
      if (!item.IsScalar() || !valid_name(item.Scalar()))
        d.error(item, path, "must be the name of a Model with spec.adapterOf");
      else
        out.adapters.push_back(item.Scalar());
    });
    if (out.adapters.empty()) d.error(lora, "spec.lora.adapters", "at least one adapter");
    if (l.uint("maxLoras", out.max_loras) && out.max_loras == 0)
      d.error(lora["maxLoras"], "spec.lora.maxLoras", "must be at least 1");
    if (l.optional_uint("maxCpuLoras", out.max_cpu_loras) && *out.max_cpu_loras < out.max_loras)
      d.error(lora["maxCpuLoras"], "spec.lora.maxCpuLoras",
              fmt::format("must be at least maxLoras ({})", out.max_loras));
    if (l.uint("maxRank", out.max_rank) && (out.max_rank == 0 || out.max_rank > 4096))
      d.error(lora["maxRank"], "spec.lora.maxRank", "must be 1 to 4096");
    std::string loading = "start";
    if (l.string("loading", loading, false) && loading != "start" && loading != "onDemand")
      d.error(lora["loading"], "spec.lora.loading",
              fmt::format("'{}' is not one of start, onDemand", loading));
    out.on_demand = loading == "onDemand";
    l.finish();
    const engines::Engine* engine = engines::find(svc.spec.engine.name);
    if (engine && !engine->lora)
      d.error(lora, "spec.lora",
              fmt::format("{} does not serve LoRA adapters through Loadstar yet", engine->name));
    if (engine && out.on_demand && !engine->lora_runtime_loading)
      d.error(lora["loading"], "spec.lora.loading",
              fmt::format("{} loads its adapters at start only through Loadstar (engine-sim and "
                          "vllm load them on demand)",
                          engine->name));
    svc.spec.lora = std::move(out);
  }
  if (YAML::Node prefill = spec.get("prefill"); prefill && !prefill.IsNull())
    detail::decode_prefill(d, prefill, svc);
  if (YAML::Node multi = spec.get("multiNode"); multi && !multi.IsNull())
    detail::decode_multi_node(d, multi, svc);
  if (YAML::Node routing = spec.get("routing"); routing && !routing.IsNull()) {
    MapReader r(d, routing, "spec.routing");
    RoutingSpec& out = svc.spec.routing;
    if (r.string("picker", out.picker, false) && out.picker != "scored" &&
        out.picker != "least-request" && out.picker != "round-robin")
      d.error(routing["picker"], "spec.routing.picker",
              fmt::format("'{}' is not one of scored, least-request, round-robin", out.picker));
    if (YAML::Node scorers = r.get("scorers"); scorers && !scorers.IsNull()) {
      MapReader w(d, scorers, "spec.routing.scorers");
      w.number("prefixCache", out.prefix_cache_weight, 0, 1000);
      w.number("inFlight", out.in_flight_weight, 0, 1000);
      w.number("queue", out.queue_weight, 0, 1000);
      w.number("kvCache", out.kv_cache_weight, 0, 1000);
      w.number("session", out.session_weight, 0, 1000);
      w.number("lora", out.lora_weight, 0, 1000);
      w.finish();
    }
    std::string header;
    if (r.string("sessionHeader", header, false)) out.session_header = header;
    if (YAML::Node hold = r.get("hold"); hold && !hold.IsNull()) {
      MapReader h(d, hold, "spec.routing.hold");
      h.uint("maxRequests", out.hold_max_requests);
      h.duration("timeout", out.hold_timeout_s);
      h.finish();
    }
    if (YAML::Node flow = r.get("flowControl"); flow && !flow.IsNull()) {
      MapReader f(d, flow, "spec.routing.flowControl");
      f.optional_uint("maxInFlightPerReplica", out.max_in_flight_per_replica);
      f.number("maxWaitingPerReplica", out.max_waiting_per_replica, 0, 1e6);
      f.number("maxKvCacheUsage", out.max_kv_cache_usage, 0, 1);
      f.uint("maxQueued", out.max_queued);
      f.duration("queueTimeout", out.queue_timeout_s);
      if (out.max_in_flight_per_replica == 0u)
        d.error(flow["maxInFlightPerReplica"], "spec.routing.flowControl.maxInFlightPerReplica",
                "must be at least 1");
      if (!out.max_in_flight_per_replica && !out.max_waiting_per_replica && !out.max_kv_cache_usage)
        d.error(flow, "spec.routing.flowControl",
                "needs a saturation threshold: maxInFlightPerReplica, maxWaitingPerReplica or "
                "maxKvCacheUsage");
      f.finish();
    }
    r.finish();
  }
  spec.finish();
}

bool valid_sha256(std::string_view hex) {
  if (hex.size() != 64) return false;
  for (char c : hex)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

void decode_tenant(Decoder& d, MapReader& top, Tenant& tenant) {
  YAML::Node node = top.get("spec");
  if (!node) d.error(YAML::Node(), "spec", "required");
  MapReader spec(d, node, "spec");
  TenantSpec& out = tenant.spec;
  spec.list("apiKeys", [&](const YAML::Node& item, const std::string& path) {
    MapReader k(d, item, path);
    TenantApiKey key;
    k.string("name", key.name, false);
    if (k.string("sha256", key.sha256, true) && !valid_sha256(key.sha256))
      d.error(item["sha256"], path + ".sha256",
              "must be 64 lower-case hex digits (the SHA-256 of the key; `loadstar apikey` "
              "prints one)");
    k.boolean("revoked", key.revoked);
    k.finish();
    out.api_keys.push_back(std::move(key));
  });
  if (YAML::Node limits = spec.get("limits"); limits && !limits.IsNull()) {
    MapReader l(d, limits, "spec.limits");
    l.optional_uint("requestsPerMinute", out.requests_per_minute);
    l.optional_uint("tokensPerMinute", out.tokens_per_minute);
    l.optional_uint("maxConcurrentRequests", out.max_concurrent_requests);
    l.finish();
  }
  if (spec.string("tokenCost", out.token_cost, false)) {
    auto parsed = CostExpression::parse(out.token_cost);
    if (!parsed.ok()) d.error(node["tokenCost"], "spec.tokenCost", parsed.error().message);
  }
  if (YAML::Node models = spec.get("models"); models && !models.IsNull()) {
    if (!models.IsSequence()) {
      d.error(models, "spec.models", "must be a list of model names");
    } else {
      for (size_t i = 0; i < models.size(); ++i) {
        if (!models[i].IsScalar() || models[i].Scalar().empty())
          d.error(models[i], fmt::format("spec.models[{}]", i), "must be a model name");
        else
          out.models.push_back(models[i].Scalar());
      }
    }
  }
  spec.integer("priority", out.priority);
  spec.boolean("sheddable", out.sheddable);
  spec.finish();
}

void decode_route(Decoder& d, MapReader& top, Route& route) {
  YAML::Node node = top.get("spec");
  if (!node) d.error(YAML::Node(), "spec", "required");
  MapReader spec(d, node, "spec");
  if (!spec.string("model", route.spec.model, false)) route.spec.model = route.metadata.name;
  spec.list("backends", [&](const YAML::Node& item, const std::string& path) {
    MapReader b(d, item, path);
    RouteBackend backend;
    const bool has_service = b.string("service", backend.service, false);
    const bool has_url = b.string("url", backend.url, false);
    if (has_service == has_url)
      d.error(item, path, "set exactly one of service (an InferenceService) or url");
    if (has_url && !backend.url.starts_with("http://") && !backend.url.starts_with("https://"))
      d.error(item["url"], path + ".url",
              fmt::format("'{}' must be an http:// or https:// URL such as "
                          "https://api.example.com/v1 or http://10.0.0.7:8000",
                          backend.url));
    if (b.string("caFile", backend.ca_file, false) && !backend.url.starts_with("https://"))
      d.error(item["caFile"], path + ".caFile", "only for an https:// url");
    b.string("model", backend.model, false);
    b.string("apiKeyEnv", backend.api_key_env, false);
    b.uint("weight", backend.weight);
    b.uint("priority", backend.priority);
    b.finish();
    route.spec.backends.push_back(std::move(backend));
  });
  if (route.spec.backends.empty())
    d.error(node, "spec.backends", "at least one backend is required");
  spec.finish();
}

// Decodes one document of kind T: its metadata, then its spec.
template <typename T, void (*Spec)(Decoder&, MapReader&, T&)>
Resource decode_kind(Decoder& d, MapReader& top) {
  T resource;
  decode_metadata(d, top, resource.metadata);
  Spec(d, top, resource);
  return resource;
}

using KindDecoder = Resource (*)(Decoder&, MapReader&);
const std::map<std::string, KindDecoder, std::less<>>& decoders() {
  static const std::map<std::string, KindDecoder, std::less<>> table = {
      {"Model", decode_kind<Model, decode_model>},
      {"InferenceService", decode_kind<InferenceService, decode_service>},
      {"Tenant", decode_kind<Tenant, decode_tenant>},
      {"Route", decode_kind<Route, decode_route>},
      {"Node", decode_kind<Node, decode_node>},
      {"Queue", decode_kind<Queue, decode_queue>},
      {"Job", decode_kind<Job, detail::decode_job>},
  };
  return table;
}

}  // namespace

Result<std::vector<Resource>> decode_resources(std::string_view yaml_text,
                                               std::string_view file_name) {
  std::vector<YAML::Node> docs;
  for (const std::string& text : split_documents(yaml_text)) {
    YAML::Node doc;
    try {
      doc = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      return make_error(ErrorCode::kInvalidArgument, "{}:{}:{}: invalid YAML: {}", file_name,
                        e.mark.line + 1, e.mark.column + 1, e.msg);
    }
    // yaml-cpp 0.7 answers some malformed input with a null document rather
    // than an error; a document that has content cannot be null.
    if (doc.IsNull() && has_content(text))
      return make_error(ErrorCode::kInvalidArgument,
                        "{}: invalid YAML: a document could not be parsed", file_name);
    docs.push_back(std::move(doc));
  }
  Decoder d(file_name);
  std::vector<Resource> resources;
  for (const YAML::Node& doc : docs) {
    if (doc.IsNull()) continue;  // an empty document between '---'
    d.set_subject("");
    MapReader top(d, doc, "");
    if (!top.ok()) {
      if (!doc.IsMap())
        d.error(doc, "document", "must be a map with apiVersion, kind, metadata, spec");
      continue;
    }
    std::string api_version, kind;
    if (top.string("apiVersion", api_version, true) && api_version != kApiVersion)
      d.error(doc["apiVersion"], "apiVersion",
              fmt::format("'{}' is not {}", api_version, kApiVersion));
    top.string("kind", kind, true);
    std::string name = doc["metadata"] && doc["metadata"].IsMap() && doc["metadata"]["name"]
                           ? doc["metadata"]["name"].as<std::string>("")
                           : "";
    d.set_subject(fmt::format("{} '{}'", kind.empty() ? "resource" : kind, name));
    if (auto decode = decoders().find(kind); decode != decoders().end()) {
      resources.push_back(decode->second(d, top));
    } else if (!kind.empty()) {
      d.error(
          doc["kind"], "kind",
          fmt::format("'{}' is not one of Model, InferenceService, Tenant, Route, Node, Queue, Job",
                      kind));
      continue;
    }
    top.get("status");  // written by Loadstar; ignored on input
    top.finish();
  }
  if (!d.errors().empty()) {
    std::string all;
    for (const auto& e : d.errors()) all += (all.empty() ? "" : "\n") + e;
    return Error{ErrorCode::kInvalidArgument, all};
  }
  return resources;
}

std::vector<std::string> decoder_field_paths(std::string_view yaml_text) {
  std::vector<std::string> paths;
  g_field_log = &paths;
  (void)decode_resources(yaml_text, "schema-probe");
  g_field_log = nullptr;
  return paths;
}

Result<std::vector<Resource>> load_resource_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::kNotFound, "{}: cannot read the file", path);
  std::stringstream text;
  text << in.rdbuf();
  return decode_resources(text.str(), path);
}

Status check_references(const std::vector<Resource>& resources) {
  std::set<std::pair<std::string, std::string>> seen;
  std::set<std::string> models;
  std::vector<std::string> errors;
  for (const Resource& r : resources) {
    const std::string kind(kind_of(r));
    const std::string& name = metadata_of(r).name;
    if (!seen.insert({kind, name}).second)
      errors.push_back(fmt::format("{} '{}' is defined twice", kind, name));
    if (kind == "Model") models.insert(name);
  }
  std::set<std::string> services, queues = {"default"};
  for (const Resource& r : resources) {
    if (const auto* svc = std::get_if<InferenceService>(&r)) services.insert(svc->metadata.name);
    if (const auto* q = std::get_if<Queue>(&r)) queues.insert(q->metadata.name);
  }
  for (const Resource& r : resources) {
    if (const auto* svc = std::get_if<InferenceService>(&r); svc && !queues.count(svc->spec.queue))
      errors.push_back(fmt::format("InferenceService '{}': spec.queue: no Queue named '{}'",
                                   svc->metadata.name, svc->spec.queue));
    if (const auto* job = std::get_if<Job>(&r); job && !queues.count(job->spec.queue))
      errors.push_back(fmt::format("Job '{}': spec.queue: no Queue named '{}'", job->metadata.name,
                                   job->spec.queue));
    if (const auto* svc = std::get_if<InferenceService>(&r);
        svc && svc->spec.prefill && services.count(prefill_service_name(svc->metadata.name)))
      errors.push_back(fmt::format(
          "InferenceService '{}': spec.prefill: its prefill pool runs as '{}', the name of "
          "another InferenceService",
          svc->metadata.name, prefill_service_name(svc->metadata.name)));
    if (const auto* svc = std::get_if<InferenceService>(&r)) {
      const engines::Engine* engine = engines::find(svc->spec.engine.name);
      for (const Resource& m : resources)
        if (const auto* model = std::get_if<Model>(&m); engine && model &&
                                                        model->metadata.name == svc->spec.model &&
                                                        model->spec.format != engine->model_format)
          errors.push_back(fmt::format(
              "InferenceService '{}': spec.engine.name: {} serves {} models, and Model '{}' is {} "
              "(spec.format)",
              svc->metadata.name, engine->name, engine->model_format, model->metadata.name,
              model->spec.format));
      // Each adapter: a Model that says it is an adapter of this service's
      // model, within the rank the service allows.
      if (svc->spec.lora)
        for (const std::string& name : svc->spec.lora->adapters) {
          const Model* adapter = nullptr;
          for (const Resource& m : resources)
            if (const auto* model = std::get_if<Model>(&m); model && model->metadata.name == name)
              adapter = model;
          const std::string where = fmt::format("InferenceService '{}': spec.lora.adapters: '{}'",
                                                svc->metadata.name, name);
          if (!adapter)
            errors.push_back(where + " is no Model");
          else if (adapter->spec.adapter_of != svc->spec.model)
            errors.push_back(
                fmt::format("{} is not an adapter of '{}' (its spec.adapterOf is '{}')", where,
                            svc->spec.model, adapter->spec.adapter_of));
          else if (adapter->spec.rank && *adapter->spec.rank > svc->spec.lora->max_rank)
            errors.push_back(fmt::format("{} has rank {}, above spec.lora.maxRank {}", where,
                                         *adapter->spec.rank, svc->spec.lora->max_rank));
          else if (engine && adapter->spec.format != engine->model_format)
            errors.push_back(fmt::format("{} is {} (spec.format), and {} serves {} adapters", where,
                                         adapter->spec.format, engine->name, engine->model_format));
        }
    }
    if (const auto* q = std::get_if<Queue>(&r);
        q && !q->spec.parent.empty() && !queues.count(q->spec.parent))
      errors.push_back(fmt::format("Queue '{}': spec.parent: no Queue named '{}'", q->metadata.name,
                                   q->spec.parent));
  }
  std::map<std::string, std::string> parent_of;
  for (const Resource& r : resources)
    if (const auto* q = std::get_if<Queue>(&r)) parent_of[q->metadata.name] = q->spec.parent;
  for (const auto& [name, parent] : parent_of) {
    std::string at = parent;
    for (size_t hops = 0; !at.empty() && hops <= parent_of.size(); ++hops) {
      if (at == name) {
        errors.push_back(fmt::format("Queue '{}': spec.parent: the parents form a loop", name));
        break;
      }
      auto it = parent_of.find(at);
      at = it == parent_of.end() ? "" : it->second;
    }
  }
  std::map<std::string, std::string> served;  // model name clients use -> route
  std::set<std::string> key_digests;
  for (const Resource& r : resources) {
    if (const auto* svc = std::get_if<InferenceService>(&r); svc && !models.count(svc->spec.model))
      errors.push_back(fmt::format("InferenceService '{}': spec.model: no Model named '{}'",
                                   svc->metadata.name, svc->spec.model));
    if (const auto* route = std::get_if<Route>(&r)) {
      const std::string& model = route->spec.model;
      if (services.count(model))
        errors.push_back(fmt::format(
            "Route '{}': spec.model: '{}' is already served by the InferenceService of that name",
            route->metadata.name, model));
      if (auto [it, fresh] = served.try_emplace(model, route->metadata.name); !fresh)
        errors.push_back(fmt::format("Route '{}': spec.model: '{}' is already routed by Route '{}'",
                                     route->metadata.name, model, it->second));
      for (size_t i = 0; i < route->spec.backends.size(); ++i) {
        const auto& b = route->spec.backends[i];
        if (!b.service.empty() && !services.count(b.service))
          errors.push_back(
              fmt::format("Route '{}': spec.backends[{}].service: no InferenceService "
                          "named '{}'",
                          route->metadata.name, i, b.service));
      }
    }
    if (const auto* tenant = std::get_if<Tenant>(&r))
      for (const auto& k : tenant->spec.api_keys)
        if (!key_digests.insert(k.sha256).second)
          errors.push_back(fmt::format("Tenant '{}': API key '{}' is also given to another tenant",
                                       tenant->metadata.name, k.name));
  }
  if (errors.empty()) return ok_status();
  std::string all;
  for (const auto& e : errors) all += (all.empty() ? "" : "\n") + e;
  return Error{ErrorCode::kInvalidArgument, all};
}

}  // namespace loadstar::api
