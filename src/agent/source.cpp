#include "agent/source.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "agent/http_fetch.h"
#include "agent/s3.h"
#include "common/json_value.h"

namespace loadstar::agent {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// --- file:// ---------------------------------------------------------------

class FileSource : public Source {
 public:
  FileSource(std::string uri, fs::path root) : uri_(std::move(uri)), root_(std::move(root)) {}

  Result<Manifest> resolve() override {
    Manifest m;
    m.source = uri_;
    std::error_code ec;
    if (fs::is_regular_file(root_, ec)) {
      single_ = true;
      m.files.push_back({root_.filename().string(), fs::file_size(root_, ec), "", ""});
    } else if (fs::is_directory(root_, ec)) {
      for (auto it = fs::recursive_directory_iterator(root_, ec); !ec && it != fs::end(it);
           it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.starts_with(".")) {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (!it->is_regular_file()) continue;
        m.files.push_back(
            {fs::relative(it->path(), root_).generic_string(), it->file_size(), "", ""});
      }
      if (ec) return make_error(ErrorCode::kIo, "listing {}: {}", root_.string(), ec.message());
      std::sort(m.files.begin(), m.files.end(),
                [](const auto& a, const auto& b) { return a.path < b.path; });
    } else {
      return make_error(ErrorCode::kNotFound, "{}: no such file or directory", root_.string());
    }
    LS_RETURN_IF_ERROR(validate_manifest(m));
    return m;
  }

  Status read(const FileEntry& file, uint64_t offset, uint64_t length,
              const ByteSink& sink) override {
    const fs::path path = single_ ? root_ : root_ / file.path;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return make_error(errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo, "open {}: {}",
                        path.string(), std::strerror(errno));
    std::string buffer(std::min<uint64_t>(length, 1 << 20), '\0');
    Status status;
    while (length > 0) {
      const ssize_t n = ::pread(fd, buffer.data(), std::min<uint64_t>(length, buffer.size()),
                                static_cast<off_t>(offset));
      if (n <= 0) {
        status = make_error(ErrorCode::kIo, "read {} at {}: {}", path.string(), offset,
                            n == 0 ? "unexpected end of file" : std::strerror(errno));
        break;
      }
      if (!sink(std::string_view(buffer.data(), static_cast<size_t>(n)))) break;
      offset += static_cast<uint64_t>(n);
      length -= static_cast<uint64_t>(n);
    }
    ::close(fd);
    return status;
  }

 private:
  std::string uri_;
  fs::path root_;
  bool single_ = false;
};

// --- http(s):// ---------------------------------------------------------------

HttpGet base_get(const Url& url, const SourceOptions& options) {
  HttpGet get;
  get.url = url;
  get.connect_timeout_s = options.connect_timeout_s;
  get.stall_timeout_s = options.stall_timeout_s;
  get.pool = options.pool.get();
  get.admit_address = [policy = options.policy](std::string_view address) {
    return policy.admit_address(address);
  };
  return get;
}

Url join(Url base, std::string_view relative) {
  base.target = base.target.substr(0, base.target.find('?'));
  if (!base.target.ends_with('/')) base.target += '/';
  base.target += uri_encode(relative, true);
  return base;
}

// A web server directory: loadstar-manifest.json when the origin publishes
// one (with digests), else the safetensors index and the usual config files.
class HttpSource : public Source {
 public:
  HttpSource(std::string uri, Url url, SourceOptions options)
      : uri_(std::move(uri)), url_(std::move(url)), options_(std::move(options)) {}

