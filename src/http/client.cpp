#include "http/client.h"

#include <chrono>
#include <optional>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

namespace loadstar::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;

std::string_view ClientResponse::header(std::string_view name) const {
  for (const Header& h : headers) {
    if (h.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i)
      same = std::tolower(static_cast<unsigned char>(h.name[i])) ==
             std::tolower(static_cast<unsigned char>(name[i]));
    if (same) return h.value;
  }
  return {};
}

namespace {

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

asio::awaitable<void> exchange(ClientRequest request, std::function<bool(std::string_view)> on_data,
                               ClientResponse* response, std::optional<Error>* error) {
  auto executor = co_await asio::this_coro::executor;
  beast::tcp_stream stream(executor);
  boost::system::error_code ec;
  auto address = asio::ip::make_address(request.host, ec);
  if (ec) {
    *error = make_error(ErrorCode::kInvalidArgument, "'{}' is not an IP address", request.host);
    co_return;
  }
  auto [cec] = co_await stream.async_connect(tcp::endpoint(address, request.port), kUseTuple);
  if (cec) {
    *error = make_error(ErrorCode::kUnavailable, "connect to {}:{}: {}", request.host, request.port,
                        cec.message());
    co_return;
  }
  bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(request.method), request.target, 11};
  req.set(bhttp::field::host, request.host);
  req.set(bhttp::field::user_agent, "loadstar");
  for (const Header& h : request.headers) req.set(h.name, h.value);
  if (!request.body.empty() && req[bhttp::field::content_type].empty())
    req.set(bhttp::field::content_type, "application/json");
  req.body() = std::move(request.body);
  req.prepare_payload();
  auto [wec, wn] = co_await bhttp::async_write(stream, req, kUseTuple);
  if (wec) {
    *error = make_error(ErrorCode::kUnavailable, "send to {}:{}: {}", request.host, request.port,
                        wec.message());
    co_return;
  }
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.body_limit(boost::none);
  auto [hec, hn] = co_await bhttp::async_read_header(stream, buffer, parser, kUseTuple);
  if (hec) {
    *error = make_error(ErrorCode::kUnavailable, "read from {}:{}: {}", request.host, request.port,
                        hec.message());
    co_return;
  }
  response->status = parser.get().result_int();
  for (const auto& field : parser.get())
    response->headers.push_back({std::string(field.name_string()), std::string(field.value())});
  char chunk[16384];
  while (!parser.is_done()) {
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof(chunk);
    auto [rec, rn] = co_await bhttp::async_read_some(stream, buffer, parser, kUseTuple);
    if (rec == bhttp::error::need_buffer) rec = {};
    if (rec) {
      *error = make_error(ErrorCode::kUnavailable, "read body from {}:{}: {}", request.host,
                          request.port, rec.message());
      co_return;
    }
    size_t n = sizeof(chunk) - parser.get().body().size;
    if (n > 0 && !on_data(std::string_view(chunk, n))) co_return;
  }
}

Result<ClientResponse> run(const ClientRequest& request,
                           std::function<bool(std::string_view)> on_data) {
  asio::io_context ctx;
  ClientResponse response;
  std::optional<Error> error;
  asio::co_spawn(ctx, exchange(request, std::move(on_data), &response, &error), asio::detached);
  ctx.run_for(std::chrono::milliseconds(static_cast<int64_t>(request.timeout_s * 1000)));
  if (!ctx.stopped()) {
    return make_error(ErrorCode::kUnavailable, "{} {}:{}{} timed out after {}s", request.method,
                      request.host, request.port, request.target, request.timeout_s);
  }
  if (error) return std::move(*error);
  return response;
}

}  // namespace

Result<ClientResponse> fetch(const ClientRequest& request) {
  std::string body;
  auto response = run(request, [&](std::string_view data) {
    body.append(data);
    return true;
  });
  if (response.ok()) response->body = std::move(body);
  return response;
}

Result<ClientResponse> fetch_streaming(const ClientRequest& request,
                                       const std::function<bool(std::string_view)>& on_data) {
  return run(request, on_data);
}

}  // namespace loadstar::http
