#include "enginesim/profiles.h"

#include <set>

#include <yaml-cpp/yaml.h>

namespace loadstar::enginesim {

// How the coefficients are derived (docs/engine-sim.md has the arithmetic):
// b0 = weight bytes / achieved HBM bandwidth (a decode step reads every
// weight once), b1 = 2 * parameters / (peak bf16 FLOP/s * MFU), b2 = the
// per-sequence share of decode compute and sampling, b3 = KV bytes per token /
// achieved HBM bandwidth (attention reads the whole context each step).
const std::vector<Profile>& builtin_profiles() {
  static const std::vector<Profile> profiles = {
      {"llama-3.1-8b-a100-80gb",
       "Llama 3.1 8B, bf16, one A100 80GB (2.0 TB/s, 312 TFLOP/s)",
       {.base_s = 9.5e-3,
        .per_prefill_token_s = 100e-6,
        .per_decode_seq_s = 60e-6,
        .per_context_token_s = 87e-9},
       24000,
       kv_bytes_per_token(32, 8, 128, 2)},
      {"llama-3.1-8b-h100-80gb",
       "Llama 3.1 8B, bf16, one H100 SXM 80GB (3.35 TB/s, 989 TFLOP/s)",
       {.base_s = 6.0e-3,
        .per_prefill_token_s = 35e-6,
        .per_decode_seq_s = 40e-6,
        .per_context_token_s = 52e-9},
       28000,
       kv_bytes_per_token(32, 8, 128, 2)},
      {"llama-3.1-70b-h100x4",
       "Llama 3.1 70B, bf16, four H100 SXM 80GB with tensor parallelism",
       {.base_s = 14e-3,
        .per_prefill_token_s = 79e-6,
        .per_decode_seq_s = 120e-6,
        .per_context_token_s = 33e-9},
       25000,
       kv_bytes_per_token(80, 8, 128, 2, 4)},
  };
  return profiles;
}

namespace {

Result<double> number_field(const YAML::Node& node, const char* key, const std::string& where) {
  YAML::Node v = node[key];
  if (!v) return make_error(ErrorCode::kInvalidArgument, "{}: missing '{}'", where, key);
  try {
    double d = v.as<double>();
    if (d < 0) throw YAML::Exception(v.Mark(), "negative");
    return d;
  } catch (const YAML::Exception&) {
    return make_error(ErrorCode::kInvalidArgument, "{}:{}: '{}' must be a non-negative number",
                      where, v.Mark().line + 1, key);
  }
}

}  // namespace

Result<std::vector<Profile>> load_profiles(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return make_error(ErrorCode::kNotFound, "{}: cannot read the file", path);
  } catch (const YAML::Exception& e) {
    return make_error(ErrorCode::kInvalidArgument, "{}:{}:{}: {}", path, e.mark.line + 1,
                      e.mark.column + 1, e.msg);
  }
  YAML::Node list = root["profiles"];
  if (!list || !list.IsSequence())
    return make_error(ErrorCode::kInvalidArgument, "{}: expected a 'profiles' list", path);
  std::vector<Profile> profiles;
  for (const YAML::Node& node : list) {
    const std::string where = fmt::format("{}:{}", path, node.Mark().line + 1);
    static const std::set<std::string> kKnown = {
        "name",          "description",      "base_ms",        "prefill_token_us",
        "decode_seq_us", "context_token_ns", "num_gpu_blocks", "kv_bytes_per_token"};
    if (!node.IsMap())
      return make_error(ErrorCode::kInvalidArgument, "{}: a profile must be a map", where);
    for (const auto& kv : node) {
      auto key = kv.first.as<std::string>();
      if (!kKnown.count(key))
        return make_error(ErrorCode::kInvalidArgument, "{}:{}: unknown field '{}'", path,
                          kv.first.Mark().line + 1, key);
    }
    Profile p;
    if (!node["name"]) return make_error(ErrorCode::kInvalidArgument, "{}: missing 'name'", where);
    p.name = node["name"].as<std::string>();
    if (node["description"]) p.description = node["description"].as<std::string>();
    LS_ASSIGN_OR_RETURN(double base_ms, number_field(node, "base_ms", where));
    LS_ASSIGN_OR_RETURN(double prefill_us, number_field(node, "prefill_token_us", where));
    LS_ASSIGN_OR_RETURN(double decode_us, number_field(node, "decode_seq_us", where));
    LS_ASSIGN_OR_RETURN(double context_ns, number_field(node, "context_token_ns", where));
    LS_ASSIGN_OR_RETURN(double blocks, number_field(node, "num_gpu_blocks", where));
    p.cost = {base_ms * 1e-3, prefill_us * 1e-6, decode_us * 1e-6, context_ns * 1e-9};
    p.num_gpu_blocks = static_cast<uint32_t>(blocks);
    if (node["kv_bytes_per_token"]) {
      LS_ASSIGN_OR_RETURN(double kv_bytes, number_field(node, "kv_bytes_per_token", where));
      if (kv_bytes < 1)
        return make_error(ErrorCode::kInvalidArgument, "{}: 'kv_bytes_per_token' must be positive",
                          where);
      p.kv_bytes_per_token = static_cast<uint64_t>(kv_bytes);
    }
    profiles.push_back(std::move(p));
  }
  return profiles;
}

Result<Profile> find_profile(const std::string& name, const std::string& path) {
  if (!path.empty()) {
    LS_ASSIGN_OR_RETURN(auto from_file, load_profiles(path));
    for (auto& p : from_file)
      if (p.name == name) return p;
  }
  for (const auto& p : builtin_profiles())
    if (p.name == name) return p;
  std::string known;
  for (const auto& p : builtin_profiles()) known += (known.empty() ? "" : ", ") + p.name;
  return make_error(ErrorCode::kNotFound, "unknown profile '{}' (built in: {})", name, known);
}

}  // namespace loadstar::enginesim
