#include "kube/client.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "common/digest.h"
#include "common/url.h"
#include "http/client.h"

namespace loadstar::kube {

namespace fs = std::filesystem;

namespace {

Result<std::string> read_file(const fs::path& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::kNotFound, "cannot read {} {}", what, path.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A YAML map entry of a named list (clusters, users, contexts).
YAML::Node find_named(const YAML::Node& list, std::string_view name, std::string_view field) {
  if (!list || !list.IsSequence()) return YAML::Node();
  for (const auto& item : list)
    if (item["name"] && item["name"].IsScalar() && item["name"].Scalar() == name)
      return item[std::string(field)];
  return YAML::Node();
}

std::string scalar(const YAML::Node& node, const char* key) {
  return node && node.IsMap() && node[key] && node[key].IsScalar() ? node[key].Scalar() : "";
}

Status apply_server(Config& config, const std::string& server) {
  LS_ASSIGN_OR_RETURN(Url url, parse_url(server));
  if (url.scheme != "https" && url.scheme != "http")
    return make_error(ErrorCode::kInvalidArgument, "server '{}' must be an http(s) URL", server);
  config.host = url.host;
  config.port = url.port;
  config.tls = url.scheme == "https";
  return ok_status();
}

}  // namespace

Result<Config> parse_kubeconfig(std::string_view text, std::string_view file_name,
                                std::string_view context) {
  auto fail = [&](std::string message) {
    return Error{ErrorCode::kInvalidArgument, fmt::format("{}: {}", file_name, message)};
  };
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return fail(fmt::format("not YAML: {}", e.what()));
  }
  if (!root.IsMap()) return fail("not a kubeconfig (expected a map)");
  std::string ctx_name(context);
  if (ctx_name.empty()) ctx_name = scalar(root, "current-context");
  if (ctx_name.empty()) return fail("no current-context and no context given");
  YAML::Node ctx = find_named(root["contexts"], ctx_name, "context");
  if (!ctx.IsMap()) return fail(fmt::format("context '{}' is not in contexts", ctx_name));
  const std::string cluster_name = scalar(ctx, "cluster"), user_name = scalar(ctx, "user");
  YAML::Node cluster = find_named(root["clusters"], cluster_name, "cluster");
  if (!cluster.IsMap()) return fail(fmt::format("cluster '{}' is not in clusters", cluster_name));
  Config config;
  config.origin = fmt::format("kubeconfig {} (context {})", file_name, ctx_name);
  if (const std::string ns = scalar(ctx, "namespace"); !ns.empty()) config.namespace_name = ns;
  const std::string server = scalar(cluster, "server");
  if (server.empty()) return fail(fmt::format("cluster '{}' has no server", cluster_name));
  if (auto s = apply_server(config, server); !s.ok()) return fail(s.error().message);
  if (const std::string data = scalar(cluster, "certificate-authority-data"); !data.empty()) {
    auto pem = base64_decode(data);
    if (!pem)
      return fail(
          fmt::format("cluster '{}': certificate-authority-data is not base64", cluster_name));
    config.ca_pem = std::move(*pem);
  } else if (const std::string file = scalar(cluster, "certificate-authority"); !file.empty()) {
    auto pem = read_file(file, "certificate-authority");
    if (!pem.ok()) return fail(pem.error().message);
    config.ca_pem = std::move(*pem);
  }
  if (scalar(cluster, "insecure-skip-tls-verify") == "true")
    return fail("insecure-skip-tls-verify is not supported; give the cluster's CA");
  YAML::Node user = find_named(root["users"], user_name, "user");
  if (!user_name.empty() && !user.IsMap())
    return fail(fmt::format("user '{}' is not in users", user_name));
  if (user.IsMap()) {
    config.token = scalar(user, "token");
    config.token_file = scalar(user, "tokenFile");
    if (config.token.empty() && config.token_file.empty()) {
      if (user["client-certificate"] || user["client-certificate-data"])
        return fail(
            fmt::format("user '{}' authenticates with a client certificate; "
                        "Loadstar supports bearer tokens (token or tokenFile)",
                        user_name));
      if (user["exec"] || user["auth-provider"])
        return fail(
            fmt::format("user '{}' uses an exec or auth-provider plugin; "
                        "Loadstar supports bearer tokens (token or tokenFile)",
                        user_name));
    }
  }
  return config;
}

Result<Config> in_cluster_config(const fs::path& dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !*host)
    return make_error(ErrorCode::kNotFound, "not in a cluster (KUBERNETES_SERVICE_HOST is unset)");
  Config config;
  config.origin = "in-cluster service account " + dir.string();
  config.host = host;
  config.port = static_cast<uint16_t>(port && *port ? std::atoi(port) : 443);
  config.token_file = (dir / "token").string();
  LS_ASSIGN_OR_RETURN(config.ca_pem, read_file(dir / "ca.crt", "service-account CA"));
  if (auto ns = read_file(dir / "namespace", "namespace"); ns.ok() && !ns->empty())
    config.namespace_name = *ns;
  return config;
}

