#include "agent/agent_api.h"

#include <charconv>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "agent/device_checkpoint.h"
#include "common/json_value.h"

namespace loadstar::agent {

using nlohmann::json;

namespace {

http::Response error_response(int status, std::string message) {
  return {status, "application/json", json({{"error", {{"message", message}}}}).dump()};
}

int status_of(const Error& e) {
  switch (e.code) {
    case ErrorCode::kInvalidArgument:
      return 400;
    case ErrorCode::kNotFound:
      return 404;
    case ErrorCode::kResourceExhausted:
      return 507;
    case ErrorCode::kUnavailable:
    case ErrorCode::kConflict:
      return 409;
    case ErrorCode::kPermissionDenied:
      return 403;
    default:
      return 500;
  }
}

json model_json(const CachedModel& m) {
  return {{"model", m.name},
          {"version", m.version},
          {"source", m.manifest.source},
          {"revision", m.manifest.revision},
          {"dir", m.dir.string()},
          {"bytes", m.bytes},
          {"own_bytes", m.own_bytes},
          {"files", m.manifest.files.size()},
          {"last_used_ms", m.last_used_ms},
          {"in_use", m.in_use},
          {"pinned", m.pinned}};
}

}  // namespace

json progress_json(const StageProgress& p) {
  return {{"model", p.model},
          {"source", p.source},
          {"state", stage_state_name(p.state)},
          {"bytes_total", p.bytes_total},
          {"bytes_done", p.bytes_done},
          {"bytes_cached", p.bytes_cached},
          {"bytes_origin", p.bytes_origin},
          {"bytes_peers", p.bytes_peers},
          {"elapsed_seconds", p.elapsed_s},
          {"rate_bytes_per_second", p.rate_bytes_per_s},
          {"eta_seconds", p.eta_s < 0 ? json(nullptr) : json(p.eta_s)},
          {"error", p.error},
          {"dir", p.dir.string()},
          {"version", p.version},
          {"want_version", p.want_version}};
}

bool namespace_may(std::string_view namespace_name, const http::Request& request,
                   std::string_view path) {
  const std::string prefix = std::string(namespace_name) + "_";
  if (request.method == "GET" && path.starts_with("/v1/models/"))
    return path.substr(11).starts_with(prefix);
  if (request.method != "POST" || path != "/v1/stage") return false;
  const json body = json::parse(request.body, nullptr, false);
  return body.is_object() && body.contains("model") && body["model"].is_string() &&
         body["model"].get<std::string>().starts_with(prefix);
}

http::Response handle_agent_api(Agent& agent, const http::Request& request, std::string_view path) {
  const std::string& method = request.method;
  if (method == "GET" && path == "/health") return {200, "text/plain", "ok\n"};
  if (method == "GET" && path == "/metrics")
    return {200, "text/plain; version=0.0.4", agent.metrics_text()};
  if (method == "POST" && path == "/v1/stage") {
    json body = json::parse(request.body, nullptr, false);
    if (body.is_discarded() || !body.is_object())
      return error_response(400, "the body must be a JSON object");
    if (!body.contains("model") || !body["model"].is_string())
      return error_response(400, "'model' (a string) is required");
    if (!body.contains("source") || !body["source"].is_string())
      return error_response(400, "'source' (a URI: file://, http(s)://, hf://, s3://) is required");
    if (body.contains("pin") && !body["pin"].is_boolean())
      return error_response(400, "'pin' must be true or false");
    const std::string model = body["model"];
    if (Status s = validate_model_name(model); !s.ok())
      return error_response(400, s.error().message);
    if (Status s = agent.options().source.policy.admit(body["source"].get<std::string>()); !s.ok())
      return error_response(403, s.error().message);
    if (body.contains("version") && !body["version"].is_string())
      return error_response(400, "'version' must be a string (a version id /v1/resolve gave)");
    StageProgress p = agent.stage(model, body["source"], value_or(body, "pin", false),
                                  value_or(body, "version", std::string()));
    return {202, "application/json", progress_json(p).dump()};
  }
  if (method == "POST" && path == "/v1/resolve") {
    json body = json::parse(request.body, nullptr, false);
    if (body.is_discarded() || !body.is_object() || !body.contains("source") ||
        !body["source"].is_string())
      return error_response(400, "'source' (a URI: file://, http(s)://, hf://, s3://) is required");
    const std::string source = body["source"];
    if (Status s = agent.options().source.policy.admit(source); !s.ok())
      return error_response(403, s.error().message);
    // One attempt (no retries with backoff): this holds a server thread, and
    // the controller asks again on its own schedule.
    auto manifest = agent.resolve_source(source, 1);
    if (!manifest.ok())
      return error_response(
          manifest.error().code == ErrorCode::kUnavailable ? 502 : status_of(manifest.error()),
          manifest.error().message);
    return {200, "application/json",
            json({{"source", source},
                  {"version", manifest->version_id()},
                  {"revision", manifest->revision},
                  {"bytes", manifest->total_bytes()},
                  {"files", manifest->files.size()}})
                .dump()};
  }
  if (method == "GET" && path == "/v1/devices") {
    const std::string& file = agent.options().device_checkpoint;
    if (file.empty())
      return error_response(404,
                            "this agent reads no kubelet device checkpoint (--device-checkpoint)");
    std::ifstream in(file);
    if (!in) return error_response(503, "cannot read " + file);
    std::stringstream text;
    text << in.rdbuf();
    auto parsed = parse_device_checkpoint(text.str());
    if (!parsed.ok()) return error_response(503, file + ": " + parsed.error().message);
    return {200, "application/json", device_listing_json(*parsed)};
  }
  if (method == "GET" && path == "/v1/models") {
    json cached = json::array();
    for (const auto& m : agent.cache().list()) cached.push_back(model_json(m));
    json staging = json::array();
    for (const auto& p : agent.all_progress()) staging.push_back(progress_json(p));
    return {200, "application/json",
            json({{"models", cached},
                  {"stagings", staging},
                  {"cache",
                   {{"used_bytes", agent.cache().used_bytes()},
                    {"capacity_bytes", agent.options().cache.capacity_bytes}}}})
                .dump()};
  }
  if (path.starts_with("/v1/models/")) {
    const std::string name(path.substr(11));
    if (method == "GET") {
      json out = json::object();
      if (auto p = agent.progress(name)) out["staging"] = progress_json(*p);
      if (auto m = agent.cache().find(name)) out["cached"] = model_json(*m);
      if (out.empty())
        return error_response(404, "model '" + name + "' is neither cached nor staging");
      return {200, "application/json", out.dump()};
    }
    if (method == "DELETE") {
      if (Status s = agent.cache().evict(name); !s.ok())
        return error_response(status_of(s.error()), s.error().message);
      return {200, "application/json", json({{"evicted", name}}).dump()};
    }
  }
  if (method == "GET" && path.starts_with("/v1/blobs/")) {
    std::string_view rest = path.substr(10);
    const size_t slash = rest.find('/');
    const std::string key(rest.substr(0, slash));
    if (slash == std::string_view::npos) {
      auto info = agent.blob_info(key);
      if (!info) return error_response(404, "no blob " + key);
      return {200, "application/json",
              json({{"key", info->key},
                    {"size", info->size},
                    {"chunk_bytes", info->chunk_bytes},
                    {"complete", info->complete},
                    {"staging", info->staging},
                    {"have", info->have},
                    {"digests", info->digests}})
                  .dump()};
    }
    std::string_view chunk = rest.substr(slash);
    uint64_t index = 0;
    if (!chunk.starts_with("/chunks/") ||
        std::from_chars(chunk.data() + 8, chunk.data() + chunk.size(), index).ec != std::errc())
      return error_response(404, "no route for GET " + std::string(path));
    std::string digest;
    auto data = agent.read_chunk(key, index, &digest);
    if (!data.ok()) return error_response(status_of(data.error()), data.error().message);
    http::Response r{200, "application/octet-stream", std::move(*data), {}};
    r.headers.push_back({"x-loadstar-sha256", digest});
    return r;
  }
  return error_response(404, "no route for " + method + " " + std::string(path));
}

}  // namespace loadstar::agent
