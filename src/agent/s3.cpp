#include "agent/s3.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>

#include <pugixml.hpp>

#include "agent/http_fetch.h"
#include "common/digest.h"

namespace loadstar::agent {

namespace {

constexpr std::string_view kEmptySha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return std::string(s);
}

std::string canonical_query(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> params;
  size_t start = 0;
  while (start < query.size()) {
    size_t end = query.find('&', start);
    if (end == std::string_view::npos) end = query.size();
    std::string_view pair = query.substr(start, end - start);
    const size_t eq = pair.find('=');
    params.emplace_back(std::string(pair.substr(0, eq)),
                        eq == std::string_view::npos ? "" : std::string(pair.substr(eq + 1)));
    start = end + 1;
  }
  std::sort(params.begin(), params.end());
  std::string out;
  for (const auto& [k, v] : params) out += (out.empty() ? "" : "&") + k + "=" + v;
  return out;
}

std::string amz_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

class S3Source : public Source {
 public:
  S3Source(std::string uri, std::string bucket, std::string prefix, Url endpoint,
           std::string region, S3Credentials credentials, SourceOptions options)
      : uri_(std::move(uri)),
        bucket_(std::move(bucket)),
        prefix_(std::move(prefix)),
        endpoint_(std::move(endpoint)),
        region_(std::move(region)),
        credentials_(std::move(credentials)),
        options_(std::move(options)) {}

  Result<Manifest> resolve() override {
    Manifest m;
    m.source = uri_;
    std::string token;
    do {
      std::string query = "list-type=2&prefix=" + uri_encode(prefix_, false);
      if (!token.empty()) query += "&continuation-token=" + uri_encode(token, false);
      std::string body;
      HttpGet get = request("/" + uri_encode(bucket_, false), query);
      get.sink = [&](std::string_view d) {
        body.append(d);
        return body.size() < (64u << 20);
      };
      LS_RETURN_IF_ERROR(http_get(get));
      pugi::xml_document doc;
      if (!doc.load_buffer(body.data(), body.size()))
        return make_error(ErrorCode::kCorrupt, "{}: ListObjectsV2 answered with malformed XML",
                          uri_);
      pugi::xml_node result = doc.child("ListBucketResult");
      if (!result)
        return make_error(ErrorCode::kCorrupt,
                          "{}: ListObjectsV2 answered without ListBucketResult", uri_);
      for (pugi::xml_node c : result.children("Contents")) {
        std::string key = c.child_value("Key");
        if (key.ends_with("/")) continue;  // a "directory" marker
        FileEntry f;
        f.path = key.substr(prefix_.size());
        f.size = std::strtoull(c.child_value("Size"), nullptr, 10);
        f.etag = c.child_value("ETag");
        f.etag.erase(std::remove(f.etag.begin(), f.etag.end(), '"'), f.etag.end());
        m.files.push_back(std::move(f));
      }
      token = std::string(result.child("IsTruncated").text().as_bool()
                              ? result.child_value("NextContinuationToken")
                              : "");
    } while (!token.empty());
    if (m.files.empty())
      return make_error(ErrorCode::kNotFound, "{}: no objects under this prefix", uri_);
    std::sort(m.files.begin(), m.files.end(),
              [](const auto& a, const auto& b) { return a.path < b.path; });
    LS_RETURN_IF_ERROR(validate_manifest(m));
    return m;
  }

  Status read(const FileEntry& file, uint64_t offset, uint64_t length,
              const ByteSink& sink) override {
    return http_read_range(
        request("/" + uri_encode(bucket_, false) + "/" + uri_encode(prefix_ + file.path, true), ""),
        offset, length, file.size, sink);
  }

 private:
  // A GET signed at send time (every hop, with the Range header included).
  HttpGet request(const std::string& path, const std::string& query) {
    HttpGet get;
    get.url = endpoint_;
    get.url.target = path + (query.empty() ? "" : "?" + query);
    get.connect_timeout_s = options_.connect_timeout_s;
    get.stall_timeout_s = options_.stall_timeout_s;
    get.pool = options_.pool.get();
    get.admit_address = [policy = options_.policy](std::string_view address) {
      return policy.admit_address(address);
    };
    get.sign = [this](const Url& url, std::vector<http::Header>& headers) {
      SigV4Request r;
      r.host = url.origin().substr(url.scheme.size() + 3);
      const size_t q = url.target.find('?');
      r.path = url.target.substr(0, q);
      r.query = q == std::string::npos ? "" : url.target.substr(q + 1);
      r.payload_sha256 = std::string(kEmptySha256);
      headers.push_back({"x-amz-content-sha256", r.payload_sha256});
      if (!credentials_.session_token.empty())
        headers.push_back({"x-amz-security-token", credentials_.session_token});
      for (const auto& h : headers)
        if (lower(h.name) == "range" || lower(h.name).starts_with("x-amz-")) r.headers.push_back(h);
      SigV4Scope scope{region_, "s3", amz_now()};
      headers.push_back({"x-amz-date", scope.amz_date});
      headers.push_back({"Host", r.host});
      headers.push_back({"Authorization", sign_v4(r, scope, credentials_).authorization});
    };
    return get;
  }

  std::string uri_, bucket_, prefix_;
  Url endpoint_;
  std::string region_;
  S3Credentials credentials_;
  SourceOptions options_;
};

}  // namespace

