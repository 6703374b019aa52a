#include "gateway/adapter_loader.h"

#include <optional>
#include <thread>

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include "http/client.h"

namespace loadstar::gateway {

namespace asio = boost::asio;

struct AdapterLoader::Thread {
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard{
      asio::make_work_guard(io)};
  std::thread thread{[this] { io.run(); }};
};

AdapterLoader::AdapterLoader() : thread_(std::make_unique<Thread>()) {}

AdapterLoader::~AdapterLoader() {
  thread_->guard.reset();
  thread_->io.stop();
  thread_->thread.join();
}

Status AdapterLoader::load(Endpoint& endpoint, const std::string& adapter,
                           const std::string& path) {
  // Another request may have loaded it while this one queued.
  if (endpoint.adapters.is_registered(adapter)) return ok_status();
  http::ClientRequest request;
  request.host = endpoint.host;
  request.port = endpoint.port;
  request.method = "POST";
  request.target = "/v1/load_lora_adapter";
  request.headers = {{"Content-Type", "application/json"}};
  request.body = nlohmann::json({{"lora_name", adapter}, {"lora_path", path}}).dump();
  request.timeout_s = 120;
  auto response = http::fetch(request);
  if (!response.ok()) {
    ++failures_;
    return make_error(ErrorCode::kUnavailable, "loading adapter '{}' into {}: {}", adapter,
                      endpoint.replica, response.error().message);
  }
  // vLLM answers 400 "... has already been loaded." for one it has (another
  // gateway loaded it): as good as a load.
  const bool had =
      response->status == 400 && response->body.find("already been loaded") != std::string::npos;
  if (response->status != 200 && !had) {
    ++failures_;
    std::string message = response->body.substr(0, 500);
    const auto body = nlohmann::json::parse(response->body, nullptr, false);
    if (body.is_object() && body.contains("error") && body["error"].is_object() &&
        body["error"].contains("message") && body["error"]["message"].is_string())
      message = body["error"]["message"].get<std::string>();
    else if (body.is_object() && body.contains("message") && body["message"].is_string())
      message = body["message"].get<std::string>();
    return make_error(
        response->status >= 500 ? ErrorCode::kUnavailable : ErrorCode::kInvalidArgument,
        "replica {} refused to load adapter '{}': {}", endpoint.replica, adapter, message);
  }
  if (!had) {
    ++loads_;
    spdlog::info("gateway: loaded adapter {} into {}", adapter, endpoint.replica);
  }
  endpoint.adapters.registered(adapter);
  return ok_status();
}

namespace {

asio::awaitable<Status> on_loader_thread(
    AdapterLoader* loader, Endpoint* endpoint, std::string adapter, std::string path,
    Status (AdapterLoader::*load)(Endpoint&, const std::string&, const std::string&)) {
  co_return (loader->*load)(*endpoint, adapter, path);
}

}  // namespace

asio::awaitable<Status> AdapterLoader::ensure(Endpoint& endpoint, std::string adapter,
                                              std::string path) {
  if (endpoint.adapters.is_registered(adapter)) co_return ok_status();
  // The blocking call runs on the loader's thread; this coroutine resumes
  // on its own executor when it is done.
  auto on_thread =
      on_loader_thread(this, &endpoint, std::move(adapter), std::move(path), &AdapterLoader::load);
  auto pending = asio::co_spawn(thread_->io, std::move(on_thread), asio::use_awaitable);
  Status outcome = co_await std::move(pending);
  co_return outcome;
}

}  // namespace loadstar::gateway
