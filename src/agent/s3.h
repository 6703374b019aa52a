// S3: AWS Signature Version 4 (header form) and a source over any
// S3-compatible endpoint (path-style URLs, ListObjectsV2, ranged GETs).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "agent/source.h"
#include "http/server.h"

namespace loadstar::agent {

struct SigV4Request {
  std::string method = "GET";
  std::string host;                   // the Host header as sent (with :port when not default)
  std::string path;                   // already URI-encoded, as on the request line
  std::string query;                  // raw query without '?', each name/value URI-encoded
  std::vector<http::Header> headers;  // to sign besides host (x-amz-date is added)
  std::string payload_sha256;         // hex; the empty-body digest for GETs
};

struct SigV4Scope {
  std::string region;
  std::string service = "s3";
  std::string amz_date;  // YYYYMMDDTHHMMSSZ
};

struct SigV4Result {
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;
  std::string authorization;  // the Authorization header value
};

// Signs a request (pure: the time comes in `scope`).
SigV4Result sign_v4(const SigV4Request& request, const SigV4Scope& scope,
                    const S3Credentials& credentials);

Result<std::unique_ptr<Source>> open_s3_source(std::string_view uri, const SourceOptions& options);

// Reads credentials from an AWS shared credentials file (INI): the section
// [profile] with aws_access_key_id, aws_secret_access_key, aws_session_token.
Result<S3Credentials> read_credentials_file(const std::string& path, const std::string& profile);

}  // namespace loadstar::agent
