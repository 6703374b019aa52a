// Parts of specs read from YAML by more than one kind's decoder (an
// InferenceService's own and its prefill role's resources, a Job's), and
// the Job decoder (api/job.cpp). Private to src/api, as yaml_reader.h.
#pragma once

#include <string>

#include "api/resources.h"
#include "api/yaml_reader.h"

namespace loadstar::api::detail {

// `path` (e.g. "spec.resources"): cpu, memory and gpu into the outputs.
void decode_resources(Decoder& d, const YAML::Node& resources, const std::string& path,
                      double& cpu_out, uint64_t& memory_out, GpuRequirements& gpu_out);

// `path` (e.g. "spec.autoscaling"); maxReplicas may not be below `replicas`
// (named `replicas_field` in the message); targets the engine cannot feed
// are refused.
AutoscalingSpec decode_autoscaling(Decoder& d, const YAML::Node& as, const std::string& path,
                                   uint32_t replicas, const std::string& replicas_field,
                                   const std::string& engine_name);

// spec.prefill (api/disaggregation.h), checked against the rest of `svc`,
// which must be read already.
void decode_prefill(Decoder& d, const YAML::Node& prefill, InferenceService& svc);

// spec.multiNode, checked against the engine and the rest of `svc`, which
// must be read already but for spec.prefill's pool (which it refuses).
void decode_multi_node(Decoder& d, const YAML::Node& multi, InferenceService& svc);

// A Job's spec (api/job.cpp).
void decode_job(Decoder& d, MapReader& top, Job& job);

}  // namespace loadstar::api::detail
