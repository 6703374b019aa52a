// A Job's spec from YAML (api/resources.h says what each field means).
#include <cctype>

#include "api/service_parts.h"

namespace loadstar::api::detail {

namespace {

bool env_name_ok(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

void decode_command(Decoder& d, MapReader& spec, const YAML::Node& node, JobSpec& out) {
  spec.list("command", [&](const YAML::Node& item, const std::string& path) {
    if (!item.IsScalar())
      d.error(item, path, "must be a string");
    else
      out.command.push_back(item.Scalar());
  });
  if (out.command.empty())
    d.error(node["command"] ? node["command"] : node, "spec.command",
            "required: the program and its arguments, e.g. [python, train.py]");
  else if (out.command.front().empty())
    d.error(node["command"], "spec.command[0]", "the program must not be empty");
}

void decode_env(Decoder& d, MapReader& spec, JobSpec& out) {
  YAML::Node env = spec.get("env");
  if (!env || env.IsNull()) return;
  if (!env.IsMap()) {
    d.error(env, "spec.env", "must be a map of NAME: value");
    return;
  }
  for (const auto& kv : env) {
    const std::string name = kv.first.Scalar();
    const std::string path = "spec.env." + name;
    if (!env_name_ok(name))
      d.error(kv.first, path, "not a valid environment variable name");
    else if (name.starts_with("LOADSTAR_") || name.starts_with("LWS_") ||
             name == "CUDA_VISIBLE_DEVICES")
      d.error(kv.first, path, "set by Loadstar for each worker; choose another name");
    else if (!kv.second.IsScalar())
      d.error(kv.second, path, "must be a string");
    else
      out.env[name] = kv.second.Scalar();
  }
}

void decode_topology(Decoder& d, MapReader& spec, JobSpec& out) {
  YAML::Node node = spec.get("topology");
  if (!node || node.IsNull()) return;
  MapReader t(d, node, "spec.topology");
  JobTopology topology;
  if (t.string("level", topology.level, true)) {
    bool known = false;
    for (std::string_view level : {"nvlink", "rack", "spine", "zone"})
      known |= topology.level == level;
    if (!known)
      d.error(node["level"], "spec.topology.level",
              fmt::format("'{}' is not one of nvlink, rack, spine, zone", topology.level));
  }
  t.boolean("required", topology.required);
  t.finish();
  out.topology = std::move(topology);
}

}  // namespace

void decode_job(Decoder& d, MapReader& top, Job& job) {
  YAML::Node node = top.get("spec");
  if (!node || node.IsNull()) {
    d.error(YAML::Node(), "spec", "required");
    return;
  }
  MapReader spec(d, node, "spec");
  if (!spec.ok()) return;  // not a map: said (and node[...] would throw)
  JobSpec& s = job.spec;
  decode_command(d, spec, node, s);
  spec.string("image", s.image, false);
  decode_env(d, spec, s);
  if (spec.uint("workers", s.workers) && (s.workers == 0 || s.workers > 1024))
    d.error(node["workers"], "spec.workers", "must be 1 to 1024");
  if (YAML::Node resources = spec.get("resources"); resources && !resources.IsNull())
    decode_resources(d, resources, "spec.resources", s.cpu, s.memory_bytes, s.gpu);
  decode_topology(d, spec, s);
  spec.string("queue", s.queue, false);
  spec.integer("priority", s.priority);
  spec.boolean("preemptible", s.preemptible);
  std::optional<double> grace;
  if (spec.number("terminationGracePeriodSeconds", grace, 0, 86400)) s.termination_grace_s = *grace;
  if (spec.uint("backoffLimit", s.backoff_limit) && s.backoff_limit > 100)
    d.error(node["backoffLimit"], "spec.backoffLimit", "must be 0 to 100");
  spec.number("activeDeadlineSeconds", s.active_deadline_s, 1, 1e8);
  if (YAML::Node checkpoint = spec.get("checkpoint"); checkpoint && !checkpoint.IsNull()) {
    MapReader c(d, checkpoint, "spec.checkpoint");
    if (c.ok()) {
      c.string("claimName", s.checkpoint_claim, false);
      c.string("hostPath", s.checkpoint_host_path, false);
      c.finish();
      if (s.checkpoint_claim.empty() == s.checkpoint_host_path.empty())
        d.error(checkpoint, "spec.checkpoint", "one of claimName or hostPath");
      else if (!s.checkpoint_host_path.empty() && s.checkpoint_host_path[0] != '/')
        d.error(checkpoint["hostPath"], "spec.checkpoint.hostPath", "must be an absolute path");
    }
  }
  spec.finish();
}

}  // namespace loadstar::api::detail
