// Which sources a node agent may fetch. An agent fetches what it is asked to
// and serves the bytes back to its callers (peers, engines), so without a
// policy anyone who may ask can read whatever the node can reach: on a cloud
// node, http://169.254.169.254/ answers with the node's credentials.
//
// Two checks:
//  - the URI against an allow-list (empty: every scheme), made of entries
//      SCHEME://            any source of that scheme       (hf://, s3://, https://)
//      SCHEME://REST        REST itself or below it at a '/', '@' or '?'
//                           (https://models.example.com, hf://meta-llama/,
//                           s3://team-bucket)
//      file:///DIR          files under DIR (after resolving '..' and links)
//  - every address a fetch connects to, on every redirect hop, after name
//    resolution: never link-local (169.254.0.0/16 — the cloud metadata
//    services —, fe80::/10), AWS's fd00:ec2::254, Alibaba's 100.100.100.200,
//    unspecified, multicast or broadcast; loopback only when allowed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::agent {

// Whether a fetch may connect to `address` (an IPv4 or IPv6 literal).
Status admit_fetch_address(std::string_view address, bool allow_loopback);

class SourcePolicy {
 public:
  // Every scheme; loopback allowed (a developer's machine).
  SourcePolicy() = default;
  // Errors name the bad entry.
  static Result<SourcePolicy> create(std::vector<std::string> allow, bool allow_loopback);

  // kPermissionDenied with the reason when the policy refuses `uri`.
  Status admit(std::string_view uri) const;
  Status admit_address(std::string_view address) const {
    return admit_fetch_address(address, allow_loopback_);
  }
  const std::vector<std::string>& allow() const { return allow_; }
  bool allow_loopback() const { return allow_loopback_; }

 private:
  std::vector<std::string> allow_;
  bool allow_loopback_ = true;
};

}  // namespace loadstar::agent