  Result<Manifest> resolve() override {
    Manifest m;
    m.source = uri_;
    const std::string path = url_.target.substr(0, url_.target.find('?'));
    if (!path.ends_with('/')) {  // one file
      single_ = true;
      LS_ASSIGN_OR_RETURN(auto head, head_of(url_));
      m.files.push_back({path.substr(path.rfind('/') + 1), head.first, "", head.second});
      LS_RETURN_IF_ERROR(validate_manifest(m));
      return m;
    }
    if (auto text = get_text(join(url_, "loadstar-manifest.json")); text.ok()) {
      LS_ASSIGN_OR_RETURN(Manifest published, manifest_from_json(*text));
      published.source = uri_;
      return published;
    } else if (text.error().code != ErrorCode::kNotFound) {
      return std::move(text).error();
    }
    std::set<std::string> names;
    if (auto index = get_text(join(url_, "model.safetensors.index.json")); index.ok()) {
      json doc = json::parse(*index, nullptr, false);
      if (doc.is_discarded() || !doc.contains("weight_map") || !doc["weight_map"].is_object())
        return make_error(ErrorCode::kCorrupt, "{}model.safetensors.index.json has no weight_map",
                          uri_);
      for (const auto& [tensor, file] : doc["weight_map"].items())
        if (file.is_string()) names.insert(file.get<std::string>());
      names.insert("model.safetensors.index.json");
    } else if (index.error().code == ErrorCode::kNotFound) {
      names.insert("model.safetensors");
    } else {
      return std::move(index).error();
    }
    for (const char* optional : {"config.json", "generation_config.json", "tokenizer.json",
                                 "tokenizer_config.json", "special_tokens_map.json"}) {
      auto head = head_of(join(url_, optional));
      if (head.ok())
        names.insert(optional);
      else if (head.error().code != ErrorCode::kNotFound)
        return std::move(head).error();
    }
    for (const auto& name : names) {
      LS_RETURN_IF_ERROR(validate_relative_path(name));
      LS_ASSIGN_OR_RETURN(auto head, head_of(join(url_, name)));
      m.files.push_back({name, head.first, "", head.second});
    }
    LS_RETURN_IF_ERROR(validate_manifest(m));
    return m;
  }

  Status read(const FileEntry& file, uint64_t offset, uint64_t length,
              const ByteSink& sink) override {
    return http_read_range(base_get(single_ ? url_ : join(url_, file.path), options_), offset,
                           length, file.size, sink);
  }

 private:
  Result<std::string> get_text(const Url& url) {
    std::string body;
    HttpGet get = base_get(url, options_);
    get.sink = [&](std::string_view d) {
      body.append(d);
      return body.size() < (64u << 20);
    };
    LS_RETURN_IF_ERROR(http_get(get));
    return body;
  }

  // Size and ETag of a file from a HEAD request.
  Result<std::pair<uint64_t, std::string>> head_of(const Url& url) {
    HttpGet get = base_get(url, options_);
    get.method = "HEAD";
    LS_ASSIGN_OR_RETURN(auto response, http_get(get));
    std::string_view length = response.header("content-length");
    uint64_t size = 0;
    if (std::from_chars(length.data(), length.data() + length.size(), size).ec != std::errc())
      return make_error(ErrorCode::kUnavailable, "HEAD {}: no Content-Length",
                        url.origin() + url.target);
    return std::pair{size, std::string(response.header("etag"))};
  }

  std::string uri_;
  Url url_;
  SourceOptions options_;
  bool single_ = false;
};

// --- hf:// ----------------------------------------------------------------------

class HfSource : public Source {
 public:
  HfSource(std::string uri, std::string repo, std::string revision, std::string file, Url endpoint,
           SourceOptions options)
      : uri_(std::move(uri)),
        repo_(std::move(repo)),
        revision_(std::move(revision)),
        file_(std::move(file)),
        endpoint_(std::move(endpoint)),
        options_(std::move(options)) {}

  Result<Manifest> resolve() override {
    HttpGet get = authorized(join(endpoint_, "api/models/" + repo_ + "/revision/"));
    get.url.target += uri_encode(revision_, false) + "?blobs=true";
    std::string body;
    get.sink = [&](std::string_view d) {
      body.append(d);
      return body.size() < (64u << 20);
    };
    auto response = http_get(get);
    if (!response.ok()) {
      Error e = std::move(response).error();
      if (e.code == ErrorCode::kPermissionDenied)
        e.message += " (a gated or private repository needs a token: HF_TOKEN)";
      return e;
    }
    json doc = json::parse(body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object() || !doc.contains("sha") || !doc["sha"].is_string() ||
        !doc.contains("siblings") || !doc["siblings"].is_array())
      return make_error(ErrorCode::kCorrupt, "{}: the Hub answered without sha and siblings", uri_);
    Manifest m;
    m.source = uri_;
    m.revision = doc["sha"].get<std::string>();
    for (const auto& s : doc["siblings"]) {
      if (!s.is_object() || !s.contains("rfilename") || !s["rfilename"].is_string()) continue;
      FileEntry f;
      f.path = s["rfilename"].get<std::string>();
      // .gitattributes and the like; "../x" is not skipped but rejected below.
      if (f.path.starts_with(".") && !f.path.starts_with("..") &&
          f.path.find('/') == std::string::npos)
        continue;
      if (s.contains("lfs") && s["lfs"].is_object()) {
        f.size = value_or(s["lfs"], "size", uint64_t{0});
        f.sha256 = value_or(s["lfs"], "sha256", "");
      } else {
        f.size = value_or(s, "size", uint64_t{0});
      }
      f.etag = value_or(s, "blobId", "");
      if (!file_.empty() && f.path != file_) continue;
      m.files.push_back(std::move(f));
    }
    if (!file_.empty() && m.files.empty())
      return make_error(ErrorCode::kNotFound, "{}: the repository has no file '{}'", uri_, file_);
    LS_RETURN_IF_ERROR(validate_manifest(m));
    resolved_ = m.revision;
    return m;
  }

