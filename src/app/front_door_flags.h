// The gateway's front-door flags, the same on `loadstar up` and
// `loadstar gateway`: connection budget, client and engine deadlines,
// shared tenant limits, HTTPS.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "gateway/gateway.h"

namespace loadstar::app {

struct FrontDoorFlags {
  uint32_t max_connections = 0;
  double header_timeout_s = 30;
  double upstream_idle_timeout_s = 300;
  std::string redis;
  std::string tls_cert, tls_key;

  void add_to(CLI::App& app) {
    app.add_option("--max-connections", max_connections,
                   "Client connections at once; past it 503 with Retry-After (0: half the "
                   "descriptor limit, raised to the hard limit)")
        ->capture_default_str();
    app.add_option("--client-header-timeout", header_timeout_s,
                   "Seconds a request's headers may take once its first byte is in")
        ->capture_default_str();
    app.add_option("--upstream-idle-timeout", upstream_idle_timeout_s,
                   "Seconds an engine may stay silent mid-request; then the request fails (a "
                   "stream ends with an error event)")
        ->capture_default_str();
    app.add_option("--redis", redis,
                   "redis://HOST[:PORT]: tenant limits shared with every gateway using it "
                   "(password: $LOADSTAR_REDIS_PASSWORD); unreachable, each gateway applies "
                   "its own");
    app.add_option("--tls-cert", tls_cert,
                   "Serve the OpenAI API over HTTPS with this PEM certificate chain (reloaded "
                   "when it changes; in Kubernetes a kubernetes.io/tls Secret's tls.crt)");
    app.add_option("--tls-key", tls_key, "The certificate's PEM private key");
  }

  void apply_to(gateway::GatewayOptions& options) const {
    options.max_connections = max_connections;
    options.client_header_timeout_s = header_timeout_s;
    options.upstream_idle_timeout_s = upstream_idle_timeout_s;
    options.redis_url = redis;
    options.tls_cert_file = tls_cert;
    options.tls_key_file = tls_key;
  }
};

}  // namespace loadstar::app
