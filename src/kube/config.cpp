// Where the server is and who we are: kubeconfig files, the in-cluster
// service account, bearer tokens. No I/O beyond reading those files.
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "common/digest.h"
#include "common/url.h"
#include "kube/client.h"

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
// An absent field is an undefined node, never an invalid one (whose every
// use throws: found by fuzz/kube_fuzz.cpp).
YAML::Node find_named(const YAML::Node& list, std::string_view name, std::string_view field) {
  if (!list || !list.IsSequence()) return YAML::Node();
  for (const auto& item : list)
    if (item.IsMap() && item["name"] && item["name"].IsScalar() && item["name"].Scalar() == name) {
      if (YAML::Node value = item[std::string(field)]; value) return value;
      return YAML::Node();
    }
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

Result<std::string> bearer_token(const Config& config) {
  if (config.token_file.empty()) return config.token;
  LS_ASSIGN_OR_RETURN(std::string token, read_file(config.token_file, "token file"));
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
  return token;
}

}  // namespace loadstar::kube
