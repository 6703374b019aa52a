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
};

struct ModelSpec {
  // Where the weights come from: file://, http(s)://, s3://, hf:// URIs, or
  // synth://NAME for a synthetic safetensors model of `size` bytes that
  // Loadstar writes itself (demos, tests, benchmarks).
  std::string source;
  std::string format = "safetensors";
  std::optional<uint64_t> size_bytes;
};

struct Model {
  ObjectMeta metadata;
  ModelSpec spec;
};

struct GpuRequirements {
  uint32_t count = 0;  // whole GPUs; 0 with a fraction or memory means a share of one
  std::string type;    // e.g. "A100-80GB"; empty: any
  std::optional<uint64_t> memory_bytes;  // GPU memory needed (a share of one GPU)
  std::optional<double> fraction;        // share of one GPU, 0 < f < 1
};

struct EngineSpec {
  std::string name = "engine-sim";  // engine-sim, vllm, sglang, llama.cpp
  std::vector<std::string> args;
};

struct InferenceServiceSpec {
  std::string model;  // a Model's metadata.name
  EngineSpec engine;
  uint32_t replicas = 1;
  GpuRequirements gpu;
};

struct InferenceService {
  ObjectMeta metadata;
  InferenceServiceSpec spec;
};

using Resource = std::variant<Model, InferenceService>;

std::string_view kind_of(const Resource& resource);
const ObjectMeta& metadata_of(const Resource& resource);

// Decodes every document of a YAML stream. `file_name` prefixes messages.
// All errors found are reported, one per line.
Result<std::vector<Resource>> decode_resources(std::string_view yaml_text,
                                               std::string_view file_name);
Result<std::vector<Resource>> load_resource_file(const std::string& path);

// The YAML document of a resource; decode_resources(encode_resource(r)) == r.
std::string encode_resource(const Resource& resource);

// Cross-resource checks: unique names per kind, services naming existing models.
Status check_references(const std::vector<Resource>& resources);

}  // namespace loadstar::api
