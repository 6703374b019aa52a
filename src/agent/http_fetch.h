// HTTP GETs as sources need them: redirects followed (credentials kept only
// for the host they were meant for), statuses turned into errors a user can
// act on, ranged reads checked for length. Shared by the http, hf and s3
// sources and by peer fetches.
#pragma once

#include <string>
#include <vector>

#include "agent/source.h"
#include "common/url.h"
#include "http/client.h"

namespace loadstar::agent {

struct HttpGet {
  Url url;
  std::string method = "GET";
  std::vector<http::Header> headers;          // sent to every hop
  std::vector<http::Header> private_headers;  // sent only to url's host (tokens)
  double connect_timeout_s = 10;
  double stall_timeout_s = 20;
  double total_timeout_s = 3600;
  // Receives the body of a 2xx response; error bodies are kept for the message.
  ByteSink sink;
  // Hook for signing each hop (S3 signs the exact request it sends).
  std::function<void(const Url&, std::vector<http::Header>&)> sign;
  // Checks every hop's addresses (redirects included); see ClientRequest.
  std::function<Status(std::string_view address)> admit_address;
  // Set: connections are kept alive in it between requests.
  http::ClientPool* pool = nullptr;
};

// Returns the final response (body empty when a sink took it). A non-2xx
// final status is an error: 401/403 kPermissionDenied, 404/410 kNotFound,
// others kUnavailable; the message names method, URL (no query) and status.
Result<http::ClientResponse> http_get(const HttpGet& get);

// A GET of `length` bytes at `offset`: sends Range, accepts 206 with the
// right Content-Range (or 200 when the range is the whole file), fails on a
// short body.
Status http_read_range(HttpGet get, uint64_t offset, uint64_t length, uint64_t file_size,
                       const ByteSink& sink);

}  // namespace loadstar::agent
