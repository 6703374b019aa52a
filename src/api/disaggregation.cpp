#include "api/disaggregation.h"

#include <optional>
#include <span>

#include <fmt/format.h>

#include "api/service_parts.h"
#include "engines/engines.h"

namespace loadstar::api {

namespace {

// The last value a flag takes in `args` ("--flag N" or "--flag=N").
std::optional<std::string> flag_value(const std::vector<std::string>& args,
                                      std::span<const std::string_view> names) {
  std::optional<std::string> value;
  for (size_t i = 0; i < args.size(); ++i)
    for (std::string_view name : names) {
      if (args[i] == name && i + 1 < args.size())
        value = args[i + 1];
      else if (args[i].size() > name.size() && args[i].starts_with(name) &&
               args[i][name.size()] == '=')
        value = args[i].substr(name.size() + 1);
    }
  return value;
}

bool mentions(const std::vector<std::string>& args, std::string_view name) {
  for (const std::string& a : args)
    if (a == name || (a.starts_with(name) && a.size() > name.size() && a[name.size()] == '='))
      return true;
  return false;
}

constexpr std::string_view kBlockSize[] = {"--block-size"};
constexpr std::string_view kTensorParallel[] = {"--tensor-parallel-size", "-tp"};

}  // namespace

std::string prefill_service_name(std::string_view service) {
  return fmt::format("{}-prefill", service);
}

std::vector<InferenceService> role_services(const InferenceService& svc) {
  std::vector<InferenceService> out{svc};
  if (!svc.spec.prefill || !svc.spec.prefill_of.empty()) return out;
  const PrefillSpec& p = *svc.spec.prefill;
  InferenceService prefill = svc;
  prefill.metadata.name = prefill_service_name(svc.metadata.name);
  prefill.spec.prefill_of = svc.metadata.name;
  prefill.spec.replicas = p.replicas;
  prefill.spec.min_replicas = p.min_replicas;
  if (p.cpu) prefill.spec.cpu = *p.cpu;
  if (p.memory_bytes) prefill.spec.memory_bytes = *p.memory_bytes;
  if (p.gpu) prefill.spec.gpu = *p.gpu;
  prefill.spec.autoscaling = p.autoscaling;
  prefill.spec.engine.args.insert(prefill.spec.engine.args.end(), p.args.begin(), p.args.end());
  out.push_back(std::move(prefill));
  return out;
}

const std::string& served_name(const InferenceService& svc) {
  return svc.spec.prefill_of.empty() ? svc.metadata.name : svc.spec.prefill_of;
}

std::string_view kv_role(const InferenceService& svc) {
  if (!svc.spec.prefill_of.empty()) return "kv_producer";
  return svc.spec.prefill ? "kv_both" : "";
}

std::string_view pd_role(const InferenceService& svc) {
  if (!svc.spec.prefill_of.empty()) return "prefill";
  return svc.spec.prefill ? "decode" : "";
}

std::vector<std::pair<std::string, std::string>> disaggregation_errors(
    const InferenceServiceSpec& spec) {
  std::vector<std::pair<std::string, std::string>> errors;
  if (!spec.prefill) return errors;
  const PrefillSpec& p = *spec.prefill;
  const engines::Engine* engine = engines::find(spec.engine.name);
  if (engine && !engine->kv_transfer)
    errors.emplace_back("spec.prefill",
                        fmt::format("{} cannot hand its KV cache to another server through "
                                    "Loadstar (engine-sim and vllm can, with NixlConnector)",
                                    engine->name));
  if (engine && engine->name != "engine-sim" && p.link != "rdma")
    errors.emplace_back(
        "spec.prefill.link",
        fmt::format("models engine-sim's transfer; {} uses the link NIXL finds", engine->name));
  if (mentions(spec.engine.args, "--kv-transfer-config"))
    errors.emplace_back("spec.engine.args",
                        "--kv-transfer-config is set by Loadstar for a service with spec.prefill");
  if (mentions(p.args, "--kv-transfer-config"))
    errors.emplace_back("spec.prefill.args",
                        "--kv-transfer-config is set by Loadstar for a service with spec.prefill");
  // The KV layout both pools must share.
  std::vector<std::string> prefill_args = spec.engine.args;
  prefill_args.insert(prefill_args.end(), p.args.begin(), p.args.end());
  const auto decode_block = flag_value(spec.engine.args, kBlockSize);
  const auto prefill_block = flag_value(prefill_args, kBlockSize);
  if (decode_block.value_or("default") != prefill_block.value_or("default"))
    errors.emplace_back(
        "spec.prefill.args",
        fmt::format("--block-size {} differs from the decode pool's ({}): both pools must lay "
                    "the KV cache out alike",
                    prefill_block.value_or("default"), decode_block.value_or("default")));
  const uint32_t decode_gpus = spec.gpu.count;
  const uint32_t prefill_gpus = p.gpu ? p.gpu->count : decode_gpus;
  if (prefill_gpus != decode_gpus)
    errors.emplace_back(
        "spec.prefill.resources.gpu.count",
        fmt::format("{} GPUs differ from the decode pool's {}: the tensor-parallel size shapes "
                    "the KV layout both pools must share",
                    prefill_gpus, decode_gpus));
  const auto decode_tp = flag_value(spec.engine.args, kTensorParallel);
  const auto prefill_tp = flag_value(prefill_args, kTensorParallel);
  if (decode_tp != prefill_tp)
    errors.emplace_back("spec.prefill.args",
                        fmt::format("--tensor-parallel-size {} differs from the decode pool's ({})",
                                    prefill_tp.value_or("default"), decode_tp.value_or("default")));
  if (p.min_replicas && *p.min_replicas > p.replicas)
    errors.emplace_back(
        "spec.prefill.minReplicas",
        fmt::format("{} is more than spec.prefill.replicas ({})", *p.min_replicas, p.replicas));
  return errors;
}

namespace detail {

void decode_prefill(Decoder& d, const YAML::Node& node, InferenceService& svc) {
  MapReader r(d, node, "spec.prefill");
  PrefillSpec p;
  r.uint("replicas", p.replicas);
  r.optional_uint("minReplicas", p.min_replicas);
  if (YAML::Node resources = r.get("resources"); resources && !resources.IsNull()) {
    double cpu = 0;
    uint64_t memory = 0;
    GpuRequirements gpu;
    decode_resources(d, resources, "spec.prefill.resources", cpu, memory, gpu);
    if (resources["cpu"]) p.cpu = cpu;
    if (resources["memory"]) p.memory_bytes = memory;
    if (resources["gpu"] && !resources["gpu"].IsNull()) p.gpu = gpu;
  }
  if (YAML::Node args = r.get("args"); args && !args.IsNull()) {
    if (!args.IsSequence()) {
      d.error(args, "spec.prefill.args", "must be a list of strings");
    } else {
      for (size_t i = 0; i < args.size(); ++i) {
        if (!args[i].IsScalar())
          d.error(args[i], fmt::format("spec.prefill.args[{}]", i), "must be a string");
        else
          p.args.push_back(args[i].Scalar());
      }
    }
  }
  if (YAML::Node as = r.get("autoscaling"); as && !as.IsNull())
    p.autoscaling = decode_autoscaling(d, as, "spec.prefill.autoscaling", p.replicas,
                                       "spec.prefill.replicas", svc.spec.engine.name);
  r.uint("nonCachedTokens", p.non_cached_tokens);
  if (r.string("link", p.link, false) && p.link != "nvlink" && p.link != "rdma" && p.link != "tcp")
    d.error(node["link"], "spec.prefill.link",
            fmt::format("'{}' is not one of nvlink, rdma, tcp", p.link));
  r.finish();
  svc.spec.prefill = std::move(p);
  for (const auto& [field, message] : disaggregation_errors(svc.spec))
    d.error(node, field, message);
}

}  // namespace detail

}  // namespace loadstar::api
