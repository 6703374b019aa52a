#include "kube/client.h"

#include <fmt/format.h>

#include "common/json_value.h"
#include "common/strings.h"
#include "common/url.h"
#include "http/client.h"

namespace loadstar::kube {

namespace {

http::ClientRequest base_request(const Config& config, std::string_view method,
                                 const std::string& target, Status& status) {
  http::ClientRequest req;
  req.host = config.host;
  req.port = config.port;
  req.tls = config.tls;
  req.ca_pem = config.ca_pem;
  req.method = std::string(method);
  req.target = target;
  req.headers.push_back({"Accept", "application/json"});
  auto token = bearer_token(config);
  if (!token.ok()) {
    status = std::move(token).error();
    return req;
  }
  if (!token->empty()) req.headers.push_back({"Authorization", "Bearer " + *token});
  return req;
}

// The error of a non-2xx answer, with the server's own message.
Error status_error(std::string_view method, const std::string& path, int status,
                   const std::string& body) {
  std::string detail;
  json parsed = json::parse(body, nullptr, false);
  if (parsed.is_object() && parsed.contains("message") && parsed["message"].is_string())
    detail = parsed["message"].get<std::string>();
  else
    detail = utf8_clip(body, 200);
  return Error{error_code_for_status(status),
               fmt::format("{} {}: {} {}", method, path, status, detail)};
}

std::string with_query(const std::string& path, std::string_view query) {
  if (query.empty()) return path;
  return path + (path.find('?') == std::string::npos ? "?" : "&") + std::string(query);
}

}  // namespace

Client::Client(Config config)
    : config_(std::move(config)), pool_(std::make_shared<http::ClientPool>()) {}

Result<json> Client::call(std::string_view method, const std::string& path, const json* body,
                          std::string_view content_type) const {
  Status st = ok_status();
  http::ClientRequest req = base_request(config_, method, path, st);
  LS_RETURN_IF_ERROR(st);
  if (body) {
    req.body = body->dump();
    req.headers.push_back({"Content-Type", std::string(content_type)});
  }
  req.timeout_s = 30;
  auto resp = pool_->fetch(req);
  if (!resp.ok())
    return Error{resp.error().code,
                 fmt::format("{} {} ({}): {}", method, path, config_.origin, resp.error().message)};
  if (resp->status < 200 || resp->status >= 300)
    return status_error(method, path, resp->status, resp->body);
  json parsed = json::parse(resp->body, nullptr, false);
  if (parsed.is_discarded())
    return make_error(ErrorCode::kCorrupt, "{} {}: the answer is not JSON", method, path);
  return parsed;
}

Result<json> Client::get(const std::string& path) const {
  return call("GET", path, nullptr);
}

Result<json> Client::list(const std::string& collection, std::string_view label_selector,
                          std::string_view resource_version) const {
  std::string query;
  if (!label_selector.empty()) query = "labelSelector=" + uri_encode(label_selector, false);
  if (!resource_version.empty())
    query += (query.empty() ? "" : "&") + std::string("resourceVersion=") +
             uri_encode(resource_version, false) + "&resourceVersionMatch=NotOlderThan";
  return call("GET", with_query(collection, query), nullptr);
}

Result<json> Client::create(const std::string& collection, const json& object) const {
  return call("POST", collection, &object);
}

Result<json> Client::replace(const std::string& path, const json& object) const {
  return call("PUT", path, &object);
}

Result<json> Client::merge_patch(const std::string& path, const json& patch) const {
  return call("PATCH", path, &patch, "application/merge-patch+json");
}

Status Client::remove(const std::string& path, std::optional<int64_t> grace_s) const {
  json options = {
      {"kind", "DeleteOptions"}, {"apiVersion", "v1"}, {"propagationPolicy", "Background"}};
  if (grace_s) options["gracePeriodSeconds"] = *grace_s;
  auto r = call("DELETE", path, &options);
  if (!r.ok()) return std::move(r).error();
  return ok_status();
}

Status Client::watch(const std::string& collection, const std::string& resource_version,
                     double timeout_s, std::string_view label_selector,
                     const std::function<bool(const WatchEvent&)>& on_event,
                     const std::atomic<bool>* cancel) const {
  std::string query = fmt::format("watch=true&allowWatchBookmarks=true&timeoutSeconds={}",
                                  static_cast<int>(timeout_s));
  if (!resource_version.empty()) query += "&resourceVersion=" + resource_version;
  if (!label_selector.empty()) query += "&labelSelector=" + uri_encode(label_selector, false);
  const std::string target = with_query(collection, query);
  Status st = ok_status();
  http::ClientRequest req = base_request(config_, "GET", target, st);
  LS_RETURN_IF_ERROR(st);
  req.timeout_s = timeout_s + 10;
  req.cancel = cancel;
  WatchDecoder decoder;
  std::optional<Error> failure;
  int status = 0;
  std::string error_body;
  req.on_headers = [&](const http::ClientResponse& r) { status = r.status; };
  auto resp = http::fetch_streaming(req, [&](std::string_view data) {
    if (status != 200) {
      error_body.append(data);
      return error_body.size() < 65536;
    }
    auto more = decoder.feed(data, [&](WatchEvent event) {
      if (event.type == "ERROR") {
        const int code = value_or(event.object, "code", 0);
        failure = Error{error_code_for_status(code),
                        fmt::format("watch {}: {} {}", collection, code,
                                    value_or(event.object, "message", "error event"))};
        return false;
      }
      return on_event(event);
    });
    if (!more.ok()) failure = std::move(more).error();
    return more.ok() && *more;
  });
  if (failure) return std::move(*failure);
  if (!resp.ok()) return std::move(resp).error();
  if (resp->status != 200) return status_error("GET", target, resp->status, error_body);
  return ok_status();
}

}  // namespace loadstar::kube
