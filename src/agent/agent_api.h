// The node agent's HTTP API, as a function from request to response so that
// `loadstar agent` serves it at / and `loadstar up` under /agent.
//
//   POST   /v1/stage                {"model", "source", "pin", "version"}  -> progress (202)
//   POST   /v1/resolve              {"source"} -> {"version", "revision", "bytes", "files"}
//   GET    /v1/models               cached models and stagings
//   GET    /v1/models/NAME          one model's progress / inventory
//   DELETE /v1/models/NAME          evict (409 while in use)
//   GET    /v1/devices              which GPUs the kubelet handed to which Pod
//   GET    /v1/blobs/KEY            what this agent holds of a file (peers)
//   GET    /v1/blobs/KEY/chunks/I   one verified chunk, x-loadstar-sha256 (peers)
//   GET    /metrics, /health
#pragma once

#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include "agent/agent.h"
#include "http/server.h"

namespace loadstar::agent {

// `path` without the mount prefix.
http::Response handle_agent_api(Agent& agent, const http::Request& request, std::string_view path);

// Whether a namespace's token (http::BearerToken::for_namespace) may make
// this request: staging a model of its namespace (named NAMESPACE_NAME, as
// the controller names them, kube/scope.h) and reading that model's
// progress; nothing else (not another namespace's models, not eviction,
// not the peers' blobs, not resolving sources).
bool namespace_may(std::string_view namespace_name, const http::Request& request,
                   std::string_view path);

nlohmann::json progress_json(const StageProgress& p);

}  // namespace loadstar::agent