SigV4Result sign_v4(const SigV4Request& request, const SigV4Scope& scope,
                    const S3Credentials& credentials) {
  std::vector<std::pair<std::string, std::string>> headers;
  headers.emplace_back("host", request.host);
  headers.emplace_back("x-amz-date", scope.amz_date);
  for (const auto& h : request.headers) {
    const std::string name = lower(h.name);
    if (name == "host" || name == "x-amz-date") continue;
    headers.emplace_back(name, trim(h.value));
  }
  std::sort(headers.begin(), headers.end());
  std::string canonical_headers, signed_headers;
  for (const auto& [name, value] : headers) {
    canonical_headers += name + ":" + value + "\n";
    signed_headers += (signed_headers.empty() ? "" : ";") + name;
  }
  SigV4Result out;
  out.canonical_request = request.method + "\n" + (request.path.empty() ? "/" : request.path) +
                          "\n" + canonical_query(request.query) + "\n" + canonical_headers + "\n" +
                          signed_headers + "\n" + request.payload_sha256;
  const std::string date = scope.amz_date.substr(0, 8);
  const std::string credential_scope =
      date + "/" + scope.region + "/" + scope.service + "/aws4_request";
  out.string_to_sign = "AWS4-HMAC-SHA256\n" + scope.amz_date + "\n" + credential_scope + "\n" +
                       sha256_hex(out.canonical_request);
  std::string key = hmac_sha256("AWS4" + credentials.secret_access_key, date);
  key = hmac_sha256(key, scope.region);
  key = hmac_sha256(key, scope.service);
  key = hmac_sha256(key, "aws4_request");
  out.signature = hex_encode(hmac_sha256(key, out.string_to_sign));
  out.authorization = "AWS4-HMAC-SHA256 Credential=" + credentials.access_key_id + "/" +
                      credential_scope + ",SignedHeaders=" + signed_headers +
                      ",Signature=" + out.signature;
  return out;
}

Result<S3Credentials> read_credentials_file(const std::string& path, const std::string& profile) {
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::kNotFound, "cannot read credentials file {}", path);
  S3Credentials c;
  std::string line, section;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::string t = trim(line);
    if (t.empty() || t[0] == '#' || t[0] == ';') continue;
    if (t.front() == '[') {
      if (t.back() != ']')
        return make_error(ErrorCode::kInvalidArgument, "{}:{}: unterminated section", path, number);
      section = trim(std::string_view(t).substr(1, t.size() - 2));
      continue;
    }
    const size_t eq = t.find('=');
    if (eq == std::string::npos)
      return make_error(ErrorCode::kInvalidArgument, "{}:{}: expected key = value", path, number);
    if (section != profile) continue;
    const std::string key = trim(std::string_view(t).substr(0, eq));
    const std::string value = trim(std::string_view(t).substr(eq + 1));
    if (key == "aws_access_key_id") c.access_key_id = value;
    if (key == "aws_secret_access_key") c.secret_access_key = value;
    if (key == "aws_session_token") c.session_token = value;
  }
  if (c.access_key_id.empty() || c.secret_access_key.empty())
    return make_error(ErrorCode::kNotFound,
                      "{}: profile [{}] has no aws_access_key_id and aws_secret_access_key", path,
                      profile);
  return c;
}

Result<std::unique_ptr<Source>> open_s3_source(std::string_view uri, const SourceOptions& options) {
  std::string rest(uri.substr(5));
  const size_t slash = rest.find('/');
  std::string bucket = rest.substr(0, slash);
  std::string prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  if (bucket.empty())
    return make_error(ErrorCode::kInvalidArgument, "'{}' is not s3://BUCKET[/PREFIX]", uri);
  if (!prefix.empty() && !prefix.ends_with('/')) prefix += '/';
  std::string endpoint = options.s3_endpoint;
  if (endpoint.empty()) endpoint = env("AWS_ENDPOINT_URL_S3");
  if (endpoint.empty()) endpoint = env("AWS_ENDPOINT_URL");
  std::string region = options.s3_region;
  if (region.empty()) region = env("AWS_REGION");
  if (region.empty()) region = env("AWS_DEFAULT_REGION");
  if (region.empty()) region = "us-east-1";
  if (endpoint.empty()) endpoint = "https://s3." + region + ".amazonaws.com";
  LS_ASSIGN_OR_RETURN(Url url, parse_url(endpoint));
  S3Credentials credentials = options.s3_credentials;
  if (credentials.access_key_id.empty()) {
    credentials = {env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"),
                   env("AWS_SESSION_TOKEN")};
  }
  if (credentials.access_key_id.empty()) {
    std::string file = env("AWS_SHARED_CREDENTIALS_FILE");
    if (file.empty() && !env("HOME").empty()) file = env("HOME") + "/.aws/credentials";
    std::string profile = env("AWS_PROFILE");
    if (profile.empty()) profile = "default";
    auto read = read_credentials_file(file, profile);
    if (!read.ok())
      return make_error(ErrorCode::kPermissionDenied,
                        "{}: no S3 credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or {})",
                        uri, read.error().message);
    credentials = *read;
  }
  return std::unique_ptr<Source>(std::make_unique<S3Source>(std::string(uri), bucket, prefix, url,
                                                            region, credentials, options));
}

}  // namespace loadstar::agent
