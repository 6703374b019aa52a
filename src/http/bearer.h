// The shared secret Loadstar's own parts present to each other: the node
// agent's API (stage, blobs, models), agent-to-agent chunk transfers, the
// gateways' internal endpoints and the controller's admin API. Kubernetes
// mode keeps it in the Secret loadstar-internal (key `token`), which the
// controller creates when it is missing; `loadstar up` needs none (all its
// internal endpoints are on loopback).
#pragma once

#include <optional>
#include <string_view>

#include <optional>
#include <string>

#include "common/result.h"
#include "http/server.h"

namespace loadstar::http {

class BearerToken {
 public:
  // The token in `path` (surrounding whitespace ignored); at least 16
  // characters, printable ASCII.
  static Result<BearerToken> from_file(const std::string& path);
  static Result<BearerToken> from_string(std::string token, std::string_view origin);
  // --token-file when given, else $LOADSTAR_TOKEN, else none.
  static Result<std::optional<BearerToken>> from_flag_or_env(const std::string& token_file);
  // 32 random bytes, hex: a new cluster's token.
  static std::string generate();

  // Whether the request carries `Authorization: Bearer <this token>`
  // (compared in constant time).
  bool admits(const Request& request) const;
  Header header() const { return {"Authorization", "Bearer " + token_}; }
  const std::string& value() const { return token_; }

  // A namespace's token, derived from this one: "ns.NAMESPACE.HMAC" with
  // HMAC-SHA256 keyed by this token. A controller that follows other
  // namespaces puts it there (their replica Pods stage with it, their
  // gateways serve with it); the agents, which hold this token, tell from
  // it which namespace calls and let it stage only that namespace's models.
  // It reveals nothing of this token, and rotating this token revokes it.
  BearerToken for_namespace(std::string_view namespace_name) const;
  // The namespace of a request's derived token; nullopt for none (or a
  // forged one).
  std::optional<std::string> namespace_of(const Request& request) const;

 private:
  explicit BearerToken(std::string token) : token_(std::move(token)) {}
  std::string token_;
};

// The 401 an internal endpoint answers a caller without the token.
Response unauthorized(std::string_view what);

}  // namespace loadstar::http
