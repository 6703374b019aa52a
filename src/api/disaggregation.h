// Prefill/decode disaggregation as a service declares it (spec.prefill) and
// as the controller runs it. A disaggregated InferenceService runs as two
// pools of the same model: its own replicas are the decode pool (they also
// serve requests whole when no prefill is worth it or none is ready), and
// a prefill pool runs as a service of its own named "<service>-prefill",
// sized, placed, scaled and rolled out like any other, whose engines serve
// the model under the service's name. Both pools must agree on the KV
// layout (model, block size, tensor parallelism), and their engines speak
// vLLM's NixlConnector protocol (engine-sim simulates it): prefill replicas
// are kv_producer, decode replicas kv_both.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "api/resources.h"

namespace loadstar::api {

// "chat" -> "chat-prefill".
std::string prefill_service_name(std::string_view service);

// The services the controller runs for `svc`: itself and, when it is
// disaggregated, its prefill pool.
std::vector<InferenceService> role_services(const InferenceService& svc);

// The model name engines serve and clients use: the service's own, or for a
// prefill pool the service it is the prefill role of.
const std::string& served_name(const InferenceService& svc);

// vLLM's kv_role for the service's engines: "kv_producer" (a prefill pool),
// "kv_both" (a disaggregated service's decode pool), "" (neither).
std::string_view kv_role(const InferenceService& svc);

// The role label of its Pods (llm-d's llm-d.ai/role): prefill, decode, or
// "" when not disaggregated.
std::string_view pd_role(const InferenceService& svc);

// Why `spec` cannot run disaggregated (each message names its field), or
// nothing: the engine must hand KV over, both pools must share the KV
// layout, and Loadstar sets --kv-transfer-config itself.
std::vector<std::pair<std::string, std::string>> disaggregation_errors(
    const InferenceServiceSpec& spec);

}  // namespace loadstar::api
