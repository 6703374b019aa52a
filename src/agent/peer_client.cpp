#include "agent/peer_client.h"

#include <nlohmann/json.hpp>

#include "agent/http_fetch.h"
#include "common/json_value.h"

namespace loadstar::agent {
namespace {

using nlohmann::json;

class HttpPeerClient final : public PeerClient {
 public:
  explicit HttpPeerClient(std::string authorization) {
    if (!authorization.empty()) headers_.push_back({"Authorization", std::move(authorization)});
  }

  Result<BlobInfo> blob_info(const std::string& peer, const std::string& key) override {
    LS_ASSIGN_OR_RETURN(Url url, parse_url(peer));
    HttpGet get;
    get.url = std::move(url);
    get.url.target = "/v1/blobs/" + key;
    get.private_headers = headers_;
    get.pool = &pool_;
    get.total_timeout_s = 2;
    get.stall_timeout_s = 1;
    std::string body;
    get.sink = [&](std::string_view d) {
      body.append(d);
      return true;
    };
    LS_RETURN_IF_ERROR(http_get(get));
    const json doc = json::parse(body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object())
      return make_error(ErrorCode::kUnavailable, "peer {} sent no JSON object for {}", peer, key);
    BlobInfo info;
    info.key = key;
    info.size = value_or(doc, "size", uint64_t{0});
    info.chunk_bytes = value_or(doc, "chunk_bytes", uint64_t{0});
    info.complete = value_or(doc, "complete", false);
    info.staging = value_or(doc, "staging", false);
    info.have = value_or(doc, "have", "");
    if (doc.contains("digests") && doc["digests"].is_array())
      for (const auto& d : doc["digests"])
        info.digests.push_back(d.is_string() ? d.get<std::string>() : "");
    return info;
  }

  Result<std::string> chunk(const std::string& peer, const std::string& key, uint64_t index,
                            const ByteSink& sink) override {
    LS_ASSIGN_OR_RETURN(Url url, parse_url(peer));
    HttpGet get;
    get.url = std::move(url);
    get.url.target = fmt::format("/v1/blobs/{}/chunks/{}", key, index);
    get.private_headers = headers_;
    get.pool = &pool_;
    get.stall_timeout_s = 5;
    get.total_timeout_s = 120;
    get.sink = sink;
    LS_ASSIGN_OR_RETURN(http::ClientResponse response, http_get(get));
    return std::string(response.header("x-loadstar-sha256"));
  }

 private:
  std::vector<http::Header> headers_;
  http::ClientPool pool_;  // connections to peers, kept between chunks
};

}  // namespace

std::shared_ptr<PeerClient> make_http_peer_client(std::string authorization) {
  return std::make_shared<HttpPeerClient>(std::move(authorization));
}

}  // namespace loadstar::agent
