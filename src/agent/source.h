// Where a model's bytes come from. A Source lists a model version's files
// (resolve) and reads byte ranges of them (read); it does not verify, retry
// or write anything: the stager does, the same way for every source.
//
//   file:///abs/dir                 a directory (or one file) on this machine
//   http(s)://host/path/            a web server: the directory's
//                                   model.safetensors.index.json (or
//                                   model.safetensors) and config files
//   hf://org/name[@revision]        the Hugging Face Hub protocol at
//                                   $HF_ENDPOINT (default https://huggingface.co)
//   s3://bucket/prefix              any S3-compatible endpoint, Signature V4
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "agent/manifest.h"
#include "agent/source_policy.h"
#include "common/result.h"

namespace loadstar::http {
class ClientPool;
}

namespace loadstar::agent {

struct S3Credentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // temporary credentials only
};

struct SourceOptions {
  std::string hf_endpoint;  // empty: $HF_ENDPOINT, else https://huggingface.co
  std::string hf_token;     // empty: $HF_TOKEN
  std::string s3_endpoint;  // empty: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS
  std::string s3_region;    // empty: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1
  // Empty: $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY/$AWS_SESSION_TOKEN, else
  // the profile $AWS_PROFILE (default) of $AWS_SHARED_CREDENTIALS_FILE
  // (default ~/.aws/credentials).
  S3Credentials s3_credentials;
  double connect_timeout_s = 10;
  double stall_timeout_s = 20;  // no byte for this long: the read fails
  // Which URIs open_source accepts and which addresses fetches connect to.
  SourcePolicy policy;
  // Connections kept alive between reads (each chunk a new connection in
  // TCP slow start, and a TLS handshake, cost the origin link); open_source
  // makes one per source when unset.
  std::shared_ptr<http::ClientPool> pool;
};

// Called with the bytes of a read in order; false stops the read.
using ByteSink = std::function<bool(std::string_view)>;

class Source {
 public:
  virtual ~Source() = default;
  // The files of the model version, validated (no '..', no absolute paths).
  virtual Result<Manifest> resolve() = 0;
  // Reads [offset, offset + length) of `file` into `sink`. A short read is an
  // error. kNotFound / kPermissionDenied are final; other errors may be retried.
  virtual Status read(const FileEntry& file, uint64_t offset, uint64_t length,
                      const ByteSink& sink) = 0;
};

// kPermissionDenied when options.policy refuses the URI.
Result<std::unique_ptr<Source>> open_source(std::string_view uri, const SourceOptions& options);

}  // namespace loadstar::agent
