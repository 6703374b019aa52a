#include "agent/http_fetch.h"

#include "common/strings.h"

#include <algorithm>
#include <charconv>

namespace loadstar::agent {

namespace {

std::string without_query(const Url& url) {
  return url.origin() + url.target.substr(0, url.target.find('?'));
}

}  // namespace

Result<http::ClientResponse> http_get(const HttpGet& get) {
  Url url = get.url;
  for (int hop = 0; hop < 6; ++hop) {
    if (url.scheme != "http" && url.scheme != "https")
      return make_error(ErrorCode::kInvalidArgument, "cannot fetch '{}': not http(s)",
                        without_query(url));
    http::ClientRequest request;
    request.host = url.host;
    request.port = url.port;
    request.tls = url.scheme == "https";
    request.method = get.method;
    request.target = url.target;
    request.headers = get.headers;
    if (url.host == get.url.host && url.port == get.url.port)
      request.headers.insert(request.headers.end(), get.private_headers.begin(),
                             get.private_headers.end());
    if (get.sign) get.sign(url, request.headers);
    request.timeout_s = get.total_timeout_s;
    request.stall_timeout_s = get.stall_timeout_s;
    request.admit_address = get.admit_address;
    int status = 0;
    request.on_headers = [&](const http::ClientResponse& r) { status = r.status; };
    std::string error_body;
    auto on_data = [&](std::string_view data) {
      if (status >= 200 && status < 300) return !get.sink || get.sink(data);
      if (error_body.size() < 2048) error_body.append(data.substr(0, 2048 - error_body.size()));
      return true;
    };
    auto response = get.pool ? get.pool->fetch_streaming(request, on_data)
                             : http::fetch_streaming(request, on_data);
    if (!response.ok())
      return std::move(response).error().context(get.method + " " + without_query(url));
    if (status >= 300 && status < 400 && status != 304) {
      std::string_view location = response->header("location");
      if (location.empty())
        return make_error(ErrorCode::kUnavailable, "{} {} answered {} without a Location",
                          get.method, without_query(url), status);
      LS_ASSIGN_OR_RETURN(url, resolve_location(url, location));
      continue;
    }
    if (status >= 200 && status < 300) return std::move(*response);
    ErrorCode code = ErrorCode::kUnavailable;
    if (status == 401 || status == 403) code = ErrorCode::kPermissionDenied;
    if (status == 404 || status == 410) code = ErrorCode::kNotFound;
    std::replace(error_body.begin(), error_body.end(), '\n', ' ');
    std::erase(error_body, '\r');
    error_body = utf8_clip(error_body, 200) + (error_body.size() > 200 ? "..." : "");
    return make_error(code, "{} {} answered {}{}{}", get.method, without_query(url), status,
                      error_body.empty() ? "" : ": ", error_body);
  }
  return make_error(ErrorCode::kUnavailable, "{} {}: more than 5 redirects", get.method,
                    without_query(get.url));
}

Status http_read_range(HttpGet get, uint64_t offset, uint64_t length, uint64_t file_size,
                       const ByteSink& sink) {
  if (length == 0) return {};
  get.headers.push_back({"Range", fmt::format("bytes={}-{}", offset, offset + length - 1)});
  uint64_t received = 0;
  bool overflow = false;
  get.sink = [&](std::string_view data) {
    if (received + data.size() > length) {
      overflow = true;
      return false;
    }
    received += data.size();
    return sink(data);
  };
  LS_ASSIGN_OR_RETURN(auto response, http_get(get));
  if (response.status == 200 && !(offset == 0 && length == file_size))
    return make_error(ErrorCode::kUnavailable, "GET {}: the server ignored the Range header",
                      without_query(get.url));
  if (response.status == 206) {
    std::string_view range = response.header("content-range");  // bytes a-b/size
    uint64_t start = 0;
    const size_t sp = range.find(' ');
    if (sp == std::string_view::npos ||
        std::from_chars(range.data() + sp + 1, range.data() + range.size(), start).ec !=
            std::errc() ||
        start != offset)
      return make_error(ErrorCode::kUnavailable, "GET {}: Content-Range '{}' is not bytes {}-",
                        without_query(get.url), range, offset);
  }
  if (overflow || received != length)
    return make_error(ErrorCode::kUnavailable, "GET {}: got {} of {} bytes at offset {}",
                      without_query(get.url), received, length, offset);
  return {};
}

}  // namespace loadstar::agent
