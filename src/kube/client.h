// A small, typed client for the Kubernetes API: where the server is and who
// we are (kubeconfig or in-cluster service account), JSON calls with
// Kubernetes' status codes mapped to ErrorCodes (404 kNotFound, 409
// kConflict, 410 kExpired, 401/403 kPermissionDenied, 400/422
// kInvalidArgument), and watches streamed event by event.
//
// Every call is blocking and opens its own connection (src/http/client), so
// any thread may call; a watch is stopped through its cancel flag.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace loadstar::http {
class ClientPool;
}

namespace loadstar::kube {

using nlohmann::json;

struct Config {
  std::string host;
  uint16_t port = 443;
  bool tls = true;
  std::string ca_pem;      // the cluster's CA; empty: the system's
  std::string token;       // bearer token
  std::string token_file;  // re-read on every call when set (projected tokens rotate)
  std::string namespace_name = "default";
  std::string origin;  // where this came from, for messages ("kubeconfig X, context Y")
};

// Parses a kubeconfig (the current context, or `context`). Supports token and
// tokenFile users and certificate-authority(-data) clusters; client
// certificates and exec plugins are refused with a message saying so.
Result<Config> parse_kubeconfig(std::string_view text, std::string_view file_name,
                                std::string_view context = "");
// The service account's token, CA and namespace under `dir`
// (/var/run/secrets/kubernetes.io/serviceaccount) and the server from
// KUBERNETES_SERVICE_HOST/PORT.
Result<Config> in_cluster_config(
    const std::filesystem::path& dir = "/var/run/secrets/kubernetes.io/serviceaccount");
// `kubeconfig` if given, else $KUBECONFIG, else the in-cluster service
// account, else ~/.kube/config.
Result<Config> load_config(const std::string& kubeconfig = "");
// The bearer token: Config::token, or the token file as it is now.
Result<std::string> bearer_token(const Config& config);

struct WatchEvent {
  std::string type;  // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
  json object;
};

// Splits a watch stream into events: one JSON object per line. Bytes of an
// unfinished line wait for the rest; a stream cut mid-event loses only that
// event, which a watch resumed from the last resourceVersion sees again.
class WatchDecoder {
 public:
  // Calls `on_event` for each complete event in `data`; false from it stops.
  // A line that is not a JSON event is an error.
  Result<bool> feed(std::string_view data, const std::function<bool(WatchEvent)>& on_event);

 private:
  std::string pending_;
};

// "/api/v1/namespaces/NS/pods", "/apis/GROUP/VERSION/namespaces/NS/PLURAL";
// an empty namespace gives the cluster-wide (or cluster-scoped) path.
std::string collection_path(std::string_view group_version, std::string_view namespace_name,
                            std::string_view plural);

class Client {
 public:
  explicit Client(Config config);
  const Config& config() const { return config_; }

  Result<json> get(const std::string& path) const;
  // A collection; `label_selector` as in kubectl -l. With `resource_version`,
  // any state not older than it will do: the API server answers from its
  // watch cache instead of a quorum read of etcd.
  Result<json> list(const std::string& collection, std::string_view label_selector = "",
                    std::string_view resource_version = "") const;
  Result<json> create(const std::string& collection, const json& object) const;
  // PUT: fails with kConflict when metadata.resourceVersion is stale.
  Result<json> replace(const std::string& path, const json& object) const;
  Result<json> merge_patch(const std::string& path, const json& patch) const;
  // Deletes; background propagation, so owned objects go too. `grace_s`:
  // the pod's grace period instead of its own.
  Status remove(const std::string& path, std::optional<int64_t> grace_s = std::nullopt) const;

  // Watches `collection` from `resource_version` (bookmarks on) for at most
  // `timeout_s`, handing each event to `on_event` (false stops). Ends OK when
  // the server closes the watch; kExpired when the version is too old (410 —
  // list again); kCancelled when *cancel is set.
  Status watch(const std::string& collection, const std::string& resource_version, double timeout_s,
               std::string_view label_selector,
               const std::function<bool(const WatchEvent&)>& on_event,
               const std::atomic<bool>* cancel = nullptr) const;

 private:
  Result<json> call(std::string_view method, const std::string& path, const json* body,
                    std::string_view content_type = "application/json") const;
  Config config_;
  // Requests reuse connections (a TLS handshake per write bounded the
  // controller's Pod creation); copies of a Client share them. Watches hold
  // their own.
  std::shared_ptr<http::ClientPool> pool_;
};

// A Kubernetes quantity ("4", "3500m", "16Gi", "16393216Ki", "1e3") as a
// number; nullopt when malformed.
std::optional<double> parse_quantity(std::string_view text);

// The ErrorCode for a Kubernetes status code.
ErrorCode error_code_for_status(int http_status);

}  // namespace loadstar::kube
