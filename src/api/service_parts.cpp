#include "api/service_parts.h"

#include "engines/engines.h"

namespace loadstar::api::detail {

void decode_resources(Decoder& d, const YAML::Node& resources, const std::string& path,
                      double& cpu_out, uint64_t& memory_out, GpuRequirements& gpu_out) {
  MapReader r(d, resources, path);
  std::optional<double> cpu;
  if (r.number("cpu", cpu, 0, 1e6)) cpu_out = *cpu;
  std::optional<uint64_t> memory;
  if (r.quantity("memory", memory)) memory_out = *memory;
  if (YAML::Node gpu = r.get("gpu"); gpu && !gpu.IsNull()) {
    MapReader g(d, gpu, path + ".gpu");
    GpuRequirements& req = gpu_out;
    const bool has_count = g.uint("count", req.count);
    g.string("type", req.type, false);
    g.quantity("memory", req.memory_bytes);
    if (YAML::Node f = g.get("fraction"); f && !f.IsNull()) {
      double value = 0;
      bool parsed = f.IsScalar() && YAML::convert<double>::decode(f, value);
      if (!parsed || !(value >= 0.001 && value < 1)) {
        d.error(f, path + ".gpu.fraction",
                "must be a number from 0.001 (one milli-GPU) to below 1");
      } else {
        req.fraction = value;
        if (has_count && req.count > 1)
          d.error(f, path + ".gpu.fraction",
                  "a fraction is a share of one GPU; count must be 0 or 1");
      }
    }
    if (g.string("mig", req.mig, false)) {
      if (auto profile = parse_mig_profile(req.mig); !profile.ok())
        d.error(gpu["mig"], path + ".gpu.mig", profile.error().message);
      if (req.fraction || req.memory_bytes || (has_count && req.count > 1))
        d.error(gpu["mig"], path + ".gpu.mig",
                "a MIG slice is a whole request; set no count, fraction or memory with it");
    }
    if (req.fraction && req.memory_bytes)
      d.error(gpu, path + ".gpu", "set either memory or fraction, not both");
    if (!has_count && !req.fraction && !req.memory_bytes && req.mig.empty()) req.count = 1;
    g.finish();
  }
  r.finish();
}

AutoscalingSpec decode_autoscaling(Decoder& d, const YAML::Node& as, const std::string& path,
                                   uint32_t replicas, const std::string& replicas_field,
                                   const std::string& engine_name) {
  MapReader a(d, as, path);
  AutoscalingSpec out;
  if (!a.uint("maxReplicas", out.max_replicas))
    d.error(as, path + ".maxReplicas", "required");
  else if (out.max_replicas < replicas)
    d.error(as["maxReplicas"], path + ".maxReplicas",
            fmt::format("{} is less than {} ({})", out.max_replicas, replicas_field, replicas));
  if (YAML::Node targets = a.get("targets"); targets && !targets.IsNull()) {
    MapReader t(d, targets, path + ".targets");
    t.number("waitingPerReplica", out.waiting_per_replica, 0.01, 1e6);
    t.number("inFlightPerReplica", out.in_flight_per_replica, 0.01, 1e6);
    t.number("kvCacheUsage", out.kv_cache_usage, 0.01, 1);
    double ttft = 0;
    if (t.duration("ttftP90", ttft)) out.ttft_p90_s = ttft;
    double itl = 0;
    if (t.duration("itlP90", itl)) out.itl_p90_s = itl;
    t.number("prefillTokensPerReplica", out.prefill_tokens_per_replica, 1, 1e9);
    // A target the engine's /metrics cannot feed would never vote: say so
    // now rather than autoscale on a signal that stays zero.
    if (const engines::Engine* engine = engines::find(engine_name)) {
      const bool waiting = out.waiting_per_replica.has_value();
      const bool kv = out.kv_cache_usage.has_value();
      if (waiting && engine->metrics.waiting.empty())
        d.error(targets["waitingPerReplica"], path + ".targets.waitingPerReplica",
                fmt::format("{} exports no queue length; use inFlightPerReplica or ttftP90",
                            engine->name));
      if (kv && engine->metrics.kv_usage.empty())
        d.error(targets["kvCacheUsage"], path + ".targets.kvCacheUsage",
                fmt::format("{} exports no KV-cache use; use waitingPerReplica, "
                            "inFlightPerReplica or ttftP90",
                            engine->name));
    }
    t.finish();
  }
  if (YAML::Node slo = a.get("slo"); slo && !slo.IsNull()) {
    MapReader o(d, slo, path + ".slo");
    if (o.ok()) {  // not a map: said
      double ttft = 0;
      if (!slo["ttft"]) {
        d.error(slo, path + ".slo.ttft", "required");
      } else if (o.duration("ttft", ttft)) {  // a bad duration is said there
        if (ttft > 0)
          out.slo_ttft_s = ttft;
        else
          d.error(slo["ttft"], path + ".slo.ttft", "must be above 0, e.g. 2s");
      }
      std::optional<double> share;
      if (o.number("attainment", share, 0.5, 0.9999)) out.slo_attainment = *share;
      o.finish();
    }
  }
  a.duration("stableWindow", out.stable_window_s);
  a.duration("panicWindow", out.panic_window_s);
  if (out.panic_window_s > out.stable_window_s)
    d.error(as["panicWindow"], path + ".panicWindow", "must not be longer than stableWindow");
  std::optional<double> v;
  if (a.number("panicThreshold", v, 1, 1000)) out.panic_threshold = *v;
  if (a.number("maxScaleUpRate", v, 1, 1000)) out.max_scale_up_rate = *v;
  if (a.number("tolerance", v, 0, 0.99)) out.tolerance = *v;
  a.duration("scaleDownStabilization", out.scale_down_stabilization_s);
  a.finish();
  return out;
}

void decode_multi_node(Decoder& d, const YAML::Node& multi, InferenceService& svc) {
  MapReader m(d, multi, "spec.multiNode");
  if (!m.ok()) return;  // not a map: said
  MultiNodeSpec out;
  if (m.uint("size", out.size) && (out.size < 2 || out.size > 64))
    d.error(multi["size"], "spec.multiNode.size", "must be 2 to 64 (pods per replica)");
  if (m.string("topology", out.topology, false)) {
    bool known = false;
    for (std::string_view level : {"nvlink", "rack", "spine", "zone"})
      known |= out.topology == level;
    if (!known)
      d.error(multi["topology"], "spec.multiNode.topology",
              fmt::format("'{}' is not one of nvlink, rack, spine, zone", out.topology));
  }
  m.finish();
  const engines::Engine* engine = engines::find(svc.spec.engine.name);
  if (engine && !engine->multi_node)
    d.error(multi, "spec.multiNode",
            fmt::format("{} replicas span one machine in Loadstar so far (engine-sim, "
                        "sglang and vllm span several)",
                        engine->name));
  if (svc.spec.prefill)
    d.error(multi, "spec.multiNode", "not with spec.prefill (a disaggregated service) yet");
  if (svc.spec.gpu.fraction || svc.spec.gpu.memory_bytes || !svc.spec.gpu.mig.empty())
    d.error(multi, "spec.multiNode",
            "each pod of a multi-node replica takes whole GPUs (spec.resources.gpu.count)");
  svc.spec.multi_node = out;
}

}  // namespace loadstar::api::detail
