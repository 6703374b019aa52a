// How a node agent on Kubernetes finds its peers: the ready addresses of one
// Endpoints object -- the DaemonSet's headless Service (deploy/loadstar.yaml:
// loadstar-agent-peers), which Kubernetes keeps to the agents that pass
// their readiness probe -- followed by an informer. Each change hands the
// agent every address but its own, so agents that join or leave change the
// chunk owners of stagings that start after it, and N nodes fetch about one
// copy from the origin without anyone listing them by hand.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "kube/client.h"
#include "kube/objects.h"

namespace loadstar::kube {
class Informer;
}

namespace loadstar::agent {

// http://IP:PORT of each address but `self_url`'s (pure).
std::vector<std::string> peer_urls(const std::vector<kube::EndpointAddress>& addresses,
                                   std::string_view self_url);

class PeerDiscovery {
 public:
  using PeersChanged = std::function<void(std::vector<std::string> peers)>;
  // Follows Endpoints `service` in `namespace_name`, on its port named
  // `port_name` (or its only port when empty).
  PeerDiscovery(const kube::Client& client, std::string namespace_name, std::string service,
                std::string port_name, std::string self_url, PeersChanged on_change);
  ~PeerDiscovery();
  PeerDiscovery(const PeerDiscovery&) = delete;
  PeerDiscovery& operator=(const PeerDiscovery&) = delete;

  // Starts following and waits up to `timeout_s` for the first list; an
  // error says why the Endpoints cannot be read (RBAC, no such namespace).
  Status start(double timeout_s);
  std::vector<std::string> peers() const;

 private:
  void changed();

  std::string service_, port_name_, self_url_, key_;
  PeersChanged on_change_;
  std::unique_ptr<kube::Informer> informer_;
  mutable std::mutex mu_;
  std::vector<std::string> peers_;
};

}  // namespace loadstar::agent