  Status read(const FileEntry& file, uint64_t offset, uint64_t length,
              const ByteSink& sink) override {
    // The commit, not the branch: a push during the download cannot mix versions.
    return http_read_range(
        authorized(join(endpoint_, repo_ + "/resolve/" + resolved_ + "/" + file.path)), offset,
        length, file.size, sink);
  }

 private:
  HttpGet authorized(const Url& url) {
    HttpGet get = base_get(url, options_);
    if (!options_.hf_token.empty())
      get.private_headers.push_back({"Authorization", "Bearer " + options_.hf_token});
    return get;
  }

  std::string uri_, repo_, revision_;
  std::string file_;  // one file of the repository; empty: all of it
  Url endpoint_;
  SourceOptions options_;
  std::string resolved_;
};

}  // namespace

Result<std::unique_ptr<Source>> open_source(std::string_view uri, const SourceOptions& given) {
  SourceOptions options = given;
  LS_RETURN_IF_ERROR(options.policy.admit(uri));
  if (!options.pool) options.pool = std::make_shared<http::ClientPool>();
  if (uri.starts_with("file://")) {
    fs::path root(std::string(uri.substr(7)));
    if (!root.is_absolute())
      return make_error(ErrorCode::kInvalidArgument, "'{}': file:// needs an absolute path", uri);
    return std::unique_ptr<Source>(std::make_unique<FileSource>(std::string(uri), root));
  }
  if (uri.starts_with("hf://")) {
    // hf://ORG/NAME[@REVISION][/FILE]: a repository, or one file of it
    // (a GGUF among several quantizations).
    std::string repo(uri.substr(5));
    std::string file;
    if (const size_t slash = repo.find('/');
        slash != std::string::npos && repo.find('/', slash + 1) != std::string::npos) {
      const size_t second = repo.find('/', slash + 1);
      file = repo.substr(second + 1);
      repo.resize(second);
    }
    std::string revision = "main";
    if (const size_t at = repo.find('@'); at != std::string::npos) {
      revision = repo.substr(at + 1);
      repo = repo.substr(0, at);
    }
    if (repo.empty() || repo.find("..") != std::string::npos || repo.starts_with("/") ||
        revision.empty() || file.find("..") != std::string::npos ||
        (!file.empty() && file.ends_with("/")))
      return make_error(ErrorCode::kInvalidArgument,
                        "'{}' is not hf://ORG/NAME[@REVISION] or hf://ORG/NAME[@REVISION]/FILE",
                        uri);
    if (options.hf_endpoint.empty()) options.hf_endpoint = env("HF_ENDPOINT");
    if (options.hf_endpoint.empty()) options.hf_endpoint = "https://huggingface.co";
    if (options.hf_token.empty()) options.hf_token = env("HF_TOKEN");
    LS_ASSIGN_OR_RETURN(Url endpoint, parse_url(options.hf_endpoint));
    return std::unique_ptr<Source>(std::make_unique<HfSource>(
        std::string(uri), repo, revision, std::move(file), std::move(endpoint), options));
  }
  if (uri.starts_with("http://") || uri.starts_with("https://")) {
    LS_ASSIGN_OR_RETURN(Url url, parse_url(uri));
    return std::unique_ptr<Source>(std::make_unique<HttpSource>(std::string(uri), url, options));
  }
  if (uri.starts_with("s3://")) return open_s3_source(uri, options);
  return make_error(ErrorCode::kInvalidArgument,
                    "'{}': unknown source scheme (file://, http://, https://, hf://, s3://)", uri);
}

}  // namespace loadstar::agent
