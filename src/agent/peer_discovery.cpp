#include "agent/peer_discovery.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "common/url.h"
#include "kube/informer.h"

namespace loadstar::agent {

std::vector<std::string> peer_urls(const std::vector<kube::EndpointAddress>& addresses,
                                   std::string_view self_url) {
  auto self = parse_url(self_url);
  std::vector<std::string> out;
  for (const kube::EndpointAddress& a : addresses) {
    if (self.ok() && self->host == a.ip && self->port == a.port) continue;
    out.push_back(fmt::format("http://{}:{}", a.ip, a.port));
  }
  return out;
}

PeerDiscovery::PeerDiscovery(const kube::Client& client, std::string namespace_name,
                             std::string service, std::string port_name, std::string self_url,
                             PeersChanged on_change)
    : service_(std::move(service)),
      port_name_(std::move(port_name)),
      self_url_(std::move(self_url)),
      key_(fmt::format("{}/{}", namespace_name, service_)),
      on_change_(std::move(on_change)),
      informer_(std::make_unique<kube::Informer>(
          client, kube::collection_path("v1", namespace_name, "endpoints"))) {}

PeerDiscovery::~PeerDiscovery() {
  informer_->stop();
}

Status PeerDiscovery::start(double timeout_s) {
  informer_->start([this] { changed(); });
  if (!informer_->wait_synced(timeout_s))
    return make_error(ErrorCode::kUnavailable,
                      "cannot list Endpoints in {} (may the agent's account list "
                      "and watch endpoints there? Role loadstar-agent in deploy/ grants it)",
                      informer_->collection());
  changed();
  spdlog::info("agent: following Endpoints {} for peers ({} now)", key_, peers().size());
  return ok_status();
}

void PeerDiscovery::changed() {
  auto endpoints = informer_->get(key_);
  std::vector<std::string> peers =
      endpoints ? peer_urls(kube::ready_endpoints(*endpoints, port_name_), self_url_)
                : std::vector<std::string>{};
  {
    std::lock_guard lock(mu_);
    if (peers == peers_) return;
    peers_ = peers;
  }
  spdlog::info("agent: {} peer(s) from Endpoints {}: {}", peers.size(), key_,
               fmt::join(peers, ", "));
  on_change_(std::move(peers));
}

std::vector<std::string> PeerDiscovery::peers() const {
  std::lock_guard lock(mu_);
  return peers_;
}

}  // namespace loadstar::agent