Result<Config> load_config(const std::string& kubeconfig) {
  std::string path = kubeconfig;
  if (path.empty())
    if (const char* env = std::getenv("KUBECONFIG"); env && *env) {
      path = env;
      if (auto colon = path.find(':'); colon != std::string::npos) path.resize(colon);
    }
  if (path.empty()) {
    auto in_cluster = in_cluster_config();
    if (in_cluster.ok() || in_cluster.error().code != ErrorCode::kNotFound) return in_cluster;
    const char* home = std::getenv("HOME");
    path = fmt::format("{}/.kube/config", home ? home : "");
    if (!fs::exists(path))
      return make_error(ErrorCode::kNotFound,
                        "no Kubernetes configuration: give --kubeconfig, set KUBECONFIG, run in a "
                        "cluster, or write {}",
                        path);
  }
  LS_ASSIGN_OR_RETURN(std::string text, read_file(path, "kubeconfig"));
  return parse_kubeconfig(text, path);
}

Result<bool> WatchDecoder::feed(std::string_view data,
                                const std::function<bool(WatchEvent)>& on_event) {
  pending_.append(data);
  size_t start = 0;
  for (size_t nl; (nl = pending_.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string_view line(pending_.data() + start, nl - start);
    if (line.find_first_not_of(" \r\t") == std::string_view::npos) continue;
    json parsed = json::parse(line, nullptr, false);
    if (!parsed.is_object() || !parsed.contains("type") || !parsed["type"].is_string() ||
        !parsed.contains("object") || !parsed["object"].is_object()) {
      return make_error(ErrorCode::kCorrupt, "watch stream: not an event: {}",
                        std::string(line.substr(0, 200)));
    }
    WatchEvent event{parsed["type"].get<std::string>(), std::move(parsed["object"])};
    if (!on_event(std::move(event))) {
      pending_.erase(0, nl + 1);
      return false;
    }
  }
  pending_.erase(0, start);
  return true;
}

std::string collection_path(std::string_view group_version, std::string_view namespace_name,
                            std::string_view plural) {
  const bool core = group_version == "v1";
  std::string path = core ? "/api/v1" : fmt::format("/apis/{}", group_version);
  if (!namespace_name.empty()) path += fmt::format("/namespaces/{}", namespace_name);
  return path + "/" + std::string(plural);
}

std::optional<double> parse_quantity(std::string_view text) {
  static const std::pair<std::string_view, double> kSuffixes[] = {
      {"Ki", 1024.0},     {"Mi", 1048576.0}, {"Gi", 1073741824.0}, {"Ti", 1099511627776.0},
      {"Pi", 1125899906842624.0}, {"Ei", 1152921504606846976.0}, {"m", 1e-3}, {"k", 1e3},
      {"M", 1e6},         {"G", 1e9},        {"T", 1e12},          {"P", 1e15},
      {"E", 1e18}};
  double scale = 1;
  for (const auto& [suffix, factor] : kSuffixes)
    if (text.size() > suffix.size() && text.ends_with(suffix)) {
      text.remove_suffix(suffix.size());
      scale = factor;
      break;
    }
  if (text.empty()) return std::nullopt;
  const std::string number(text);
  char* end = nullptr;
  const double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || value < 0) return std::nullopt;
  return value * scale;
}

ErrorCode error_code_for_status(int status) {
  switch (status) {
    case 400:
    case 422:
      return ErrorCode::kInvalidArgument;
    case 401:
    case 403:
      return ErrorCode::kPermissionDenied;
    case 404:
      return ErrorCode::kNotFound;
    case 409:
      return ErrorCode::kConflict;
    case 410:
      return ErrorCode::kExpired;
    case 429:
      return ErrorCode::kResourceExhausted;
    default:
      return status >= 500 ? ErrorCode::kUnavailable : ErrorCode::kInternal;
  }
}

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
  std::string token = config.token;
  if (!config.token_file.empty()) {
    auto t = read_file(config.token_file, "token file");
    if (!t.ok()) {
      status = std::move(t).error();
      return req;
    }
    token = *t;
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
  }
  if (!token.empty()) req.headers.push_back({"Authorization", "Bearer " + token});
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
    detail = body.substr(0, 200);
  return Error{error_code_for_status(status),
               fmt::format("{} {}: {} {}", method, path, status, detail)};
}

std::string with_query(const std::string& path, std::string_view query) {
  if (query.empty()) return path;
  return path + (path.find('?') == std::string::npos ? "?" : "&") + std::string(query);
}

}  // namespace

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
  auto resp = http::fetch(req);
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

Result<json> Client::list(const std::string& collection, std::string_view label_selector) const {
  std::string query;
  if (!label_selector.empty()) query = "labelSelector=" + uri_encode(label_selector, false);
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
        const int code = event.object.value("code", 0);
        failure = Error{error_code_for_status(code),
                        fmt::format("watch {}: {} {}", collection, code,
                                    event.object.value("message", std::string("error event")))};
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
